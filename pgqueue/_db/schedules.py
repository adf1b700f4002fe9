"""ScheduleStore: one method per named query on pgqueue.schedules and pgqueue.schedule_runs.

The store never decides anything (what is due, which fire times to insert): ``pgqueue.schedules``
and ``pgqueue._scheduler`` do, with the time the store reads from the database. Reads return the
table's rows as dicts, which ``pgqueue.schedules.Schedule`` wraps; writes take the definition
(``ScheduleSpec``) and the job each run inserts (``NewJob``) as they are. Transactions are the
caller's: :meth:`ScheduleStore.transaction` is a real transaction on an autocommit connection and
a savepoint inside the caller's transaction otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, LiteralString, NamedTuple

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from pgqueue._db.cursors import cursor_on, execute_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.notifications import NOTIFY_CHANNEL
from pgqueue._db.queries import load_queries
from pgqueue._db.server import ServerStore
from pgqueue._db.sessions import ReconnectingSession
from pgqueue._payload import encode_json
from pgqueue.errors import PgqueueError

if TYPE_CHECKING:
    from pgqueue._cron import RunPlan
    from pgqueue._db.jobs import NewJob
    from pgqueue.schedules import ScheduleSpec


class ScheduleQueries(NamedTuple):
    lock_for_sync: LiteralString
    list_schedules: LiteralString
    get_schedule: LiteralString
    get_schedule_for_update: LiteralString
    insert_schedule: LiteralString
    update_schedule: LiteralString
    delete_schedule: LiteralString
    set_schedule_paused: LiteralString
    disable_code_schedules: LiteralString
    lock_due_schedules: LiteralString
    insert_scheduled_jobs: LiteralString
    record_misfire: LiteralString
    advance_schedule: LiteralString
    next_wakeup: LiteralString


SCHEDULES = load_queries(ScheduleQueries, "schedules.sql")

# The scheduler's policy: every driver error is a PgqueueError, which its loop logs and retries
# (a lock or statement timeout, a deadlock) and the CLI prints as one line.
_translated = partial(translate_errors, every_error=True)


class ScheduleStore:
    """Queries on a psycopg connection. Built on a connection the caller owns, or with
    :meth:`connect` on one of its own (closed by :meth:`close`)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @classmethod
    def on_session(cls, session: ReconnectingSession) -> ScheduleStore:
        """A store on ``session``'s connection, (re)opened now if it is closed or broken."""
        with _translated():
            return cls(session.get())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together, or none do.

        On an autocommit connection this is a transaction of its own. On any other connection it
        joins the caller's transaction as a savepoint, and the caller commits (as with enqueue).
        """
        with _translated():
            if not self.conn.autocommit and self.conn.info.transaction_status == TransactionStatus.IDLE:
                # psycopg's transaction() on an idle connection would BEGIN and COMMIT by itself;
                # a first statement opens the caller's transaction so ours nests in it instead.
                ServerStore(self.conn).now()
            with self.conn.transaction():
                yield

    # --- reads ---

    def db_now(self) -> datetime:
        """The database's clock: every schedule decision is made in its time, never the host's."""
        with _translated():
            return ServerStore(self.conn).now()

    def list_schedules(self) -> list[dict[str, Any]]:
        with _translated(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(SCHEDULES.list_schedules)
            return cur.fetchall()

    def get_schedule(self, name: str, *, for_update: bool = False) -> dict[str, Any] | None:
        query = SCHEDULES.get_schedule_for_update if for_update else SCHEDULES.get_schedule
        with _translated(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(query, {"name": name})
            return cur.fetchone()

    def next_wakeup(self, exclude: Sequence[str] = ()) -> tuple[datetime, datetime | None]:
        """The database's clock and the earliest next_run_at of an active schedule not in ``exclude``."""
        with _translated():
            row = execute_on(self.conn, SCHEDULES.next_wakeup, {"exclude": list(exclude)}).fetchone()
        if row is None:  # pragma: no cover - an aggregate always returns a row
            raise PgqueueError("next_wakeup returned no row")
        return row[0], row[1]

    # --- administration (each writes its audit row in the same statement) ---

    def lock_for_sync(self) -> None:
        with _translated():
            execute_on(self.conn, SCHEDULES.lock_for_sync)

    def insert_schedule(self, spec: ScheduleSpec, *, source: str, next_run_at: datetime | None,
                        actor: str | None) -> bool:
        """Insert a schedule; False when the name is taken (nothing written)."""
        with _translated():
            row = execute_on(self.conn, SCHEDULES.insert_schedule,
                                    _definition_params(spec, source, next_run_at, actor)).fetchone()
        return row is not None

    def update_schedule(self, spec: ScheduleSpec, *, source: str, next_run_at: datetime | None, event: str,
                        actor: str | None, changed: Sequence[str], keep_next_run_at: bool = False) -> bool:
        """Update a schedule of ``source``; ``keep_next_run_at`` leaves the current value."""
        params = _definition_params(spec, source, next_run_at, actor) | {
            "event": event, "changed": encode_json(list(changed)), "keep_next_run_at": keep_next_run_at}
        with _translated():
            return execute_on(self.conn, SCHEDULES.update_schedule, params).fetchone() is not None

    def delete_schedule(self, name: str, *, actor: str | None) -> bool:
        with _translated():
            row = execute_on(self.conn, SCHEDULES.delete_schedule, {"name": name, "actor": actor}).fetchone()
            return row is not None

    def set_paused(self, name: str, paused: bool, next_run_at: datetime | None, *, actor: str | None) -> bool:
        params = {"name": name, "paused": paused, "next_run_at": next_run_at, "actor": actor}
        with _translated():
            return execute_on(self.conn, SCHEDULES.set_schedule_paused, params).fetchone() is not None

    def disable_code_schedules(self, keep: Sequence[str], *, actor: str | None) -> list[str]:
        """Disable code schedules whose names are not in ``keep``; returns their names."""
        with _translated():
            rows = execute_on(self.conn, SCHEDULES.disable_code_schedules,
                              {"keep": list(keep), "actor": actor}).fetchall()
        return [r[0] for r in rows]

    # --- the scheduler's pass ---

    def lock_due_schedules(self, limit: int) -> list[dict[str, Any]]:
        with _translated(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(SCHEDULES.lock_due_schedules, {"limit": limit})
            return cur.fetchall()

    def insert_scheduled_jobs(self, schedule: str, job: NewJob, fire_times: Sequence[datetime],
                              catch_up: Sequence[bool], *, actor: str) -> list[tuple[int, datetime]]:
        """Insert one job per fire time not yet recorded in schedule_runs.

        Returns:
            (job id, fire time) of the jobs inserted; fire times already recorded are left out.
        """
        params = {
            "schedule": schedule, "fire_times": list(fire_times), "catch_up": list(catch_up),
            "task": job.task, "queue": job.queue, "priority": job.priority, "args": job.args,
            "args_encrypted": job.args_encrypted, "max_attempts": job.max_attempts, "tags": list(job.tags),
            "actor": actor, "channel": NOTIFY_CHANNEL,
        }
        with _translated():
            rows = execute_on(self.conn, SCHEDULES.insert_scheduled_jobs, params).fetchall()
        return [(r[0], r[1]) for r in rows]

    def record_misfire(self, schedule: str, *, policy: str, plan: RunPlan, actor: str) -> None:
        with _translated():
            execute_on(self.conn, SCHEDULES.record_misfire, {
                "schedule": schedule, "policy": policy, "missed": plan.missed,
                "missed_truncated": plan.missed_truncated, "inserted": plan.inserted_missed,
                "dropped": plan.dropped, "first_missed": plan.first_missed, "last_missed": plan.last_missed,
                "actor": actor,
            })

    def advance_schedule(self, name: str, next_run_at: datetime | None, last_run_at: datetime | None) -> None:
        with _translated():
            execute_on(self.conn, SCHEDULES.advance_schedule,
                              {"name": name, "next_run_at": next_run_at, "last_run_at": last_run_at})


def _definition_params(spec: ScheduleSpec, source: str, next_run_at: datetime | None,
                       actor: str | None) -> dict[str, Any]:
    return {
        "name": spec.name, "cron": spec.cron, "timezone": spec.timezone, "task": spec.task, "queue": spec.queue,
        "args": spec.args_json, "priority": spec.priority, "misfire": spec.misfire, "max_catchup": spec.max_catchup,
        "source": source, "next_run_at": next_run_at, "actor": actor,
    }
