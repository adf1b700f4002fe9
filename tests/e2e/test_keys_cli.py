"""`pgqueue keys generate|rotate`, `enqueue --encrypt` and `jobs show` of encrypted jobs, end to end."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from pgqueue._crypto import Keyring
from tests.e2e.test_cli import ACTOR, PGQUEUE, _env

Conn = psycopg.Connection[TupleRow]
SECRET = "123-45-6789"


def pgqueue(dsn: str, *args: str, keys: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _env(dsn)
    env.pop("PGQUEUE_ENCRYPTION_KEYS", None)
    env.pop("PGQUEUE_ENCRYPT_ALL", None)
    if keys is not None:
        env["PGQUEUE_ENCRYPTION_KEYS"] = keys
    result = subprocess.run([PGQUEUE, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ok(dsn: str, *args: str, keys: str | None = None) -> str:
    result = pgqueue(dsn, *args, keys=keys)
    assert result.returncode == 0, f"pgqueue {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return result.stdout


def stored(conn: Conn, job_id: int) -> tuple[Any, bytes]:
    row = conn.execute("SELECT args, args_encrypted FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    conn.rollback()
    assert row is not None
    return row[0], bytes(row[1])


def test_keys_generate_prints_a_fresh_valid_key_and_a_hint_on_stderr(dsn: str) -> None:
    first, second = pgqueue(dsn, "keys", "generate"), pgqueue(dsn, "keys", "generate")

    key = first.stdout.strip()
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert key != second.stdout.strip()
    assert first.stdout == key + "\n"  # only the key on stdout: $(pgqueue keys generate) just works
    assert "PGQUEUE_ENCRYPTION_KEYS" in first.stderr
    assert len(first.stderr.strip().splitlines()) == 1
    Keyring((key,))


def test_enqueue_encrypt_rotate_and_jobs_show(dsn: str, conn: Conn) -> None:
    old = pgqueue(dsn, "keys", "generate").stdout.strip()
    new = pgqueue(dsn, "keys", "generate").stdout.strip()
    job_id = int(ok(dsn, "enqueue", "verify", "--args", json.dumps({"ssn": SECRET}), "--encrypt", keys=old))

    args, sealed = stored(conn, job_id)
    assert args is None
    assert SECRET.encode() not in sealed
    shown = ok(dsn, "jobs", "show", str(job_id))
    assert "(encrypted)" in shown
    assert SECRET not in shown

    dry = json.loads(ok(dsn, "keys", "rotate", "--dry-run", "--json", keys=f"{new},{old}"))
    assert dry["args"] == 1
    assert stored(conn, job_id)[1] == sealed
    report = json.loads(ok(dsn, "keys", "rotate", "--json", "--batch", "1", keys=f"{new},{old}"))
    assert report["args"] == 1
    assert report["jobs"] == 1
    assert report["newest_key_id"] == Keyring((new,)).newest.hex_id
    assert report["remaining"]["jobs"] == 0
    rotated = stored(conn, job_id)[1]
    assert Keyring((new,)).decrypt(rotated, "args", "verify") == json.dumps({"ssn": SECRET}, separators=(",", ":")
                                                                            ).encode()
    audit = conn.execute("SELECT actor, detail FROM pgqueue.job_events WHERE job_id IS NULL AND event = 'keys_rotated'"
                         ).fetchall()
    conn.rollback()
    # One row for the one batch that re-encrypted, and the run's summary.
    assert [(a[0], a[1]["source"], a[1]["finished"]) for a in audit] == [(ACTOR, "cli", False), (ACTOR, "cli", True)]
    assert new not in repr(audit)
    assert old not in repr(audit)

    again = json.loads(ok(dsn, "keys", "rotate", "--json", keys=f"{new},{old}"))
    assert again["jobs"] == 0


def test_encrypt_without_a_key_and_a_malformed_key_are_one_line_errors(dsn: str, conn: Conn) -> None:
    missing = pgqueue(dsn, "enqueue", "verify", "--args", "{}", "--encrypt")
    malformed = pgqueue(dsn, "keys", "rotate", keys=f"{pgqueue(dsn, 'keys', 'generate').stdout.strip()},not-a-key")

    for result, expected in ((missing, "PGQUEUE_ENCRYPTION_KEYS is not set"), (malformed, "key #2")):
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert expected in result.stderr
    assert "not-a-key" not in malformed.stderr
    assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)


def test_rotate_exits_1_and_names_the_key_ids_it_cannot_open(dsn: str) -> None:
    lost = pgqueue(dsn, "keys", "generate").stdout.strip()
    new = pgqueue(dsn, "keys", "generate").stdout.strip()
    ok(dsn, "enqueue", "verify", "--args", "{}", "--encrypt", keys=lost)

    result = pgqueue(dsn, "keys", "rotate", keys=new)

    assert result.returncode == 1
    assert Keyring((lost,)).newest.hex_id in result.stderr
    assert "left unchanged" in result.stderr


def test_compliance_mode_from_the_environment_encrypts_cli_enqueues(dsn: str, conn: Conn) -> None:
    key = pgqueue(dsn, "keys", "generate").stdout.strip()
    env = {**_env(dsn), "PGQUEUE_ENCRYPTION_KEYS": key, "PGQUEUE_ENCRYPT_ALL": "1"}
    done = subprocess.run([PGQUEUE, "enqueue", "verify", "--args", json.dumps({"ssn": SECRET})], env=env,
                          capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    args, sealed = stored(conn, int(done.stdout))
    assert args is None
    assert SECRET.encode() not in sealed
