"""An encrypted task's progress note, end to end: a real ``pgqueue worker`` stores it only as
ciphertext, every operator's view (``jobs show``/``list --json``, the HTTP API, the dashboard)
says it is encrypted without showing it, and ``pgqueue keys rotate`` re-encrypts it."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg.rows import dict_row

from pgqueue import App
from pgqueue._crypto import Keyring, generate_key
from pgqueue.settings import Settings
from pgqueue.web import create_app
from tests.helpers import wait_until
from tests.plugins.processes import Db, RunCli, SpawnWorker

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PATIENT = "Jane Doe"
OTHER = "John Roe"
OLD, NEW = generate_key(), generate_key()
READ = {"Authorization": "Bearer read-secret-token"}


@pytest.fixture
def client(worker_dsn: str) -> Iterator[TestClient]:
    web = create_app(worker_dsn, admin_token="admin-secret-token", read_token="read-secret-token")
    with TestClient(web, base_url="http://dashboard.example", raise_server_exceptions=False) as test_client:
        yield test_client


def stored(db: Db, job_id: int) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        found = cur.execute("SELECT state, progress, progress_note, progress_note_encrypted FROM pgqueue.jobs "
                            "WHERE id = %s", [job_id]).fetchone()
    assert found is not None
    return found


def cli_json(run_cli: RunCli, dsn: str, *args: str, keys: str | None = None) -> Any:
    result = run_cli([*args, "--json"], dsn=dsn, env={"PGQUEUE_ENCRYPTION_KEYS": keys} if keys else None)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_every_view_hides_the_note(run_cli: RunCli, client: TestClient, dsn: str, sealed: int, plain: int,
                                     note: str) -> None:
    shown = cli_json(run_cli, dsn, "jobs", "show", str(sealed))
    listed = {job["id"]: job for job in cli_json(run_cli, dsn, "jobs", "list")}
    table = run_cli(["jobs", "show", str(sealed)], dsn=dsn)
    api = client.get(f"/api/jobs/{sealed}", headers=READ)
    api_list = client.get("/api/jobs", headers=READ)
    page = client.get(f"/jobs/{sealed}", headers=READ)
    list_page = client.get("/jobs", headers=READ)
    for response in (api, api_list, page, list_page):
        assert response.status_code == 200, response.text

    for job in (shown, listed[sealed], api.json()):
        assert (job["progress_note"], job["progress_note_encrypted"]) == (None, True)
    for text in (json.dumps(shown), json.dumps(listed), table.stdout, api.text, api_list.text, page.text,
                 list_page.text):
        assert PATIENT not in text
    assert "% (note encrypted)" in table.stdout
    assert "&lt;encrypted&gt;" in page.text
    # A job that is not encrypted: its note as before.
    assert (listed[plain]["progress_note"], listed[plain]["progress_note_encrypted"]) == (f"{note} {OTHER}", False)
    assert f"{note} {OTHER}" in client.get(f"/jobs/{plain}", headers=READ).text


def test_an_encrypted_tasks_note_is_ciphertext_everywhere_and_keys_rotate_reencrypts_it(
        worker_dsn: str, db: Db, spawn_worker: SpawnWorker, run_cli: RunCli, client: TestClient) -> None:
    spawn_worker(worker_dsn, concurrency=2, env={"PGQUEUE_ENCRYPTION_KEYS": OLD})
    # Enqueued by an app without the handlers: the worker's code declares `letter` encrypt=True.
    producer = App(worker_dsn, settings=Settings(dsn=worker_dsn, encryption_keys=(OLD,)))
    sealed = producer.enqueue(None, "letter", {"patient": PATIENT}, encrypt=True)
    plain = producer.enqueue(None, "plain-letter", {"patient": OTHER})

    # Running: the heartbeat wrote the first note.
    wait_until(lambda: stored(db, sealed)["progress"] == 50 and stored(db, plain)["progress"] == 50,
               timeout=30, message="both jobs to report progress while they run")
    running = stored(db, sealed)
    assert running["progress_note"] is None
    assert Keyring((OLD,)).decrypt(bytes(running["progress_note_encrypted"]), "progress_note", "letter") == (
        f"letter for {PATIENT}".encode())
    assert_every_view_hides_the_note(run_cli, client, worker_dsn, sealed, plain, "letter for")

    # Finished: the last note came with the outcome.
    db.execute("INSERT INTO test_executions (job_id, attempt, pid) VALUES (%s, 0, 0), (%s, 0, 0)", [sealed, plain])
    wait_until(lambda: stored(db, sealed)["state"] == stored(db, plain)["state"] == "completed", timeout=30,
               message="both jobs to complete once released")
    done = stored(db, sealed)
    assert done["progress_note"] is None
    assert_every_view_hides_the_note(run_cli, client, worker_dsn, sealed, plain, "sent to")

    report = cli_json(run_cli, worker_dsn, "keys", "rotate", keys=f"{NEW},{OLD}")

    assert (report["progress_notes"], report["remaining"]["progress_notes"]) == (1, 0)
    rotated = bytes(stored(db, sealed)["progress_note_encrypted"])
    assert rotated != bytes(done["progress_note_encrypted"])
    # The old key retired: the new one alone opens the note.
    assert Keyring((NEW,)).decrypt(rotated, "progress_note", "letter") == f"sent to {PATIENT}".encode()
    assert stored(db, plain)["progress_note"] == f"sent to {OTHER}"
