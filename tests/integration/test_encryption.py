"""Encryption at rest on a real database: what enqueue stores, what workers decrypt and store, the
missing-key path, compliance mode, cron inserts, and key rotation.

Every check of "the plaintext is nowhere" reads the whole row back as text with SQL (and the audit
trail), so a column added later that leaks the payload fails here too.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import structlog
from psycopg.rows import TupleRow, dict_row
from structlog.typing import EventDict

from pgqueue import App, Backoff, Job, JobSpec, Worker, admin
from pgqueue._crypto import Keyring, generate_key, key_id_in
from pgqueue._db.jobs import JobStore
from pgqueue._db.keys import KeyStore
from pgqueue._key_rotation import rotate
from pgqueue._scheduler import Scheduler
from pgqueue.errors import ArgsNotSerializable, ConfigurationError, EncryptionKeyMissing, PayloadTooLarge
from pgqueue.settings import Settings
from tests.helpers import wait_until

Conn = psycopg.Connection[TupleRow]
SECRET = "123-45-6789"
OLD, NEW = generate_key(), generate_key()
WAIT = 15.0


def make_app(dsn: str, *keys: str, encrypt_all: bool = False) -> App:
    settings = Settings(dsn=dsn, lease_seconds=2, poll_seconds=0.5, shutdown_grace_seconds=5,
                        encryption_keys=tuple(keys), encrypt_all=encrypt_all)
    app = App(dsn, settings=settings)

    @app.task(name="verify")
    def verify(job: Job, ssn: str) -> dict[str, str]:
        return {"verified": ssn}

    @app.task(name="reject", max_attempts=1)
    async def reject(job: Job, ssn: str) -> None:
        raise ValueError(f"could not verify {ssn}")

    @app.task(name="sensitive", encrypt=True, max_attempts=2, backoff=Backoff.fixed(0))
    def sensitive(job: Job, ssn: str) -> str:
        return ssn[::-1]

    return app


@pytest.fixture
def app(dsn: str) -> App:
    return make_app(dsn, NEW, OLD)


@contextmanager
def running_worker(app: App) -> Iterator[Worker]:
    worker = Worker(app, settings=app.settings, concurrency=2)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"


@pytest.fixture
def captured() -> Iterator[list[EventDict]]:
    was_configured = structlog.is_configured()
    try:
        with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            yield logs
    finally:
        if not was_configured:
            structlog.reset_defaults()


def row(db: Conn, job_id: int) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        found = cur.execute("SELECT * FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    assert found is not None
    return found


def assert_plaintext_nowhere(db: Conn, job_id: int, *secrets: str) -> None:
    """Neither the row (every column, as text and as raw bytes) nor its audit trail holds a secret."""
    text = db.execute("SELECT j::text FROM pgqueue.jobs AS j WHERE id = %s", [job_id]).fetchone()
    trail = db.execute("SELECT coalesce(string_agg(e::text, ' '), '') FROM pgqueue.job_events AS e "
                       "WHERE job_id = %s", [job_id]).fetchone()
    assert text is not None
    assert trail is not None
    blobs = b"".join(bytes(v) for v in db.execute(
        "SELECT coalesce(args_encrypted, ''), coalesce(result_encrypted, ''), coalesce(error_encrypted, ''), "
        "coalesce(progress_note_encrypted, '') FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone() or ())
    for secret in secrets:
        assert secret not in text[0], f"{secret!r} is stored in plaintext in job {job_id}"
        assert secret not in trail[0], f"{secret!r} reached job {job_id}'s audit trail"
        assert secret.encode() not in blobs


def opened(keys: tuple[str, ...], blob: bytes | None, field: str, task: str) -> Any:
    assert blob is not None, f"no {field} ciphertext"
    return json.loads(Keyring(keys).decrypt(bytes(blob), field, task))  # type: ignore[arg-type]


def wait_for_state(db: Conn, job_id: int, *states: str) -> dict[str, Any]:
    wait_until(lambda: row(db, job_id)["state"] in states, timeout=WAIT, message=f"job {job_id} to reach {states}")
    return row(db, job_id)


# --- enqueue ------------------------------------------------------------------------------------


def test_an_encrypted_enqueue_stores_null_args_and_a_ciphertext_under_the_newest_key(app: App, db: Conn) -> None:
    job_id = app.enqueue(None, "verify", {"ssn": SECRET}, encrypt=True)

    stored = row(db, job_id)
    assert stored["args"] is None
    assert key_id_in(stored["args_encrypted"]) == Keyring((NEW,)).newest.id
    assert opened((NEW,), stored["args_encrypted"], "args", "verify") == {"ssn": SECRET}
    assert_plaintext_nowhere(db, job_id, SECRET)


def test_a_task_declared_encrypt_true_is_encrypted_even_when_the_job_says_encrypt_false(
        app: App, db: Conn) -> None:
    job_id = app.enqueue(None, "sensitive", {"ssn": SECRET}, encrypt=False)

    assert row(db, job_id)["args"] is None
    assert_plaintext_nowhere(db, job_id, SECRET)


def test_compliance_mode_encrypts_every_job_and_encrypt_false_cannot_opt_out(dsn: str, db: Conn) -> None:
    app = make_app(dsn, NEW, encrypt_all=True)

    ids = [app.enqueue(None, "verify", {"ssn": SECRET}), app.enqueue(None, "verify", {"ssn": SECRET}, encrypt=False),
           app.enqueue(None, "unregistered-task", {"ssn": SECRET})]

    for job_id in ids:
        assert row(db, job_id)["args"] is None
        assert_plaintext_nowhere(db, job_id, SECRET)


def test_unencrypted_jobs_are_untouched(app: App, db: Conn) -> None:
    job_id = app.enqueue(None, "verify", {"ssn": "public"})

    stored = row(db, job_id)
    assert stored["args"] == {"ssn": "public"}
    assert stored["args_encrypted"] is None


def test_enqueue_many_encrypts_the_jobs_that_ask_for_it_and_only_those(app: App, db: Conn) -> None:
    specs = [JobSpec("verify", {"ssn": SECRET}, encrypt=True), JobSpec("verify", {"ssn": "public"}),
             JobSpec("sensitive", {"ssn": SECRET})]
    with psycopg.connect(app.dsn) as conn:
        ids = app.enqueue_many(conn, specs)

    assert row(db, ids[1])["args"] == {"ssn": "public"}
    for job_id, task in ((ids[0], "verify"), (ids[2], "sensitive")):
        assert opened((NEW,), row(db, job_id)["args_encrypted"], "args", task) == {"ssn": SECRET}
        assert_plaintext_nowhere(db, job_id, SECRET)


def test_a_large_enqueue_many_of_encrypted_jobs_stores_every_ciphertext(app: App, db: Conn) -> None:
    # Large batches may take a faster bulk path (COPY): it must carry the ciphertext too, or the
    # payload is lost (args are NULL for encrypted jobs).
    specs = [JobSpec("verify", {"ssn": f"{SECRET}-{n}"}, encrypt=True) for n in range(1200)]
    with psycopg.connect(app.dsn) as conn:
        ids = app.enqueue_many(conn, specs)

    counts = db.execute("SELECT count(*) FILTER (WHERE args IS NULL AND args_encrypted IS NOT NULL), count(*) "
                        "FROM pgqueue.jobs").fetchone()
    assert counts == (1200, 1200)
    assert opened((NEW,), row(db, ids[-1])["args_encrypted"], "args", "verify") == {"ssn": f"{SECRET}-1199"}


def test_enqueue_async_encrypts(app: App, db: Conn) -> None:
    async def enqueue() -> int:
        async with await psycopg.AsyncConnection.connect(app.dsn) as aconn:
            return await app.enqueue_async(aconn, "verify", {"ssn": SECRET}, encrypt=True)

    job_id = asyncio.run(enqueue())

    assert opened((NEW,), row(db, job_id)["args_encrypted"], "args", "verify") == {"ssn": SECRET}
    assert_plaintext_nowhere(db, job_id, SECRET)


def test_validation_runs_on_the_plaintext_before_encryption(dsn: str, db: Conn) -> None:
    app = App(dsn, settings=Settings(dsn=dsn, encryption_keys=(NEW,), max_payload_bytes=64))

    with pytest.raises(PayloadTooLarge, match="over the 64-byte limit"):
        app.enqueue(None, "t", {"blob": "x" * 100}, encrypt=True)
    with pytest.raises(ArgsNotSerializable, match="not JSON-serialisable"):
        app.enqueue(None, "t", {"n": float("nan")}, encrypt=True)
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)


def test_compliance_mode_with_no_key_raises_encryption_key_missing_and_writes_nothing(dsn: str, db: Conn) -> None:
    app = make_app(dsn, encrypt_all=True)

    with pytest.raises(EncryptionKeyMissing):
        app.enqueue(None, "verify", {"ssn": SECRET})
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)


# --- worker ---------------------------------------------------------------------------------------


def test_a_worker_decrypts_args_and_stores_results_and_errors_only_as_ciphertext(
        app: App, db: Conn, captured: list[EventDict]) -> None:
    ok_id = app.enqueue(None, "verify", {"ssn": SECRET}, encrypt=True)
    bad_id = app.enqueue(None, "reject", {"ssn": SECRET}, encrypt=True)
    plain_id = app.enqueue(None, "verify", {"ssn": "public"})

    with running_worker(app):
        ok = wait_for_state(db, ok_id, "completed")
        bad = wait_for_state(db, bad_id, "failed")
        plain = wait_for_state(db, plain_id, "completed")

    assert ok["result"] is None
    assert opened((NEW,), ok["result_encrypted"], "result", "verify") == {"verified": SECRET}
    assert bad["last_error"] == {"type": "ValueError", "encrypted": True}
    error = opened((NEW,), bad["error_encrypted"], "error", "reject")
    assert error["type"] == "ValueError"
    assert error["message"] == f"could not verify {SECRET}"
    assert "Traceback" in error["traceback"]
    assert plain["result"] == {"verified": "public"}
    assert plain["result_encrypted"] is None
    for job_id in (ok_id, bad_id):
        assert_plaintext_nowhere(db, job_id, SECRET, "could not verify")
    everything = repr(captured)
    assert SECRET not in everything
    assert "could not verify" not in everything
    assert any(e.get("event") == "job.failed" and e.get("error_type") == "ValueError" for e in captured)


def test_a_task_declared_encrypt_true_stores_its_retry_errors_encrypted(app: App, db: Conn) -> None:
    job_id = app.enqueue(None, "sensitive", {"ssn": SECRET})

    with running_worker(app):
        done = wait_for_state(db, job_id, "completed")

    assert opened((NEW,), done["result_encrypted"], "result", "sensitive") == SECRET[::-1]
    assert_plaintext_nowhere(db, job_id, SECRET, SECRET[::-1])


def test_a_worker_without_the_key_fails_the_job_at_once_and_a_retry_with_the_key_completes_it(
        dsn: str, db: Conn) -> None:
    producer = make_app(dsn, OLD)
    job_id = producer.enqueue(None, "verify", {"ssn": SECRET}, encrypt=True)
    stored = row(db, job_id)["args_encrypted"]
    old_id = Keyring((OLD,)).newest.hex_id

    with running_worker(make_app(dsn, NEW)):
        failed = wait_for_state(db, job_id, "failed")

    assert failed["attempt"] == 1  # no retries burnt on a configuration problem
    assert failed["last_error"]["type"] == "UnknownEncryptionKey"
    assert old_id in failed["last_error"]["message"]
    assert "PGQUEUE_ENCRYPTION_KEYS" in failed["last_error"]["message"]
    assert f"pgqueue jobs retry {job_id}" in failed["last_error"]["message"]
    assert bytes(failed["args_encrypted"]) == bytes(stored)  # nothing lost
    assert_plaintext_nowhere(db, job_id, SECRET)

    with psycopg.connect(dsn) as conn:
        assert JobStore(conn).retry_jobs([job_id], None, False, "test").retried == [job_id]
    with running_worker(make_app(dsn, NEW, OLD)):
        done = wait_for_state(db, job_id, "completed")

    assert opened((NEW,), done["result_encrypted"], "result", "verify") == {"verified": SECRET}


def test_a_worker_with_no_keys_at_all_fails_encrypted_jobs_with_encryption_key_missing(dsn: str, db: Conn) -> None:
    job_id = make_app(dsn, NEW).enqueue(None, "verify", {"ssn": SECRET}, encrypt=True)

    with running_worker(make_app(dsn)):
        failed = wait_for_state(db, job_id, "failed")

    assert failed["last_error"]["type"] == "EncryptionKeyMissing"
    assert Keyring((NEW,)).newest.hex_id in failed["last_error"]["message"]
    assert failed["args_encrypted"] is not None


def test_a_worker_refuses_to_start_with_a_malformed_key_or_compliance_mode_without_keys(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="key #2"):
        Worker(make_app(dsn, NEW, "not-a-key"))
    with pytest.raises(EncryptionKeyMissing, match="PGQUEUE_ENCRYPT_ALL"):
        Worker(make_app(dsn, encrypt_all=True))


def test_a_transactional_encrypted_task_stores_its_result_encrypted(dsn: str, db: Conn) -> None:
    app = make_app(dsn, NEW)

    @app.task(name="tx", transactional=True, encrypt=True)
    def tx(job: Job, ssn: str) -> str:
        return f"saw {ssn}"

    job_id = app.enqueue(None, "tx", {"ssn": SECRET})
    with running_worker(app):
        done = wait_for_state(db, job_id, "completed")

    assert opened((NEW,), done["result_encrypted"], "result", "tx") == f"saw {SECRET}"
    assert_plaintext_nowhere(db, job_id, SECRET)


# --- progress notes -------------------------------------------------------------------------------

PATIENT = "Jane Doe"


def add_letter_tasks(app: App, release: threading.Event) -> None:
    """``letter`` (encrypt=True) and ``plain-letter``: a note quoting the args, then a second one
    once ``release`` is set (the first is written by the heartbeat, the second with the outcome)."""

    def write(job: Job, patient: str) -> None:
        job.set_progress(50, note=f"letter for {patient}")
        assert release.wait(WAIT), "the test never released the handler"
        job.set_progress(100, note=f"sent to {patient}")

    app.task(name="letter", encrypt=True)(write)
    app.task(name="plain-letter")(write)


def test_an_encrypted_jobs_progress_notes_are_stored_only_as_ciphertext_and_a_plain_jobs_as_before(
        app: App, db: Conn) -> None:
    release = threading.Event()
    add_letter_tasks(app, release)
    sealed_id = app.enqueue(None, "letter", {"patient": PATIENT})
    plain_id = app.enqueue(None, "plain-letter", {"patient": "John Roe"})

    with running_worker(app):
        wait_until(lambda: row(db, sealed_id)["progress"] == 50 and row(db, plain_id)["progress"] == 50,
                   timeout=WAIT, message="both jobs' progress to be written while they run")
        running, plain_running = row(db, sealed_id), row(db, plain_id)
        release.set()
        done = wait_for_state(db, sealed_id, "completed")
        plain_done = wait_for_state(db, plain_id, "completed")

    assert running["progress_note"] is None
    assert Keyring((NEW,)).decrypt(bytes(running["progress_note_encrypted"]), "progress_note", "letter") == (
        f"letter for {PATIENT}".encode())
    assert (done["progress"], done["progress_note"]) == (100, None)
    assert Keyring((NEW,)).decrypt(bytes(done["progress_note_encrypted"]), "progress_note", "letter") == (
        f"sent to {PATIENT}".encode())
    assert_plaintext_nowhere(db, sealed_id, PATIENT)
    with psycopg.connect(app.dsn) as conn:
        record = admin.get_job(conn, sealed_id)
    assert (record.progress_note, record.progress_note_encrypted, record.encrypted) == (None, True, True)
    # A job that is not encrypted keeps its notes readable, and no ciphertext.
    assert (plain_running["progress_note"], plain_running["progress_note_encrypted"]) == ("letter for John Roe", None)
    assert (plain_done["progress_note"], plain_done["progress_note_encrypted"]) == ("sent to John Roe", None)


def test_a_note_set_by_a_transactional_or_compliance_mode_job_is_sealed_with_its_outcome(dsn: str, db: Conn) -> None:
    app = make_app(dsn, NEW, encrypt_all=True)

    @app.task(name="tx-note", transactional=True)
    def tx_note(job: Job, patient: str) -> None:
        job.set_progress(100, note=f"filed for {patient}")

    @app.task(name="note")
    def note(job: Job, patient: str) -> None:
        job.set_progress(100, note=f"filed for {patient}")

    ids = {task: app.enqueue(None, task, {"patient": PATIENT}) for task in ("tx-note", "note")}
    with running_worker(app):
        done = {task: wait_for_state(db, job_id, "completed") for task, job_id in ids.items()}

    for task, found in done.items():
        assert found["progress_note"] is None
        assert Keyring((NEW,)).decrypt(bytes(found["progress_note_encrypted"]), "progress_note", task) == (
            f"filed for {PATIENT}".encode())
        assert_plaintext_nowhere(db, ids[task], PATIENT)


def test_a_new_attempt_clears_the_note_ciphertext_of_the_last_one(app: App, db: Conn) -> None:
    @app.task(name="noted-once", encrypt=True, max_attempts=2, backoff=Backoff.fixed(0))
    def noted_once(job: Job, patient: str) -> None:
        if job.attempt == 1:
            job.set_progress(10, note=f"tried {patient}")
            raise ValueError("first attempt fails")

    job_id = app.enqueue(None, "noted-once", {"patient": PATIENT})
    with running_worker(app):
        done = wait_for_state(db, job_id, "completed")

    assert (done["attempt"], done["progress"], done["progress_note"], done["progress_note_encrypted"]) == (
        2, None, None, None)


# --- scheduler ------------------------------------------------------------------------------------


def test_the_scheduler_inserts_runs_of_an_encrypting_task_encrypted(dsn: str, db: Conn) -> None:
    app = make_app(dsn, NEW)
    app.schedule("every-second", cron="* * * * * *", task="sensitive", args={"ssn": SECRET})
    scheduler = Scheduler(app)
    try:
        scheduler.sync()
        db.execute("UPDATE pgqueue.schedules SET next_run_at = date_trunc('second', now()) - interval '1 second'")
        result = scheduler.run_pass()
        assert result.failed == []
    finally:
        scheduler.close()

    ids = [r[0] for r in db.execute("SELECT id FROM pgqueue.jobs WHERE task = 'sensitive'").fetchall()]
    assert ids
    assert row(db, ids[0])["args"] is None
    assert opened((NEW,), row(db, ids[0])["args_encrypted"], "args", "sensitive") == {"ssn": SECRET}
    assert_plaintext_nowhere(db, ids[0], SECRET)


# --- rotation -------------------------------------------------------------------------------------


def test_rotate_reencrypts_every_old_ciphertext_so_a_worker_with_only_the_new_key_runs_old_jobs(
        dsn: str, db: Conn) -> None:
    old_app = make_app(dsn, OLD)
    finished = old_app.enqueue(None, "reject", {"ssn": SECRET}, encrypt=True)
    with running_worker(old_app):
        wait_for_state(db, finished, "failed")
    waiting = old_app.enqueue(None, "verify", {"ssn": SECRET}, encrypt=True)
    plain = old_app.enqueue(None, "verify", {"ssn": "public"})

    keyring = Keyring((NEW, OLD))
    with psycopg.connect(dsn) as conn:
        dry = rotate(KeyStore(conn), keyring, batch=1, dry_run=True)
        report = rotate(KeyStore(conn), keyring, batch=1, actor="cli:test")
        again = rotate(KeyStore(conn), keyring, batch=1, actor="cli:test")

    assert dry.as_dict()["args"] == 2
    assert report.as_dict() | {"remaining": None} == {
        "newest_key_id": keyring.newest.hex_id, "dry_run": False, "jobs": 2, "args": 2, "results": 0,
        "errors": 1, "progress_notes": 0, "from_key_ids": [Keyring((OLD,)).newest.hex_id], "unreadable": {},
        "damaged_jobs": [], "remaining": None}
    assert report.remaining == {"jobs": 0, "args": 0, "results": 0, "errors": 0, "progress_notes": 0}
    assert again.jobs == 0
    assert row(db, plain)["args"] == {"ssn": "public"}
    audit = db.execute("SELECT actor, detail FROM pgqueue.job_events WHERE event = 'keys_rotated' AND job_id IS NULL "
                       "ORDER BY id").fetchall()
    # The dry run wrote nothing; the first run one row per batch (2 jobs, batch=1) and its summary,
    # the second (nothing left to do) only its summary.
    assert [(a[0], a[1]["finished"], a[1]["jobs"]) for a in audit] == [
        ("cli:test", False, 1), ("cli:test", False, 2), ("cli:test", True, 2), ("cli:test", True, 0)]
    assert audit[2][1]["args"] == 2
    assert OLD not in repr(audit)
    assert NEW not in repr(audit)
    assert opened((NEW,), row(db, finished)["error_encrypted"], "error", "reject")["type"] == "ValueError"

    with running_worker(make_app(dsn, NEW)):
        done = wait_for_state(db, waiting, "completed", "failed")

    assert done["state"] == "completed", done["last_error"]
    assert opened((NEW,), done["result_encrypted"], "result", "verify") == {"verified": SECRET}


def test_rotate_reencrypts_progress_notes_so_they_open_once_the_old_key_is_retired(dsn: str, db: Conn) -> None:
    old_app = make_app(dsn, OLD)
    release = threading.Event()
    release.set()
    add_letter_tasks(old_app, release)
    job_id = old_app.enqueue(None, "letter", {"patient": PATIENT})
    with running_worker(old_app):
        before = bytes(wait_for_state(db, job_id, "completed")["progress_note_encrypted"])
    assert Keyring((OLD,)).is_current(before)

    with psycopg.connect(dsn) as conn:
        report = rotate(KeyStore(conn), Keyring((NEW, OLD)), actor="cli:test")

    assert (report.jobs, report.as_dict()["progress_notes"], report.as_dict()["args"]) == (1, 1, 1)
    assert report.remaining["progress_notes"] == 0
    after = bytes(row(db, job_id)["progress_note_encrypted"])
    assert after != before
    assert Keyring((NEW,)).decrypt(after, "progress_note", "letter") == f"sent to {PATIENT}".encode()
    assert row(db, job_id)["progress_note"] is None


def test_an_interrupted_rotation_leaves_no_reencrypted_payload_without_its_audit_row(dsn: str, db: Conn) -> None:
    old_app = make_app(dsn, OLD)
    ids = [old_app.enqueue(None, "verify", {"ssn": SECRET}, encrypt=True) for _ in range(3)]
    keyring = Keyring((NEW, OLD))

    def interrupt(rows: int) -> None:  # called after each committed batch: Ctrl-C after the first
        raise KeyboardInterrupt

    with psycopg.connect(dsn) as conn, pytest.raises(KeyboardInterrupt):
        rotate(KeyStore(conn), keyring, batch=1, actor="cli:test", source="cli", on_batch=interrupt)

    rotated = [job_id for job_id in ids if keyring.is_current(bytes(row(db, job_id)["args_encrypted"]))]
    audit = db.execute("SELECT actor, detail FROM pgqueue.job_events WHERE event = 'keys_rotated'").fetchall()
    assert rotated == ids[:1]
    assert [(a[0], a[1]["jobs"], a[1]["args"], a[1]["finished"], a[1]["source"]) for a in audit] == [
        ("cli:test", 1, 1, False, "cli")]


def test_rotate_reports_an_altered_ciphertext_under_a_configured_key_as_damaged_not_as_a_missing_key(
        dsn: str, db: Conn) -> None:
    old_app = make_app(dsn, OLD)
    altered, intact = (old_app.enqueue(None, "verify", {"ssn": SECRET}, encrypt=True) for _ in range(2))
    db.execute("UPDATE pgqueue.jobs SET args_encrypted = set_byte(args_encrypted, 30, (get_byte(args_encrypted, 30) "
               "+ 1) %% 256) WHERE id = %s", [altered])
    db.commit()
    before = bytes(row(db, altered)["args_encrypted"])

    with psycopg.connect(dsn) as conn:
        report = rotate(KeyStore(conn), Keyring((NEW, OLD)), actor="cli:test")

    assert report.unreadable == {}
    assert report.as_dict()["damaged_jobs"] == [altered]
    assert report.jobs == 1
    assert bytes(row(db, altered)["args_encrypted"]) == before
    assert Keyring((NEW,)).is_current(bytes(row(db, intact)["args_encrypted"]))


def test_rotate_leaves_ciphertexts_under_unknown_keys_untouched_and_reports_them(dsn: str, db: Conn) -> None:
    lost_key = generate_key()
    job_id = make_app(dsn, lost_key).enqueue(None, "verify", {"ssn": SECRET}, encrypt=True)
    before = bytes(row(db, job_id)["args_encrypted"])

    with psycopg.connect(dsn) as conn:
        report = rotate(KeyStore(conn), Keyring((NEW,)), actor="cli:test")

    assert report.unreadable == {Keyring((lost_key,)).newest.hex_id: 1}
    assert report.remaining["args"] == 1
    assert bytes(row(db, job_id)["args_encrypted"]) == before
