"""Waiting for a job's outcome: :meth:`pgqueue.App.result` and :meth:`pgqueue.App.result_async`.

Like :func:`pgqueue.admin.wait_for_job`, a wait registers as a waiter and LISTENs on
``pgqueue_done`` on a session of its own (which sees every commit whatever the caller's snapshot),
and re-reads the job every ``poll_interval`` seconds in case a notification is lost.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any, Literal

from pgqueue._db.connections import async_connection, sync_connection
from pgqueue._db.notifications import async_done_listener, done_listener
from pgqueue._db.results import AsyncResultStore, ResultStore, conninfo_of
from pgqueue.errors import (
    DecryptionError,
    InvalidJobState,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobWaitTimeout,
)
from pgqueue.jobs import FINISHED_STATES

if TYPE_CHECKING:
    from pgqueue.app import App
    from pgqueue.typing import AsyncConnection, Connection


def _check_id(job_id: int) -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or not 0 < job_id < 2**63:
        raise JobNotFound(f"job id {job_id!r} must be a positive integer")
    return job_id


def _decrypt(app: App, row: dict[str, Any], field: Literal["result", "error"]) -> Any:
    """The plaintext of an encrypted field (EncryptionKeyMissing without keys, DecryptionError
    with the wrong ones)."""
    sealed = bytes(row[f"{field}_encrypted"])
    return json.loads(app.keyring.decrypt(sealed, field, row["task"]))


def outcome(app: App, row: dict[str, Any]) -> Any:
    """The result of a finished job's row, or the typed error it finished with."""
    job_id, task, state = row["id"], row["task"], row["state"]
    if state == "completed":
        return _decrypt(app, row, "result") if row["result_encrypted"] is not None else row["result"]
    error = row["last_error"]
    if row["error_encrypted"] is not None and app.settings.encryption_keys:
        # The error is secondary to the outcome: without the right key, keep the stored type.
        with contextlib.suppress(DecryptionError):
            error = _decrypt(app, row, "error")
    if state == "cancelled":
        raise JobCancelled(f"job {job_id} ({task}) was cancelled", job_id=job_id, task=task, last_error=error)
    kind = (error or {}).get("type") or "unknown error"
    message = (error or {}).get("message")
    detail = f"{kind}: {message}" if message else kind
    raise JobFailed(f"job {job_id} ({task}) failed: {detail}", job_id=job_id, task=task, last_error=error)


def _finished(row: dict[str, Any]) -> bool:
    return row["state"] in FINISHED_STATES


def _not_committed(job_id: int) -> InvalidJobState:
    return InvalidJobState(f"job {job_id} is not committed: it was enqueued in a transaction that has not "
                           "committed yet, so no worker can see it; commit, then wait")


def wait_result(app: App, conn: Connection | None, job_id: int, timeout: float, poll_interval: float) -> Any:
    if conn is None:
        with app.connect(autocommit=True) as own:
            return wait_result(app, own, job_id, timeout, poll_interval)
    own = sync_connection(conn)
    row = ResultStore(own).get_outcome(_check_id(job_id))
    if row is None:
        raise JobNotFound(f"job {job_id} not found")
    if _finished(row):
        return outcome(app, row)
    deadline = time.monotonic() + max(float(timeout), 0.0)
    with done_listener(conninfo_of(own)) as listener:
        if not listener.join(deadline - time.monotonic()):  # a waiter, so that acks notify
            raise JobWaitTimeout(f"job {job_id} is still {row['state']} after {float(timeout):g}s")
        while True:
            row = ResultStore(listener.conn).get_outcome(job_id)
            if row is None:
                if ResultStore(own).get_outcome(job_id) is not None:
                    raise _not_committed(job_id)
                raise JobNotFound(f"job {job_id} was deleted while waiting for it")
            if _finished(row):
                return outcome(app, row)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobWaitTimeout(f"job {job_id} is still {row['state']} after {float(timeout):g}s")
            listener.wait(min(remaining, poll_interval))


# The same timeout argument as the sync twin (asyncio.timeout works on top of it too).
async def wait_result_async(app: App, conn: AsyncConnection | None, job_id: int, timeout: float,  # noqa: ASYNC109
                            poll_interval: float) -> Any:
    if conn is None:
        async with await app._connect_async(autocommit=True) as connection:
            return await wait_result_async(app, connection, job_id, timeout, poll_interval)
    own = await async_connection(conn)
    row = await AsyncResultStore(own).get_outcome(_check_id(job_id))
    if row is None:
        raise JobNotFound(f"job {job_id} not found")
    if _finished(row):
        return outcome(app, row)
    deadline = time.monotonic() + max(float(timeout), 0.0)
    async with async_done_listener(conninfo_of(own)) as listener:
        if not await listener.join(deadline - time.monotonic()):  # a waiter, so that acks notify
            raise JobWaitTimeout(f"job {job_id} is still {row['state']} after {float(timeout):g}s")
        while True:
            row = await AsyncResultStore(listener.conn).get_outcome(job_id)
            if row is None:
                if await AsyncResultStore(own).get_outcome(job_id) is not None:
                    raise _not_committed(job_id)
                raise JobNotFound(f"job {job_id} was deleted while waiting for it")
            if _finished(row):
                return outcome(app, row)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobWaitTimeout(f"job {job_id} is still {row['state']} after {float(timeout):g}s")
            await listener.wait(min(remaining, poll_interval))
