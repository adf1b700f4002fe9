"""The worker's LISTEN session, ended by the server at the one point of its set-up where the data
layer (not psycopg) reports the failure: the query that reads ``idle_session_timeout``.

The session really is terminated (``pg_terminate_backend``) by a wrapper around that query, so the
interleaving that a real-process test hits only now and then (``tests/faults``: the LISTEN session
killed moments after it appears) happens here every time.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, Job, Worker
from pgqueue._db.notifications import ListenSession
from pgqueue.settings import Settings
from tests.helpers import wait_until

Conn = psycopg.Connection[TupleRow]
WAIT = 15.0


def listen_sessions(db: Conn) -> list[int]:
    rows = db.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgqueue-listen' "
                      "AND datname = current_database()").fetchall()
    return [int(row[0]) for row in rows]


def test_a_listen_session_ended_during_its_set_up_query_is_replaced_and_wakes_the_worker(
        dsn: str, db: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 60 s poll: a job that completes within WAIT was found through LISTEN/NOTIFY.
    app = App(dsn, settings=Settings(dsn=dsn, lease_seconds=2.0, poll_seconds=60, shutdown_grace_seconds=5))

    @app.task(name="ping")
    def ping(job: Job) -> str:
        return "pong"

    set_ups: list[int] = []  # backend pid of each listen session that reached the query
    set_up_done = threading.Event()
    original = ListenSession.idle_session_timeout

    async def ended_the_first_time(store: ListenSession) -> float:
        pid = store.conn.info.backend_pid
        set_ups.append(pid)
        if len(set_ups) == 1:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
                # The timeout argument waits until the backend has exited, so the query below meets
                # a session that is gone, not one that is still ending.
                await admin.execute("SELECT pg_terminate_backend(%s, 10000)", [pid])
        seconds = await original(store)
        set_up_done.set()
        return seconds

    monkeypatch.setattr(ListenSession, "idle_session_timeout", ended_the_first_time)
    worker = Worker(app)
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(worker.run(install_signal_handlers=False)),
                              name="test-listener-worker", daemon=True)
    thread.start()
    try:
        # The second session completed its set-up: the listener survived the first one's end.
        assert set_up_done.wait(WAIT), f"no listen session completed its set-up after the first ended: {set_ups}"
        assert len(set_ups) == 2, set_ups
        assert listen_sessions(db) == [set_ups[1]]

        job_id = app.enqueue(None, "ping", {})

        def state() -> Any:
            row = db.execute("SELECT state FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
            return row is not None and row[0] == "completed"

        wait_until(state, timeout=WAIT, message="the job woken by NOTIFY on the new listen session")
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the worker did not stop within 30 s"
    assert exit_codes == [0]
