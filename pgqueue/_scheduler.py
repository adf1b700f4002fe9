"""The Scheduler: syncs the app's code schedules at start, then inserts due cron jobs. Any number
may run at once (``pgqueue scheduler``, or a thread inside ``pgqueue worker --with-scheduler``).

The sync (:func:`sync_schedules`) makes the ``source = 'code'`` rows of ``pgqueue.schedules``
match ``app.schedules``; its rules are on the function. Each pass is one transaction: read the
database clock, lock the due schedules (``FOR UPDATE SKIP LOCKED``), insert their runs (the
``schedule_runs`` primary key admits each fire time once, ever), write the audit rows, advance
``next_run_at``/``last_run_at``, commit. Nothing here reads the host's clock to decide what is
due; the host clock is only compared with the database's to warn about skew.

Why a thread of its own rather than a duty of the worker's maintenance leader: the leader may be
a worker started without ``--with-scheduler``, and then nothing would fire. Schedulers need no
leader, since the database keeps them from inserting a run twice.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pgqueue._cron import DEFAULT_MISFIRE_GRACE, parse_cron, plan_runs
from pgqueue._db.errors import first_line
from pgqueue._db.schedules import ScheduleStore
from pgqueue._db.sessions import ReconnectingSession, capped_backoff
from pgqueue._log import get_logger
from pgqueue.errors import ConfigurationError, DatabaseUnavailable, PgqueueError, ScheduleExists, SchemaNotReady
from pgqueue.schedules import Schedule, ScheduleSpec
from pgqueue.settings import normalize_dsn

if TYPE_CHECKING:
    from pgqueue._db.jobs import NewJob
    from pgqueue.app import App

ACTOR = "scheduler"
#: Longest sleep between passes: new and resumed schedules are noticed within this time.
DEFAULT_POLL_SECONDS = 1.0
_BATCH = 100
# Host and database clocks further apart than this are reported (never acted upon).
_SKEW_WARNING = timedelta(seconds=5)
_SKEW_REPORT_EVERY = 300.0
# A schedule whose job cannot be built (unknown task in a strict app, no encryption key) is
# retried after this long, so its error is logged once a minute rather than on every pass.
_FAILED_RETRY_SECONDS = 60.0


def _host_now() -> datetime:
    return datetime.now(UTC)


#: A scheduler's pass lands a few milliseconds after each fire time: a grace shorter than this made
#: every run count as missed (never fired under ``skip``, a misfire event per run under ``once``).
MIN_MISFIRE_GRACE_SECONDS = 1.0
MISFIRE_GRACE_RULE = (f"must be a number of seconds >= {MIN_MISFIRE_GRACE_SECONDS:g} (a scheduler processes a fire "
                      "time a few milliseconds after it, so a shorter grace would count every run as missed)")


def misfire_grace_from_env(env: dict[str, str] | None = None) -> timedelta:
    """``PGQUEUE_MISFIRE_GRACE_SECONDS`` (default 60), for schedulers started by the worker."""
    raw = (env if env is not None else dict(os.environ)).get("PGQUEUE_MISFIRE_GRACE_SECONDS", "")
    if not raw.strip():
        return DEFAULT_MISFIRE_GRACE
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not MIN_MISFIRE_GRACE_SECONDS <= seconds < float("inf"):
        raise ConfigurationError(f"PGQUEUE_MISFIRE_GRACE_SECONDS {raw!r} {MISFIRE_GRACE_RULE}")
    return timedelta(seconds=seconds)


# --- the start-up sync ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    """What :func:`sync_schedules` changed (schedule names)."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


_TIMING = frozenset({"cron", "timezone"})


def sync_schedules(store: ScheduleStore, specs: Iterable[ScheduleSpec], *, actor: str | None = ACTOR) -> SyncResult:
    """Make the code schedules in the database match ``specs`` (what the scheduler does at start).

    - a spec with no row is created (``source = 'code'``), its first run the next fire time;
    - a code row that differs is updated; a change of ``cron`` or ``timezone`` restarts its fire
      times from now, other changes keep ``next_run_at``;
    - a disabled code row whose spec is back is enabled again (fire times restart from now);
    - a code row with no spec is disabled (``disabled_at`` set, ``next_run_at`` cleared);
    - run-time rows are never changed; a spec whose name is a run-time schedule's is refused.

    ``paused`` is never changed by a sync. Concurrent syncs (several schedulers starting at once)
    run one after the other; scheduler passes go on meanwhile. Every change writes a
    ``job_events`` row in the same transaction.

    Raises:
        ScheduleExists: a spec's name belongs to a run-time schedule; nothing is changed.
    """
    wanted = {spec.name: spec for spec in specs}
    created: list[str] = []
    updated: list[str] = []
    enabled: list[str] = []
    unchanged: list[str] = []
    with store.transaction():
        store.lock_for_sync()
        now = store.db_now()
        stored = {row["name"]: Schedule(**row) for row in store.list_schedules()}
        collisions = sorted(name for name in wanted if name in stored and stored[name].source != "code")
        if collisions:
            names = ", ".join(repr(n) for n in collisions)
            raise ScheduleExists(
                f"schedule {names} is defined in code (app.schedule) but a run-time schedule with that name exists "
                f"(added with `pgqueue schedules add`); rename one, or remove the run-time one with "
                f"`pgqueue schedules remove {collisions[0]}`. Nothing was synced."
            )
        for name, spec in sorted(wanted.items()):
            schedule = stored.get(name)
            if schedule is None:
                if not store.insert_schedule(spec, source="code", next_run_at=spec.cron_schedule().next_after(now),
                                             actor=actor):
                    # Only `schedules add` can race a sync (syncs run one at a time).
                    raise ScheduleExists(f"schedule {name!r} is defined in code but was just added at run time; "
                                         "rename one of them. Nothing was synced.")
                created.append(name)
                continue
            changed = spec.changes_from(schedule)
            was_disabled = schedule.disabled_at is not None
            if not changed and not was_disabled:
                unchanged.append(name)
                continue
            restart = was_disabled or bool(_TIMING.intersection(changed)) or schedule.next_run_at is None
            # A paused schedule has no next run (resume sets one); a restart begins after now.
            next_run_at = None if schedule.paused else spec.cron_schedule().next_after(now)
            store.update_schedule(spec, source="code", next_run_at=next_run_at,
                                  event="schedule_enabled" if was_disabled else "schedule_updated",
                                  actor=actor, changed=changed, keep_next_run_at=not schedule.paused and not restart)
            (enabled if was_disabled else updated).append(name)
        disabled = store.disable_code_schedules(keep=sorted(wanted), actor=actor)
    return SyncResult(tuple(created), tuple(updated), tuple(enabled), tuple(sorted(disabled)), tuple(unchanged))


# --- the scheduler ----------------------------------------------------------------------------------


@dataclass
class PassResult:
    """What one scheduler pass did."""

    now: datetime
    inserted: list[tuple[str, int, datetime]] = field(default_factory=list)  # (schedule, job id, fire time)
    already_inserted: list[tuple[str, datetime]] = field(default_factory=list)
    misfired: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    locked: int = 0


class Scheduler:
    """Inserts the due runs of every schedule in the database; syncs the app's code schedules.

    Args:
        app: supplies the DSN, the code schedules (``app.schedules``) and task defaults
            (max_attempts, tags) of the jobs inserted.
        misfire_grace: how late a fire time may be processed and still be on time; older due
            fire times are handled by each schedule's misfire policy.
        poll_seconds: longest sleep between passes.
        host_clock: this host's clock, used only to warn when it disagrees with the database's.
        dsn: overrides ``app.dsn``.

    Example:
        >>> scheduler = Scheduler(app)
        >>> scheduler.sync()                   # code schedules -> pgqueue.schedules
        >>> scheduler.run_pass()               # insert whatever is due now
        >>> scheduler.run(stop_event)          # or: sync, then passes until stop_event is set
    """

    def __init__(self, app: App, *, misfire_grace: timedelta = DEFAULT_MISFIRE_GRACE,
                 poll_seconds: float = DEFAULT_POLL_SECONDS, host_clock: Callable[[], datetime] = _host_now,
                 dsn: str | None = None) -> None:
        if misfire_grace < timedelta(0):
            raise ConfigurationError(f"misfire grace {misfire_grace} must not be negative")
        if not poll_seconds > 0:
            raise ConfigurationError(f"poll interval {poll_seconds} must be greater than zero")
        self.app = app
        self.misfire_grace = misfire_grace
        self.poll_seconds = poll_seconds
        self.host_clock = host_clock
        self._dsn = dsn
        self._session: ReconnectingSession | None = None
        self._failed_until: dict[str, float] = {}
        self._invalid_reported: set[tuple[str, str, str]] = set()
        self._last_skew_report = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The result of the last successful :meth:`sync` (None until then).
        self.synced: SyncResult | None = None

    # --- connection ---

    def _connection(self) -> ScheduleStore:
        if self._session is None:
            # Created on first use: app.dsn may start the embedded server.
            self._session = ReconnectingSession(normalize_dsn(self._dsn or self.app.dsn), "scheduler",
                                                log=get_logger("pgqueue.scheduler"))
        return ScheduleStore.on_session(self._session)

    def close(self) -> None:
        """Close the scheduler's connection (it reconnects on next use)."""
        if self._session is not None:
            self._session.close()

    # --- sync ---

    def sync(self) -> SyncResult:
        """Sync ``app.schedules`` into the database (see :func:`sync_schedules`).

        Raises:
            ScheduleExists: a code schedule has the name of a run-time schedule; nothing changed.
        """
        result = sync_schedules(self._connection(), self.app.schedules.values(), actor=ACTOR)
        self.synced = result
        get_logger("pgqueue.scheduler").info(
            "schedule.synced", created=list(result.created), updated=list(result.updated),
            enabled=list(result.enabled), disabled=list(result.disabled), unchanged=len(result.unchanged))
        return result

    # --- one pass ---

    def run_pass(self) -> PassResult:
        """Insert the runs that are due now (database clock), in one transaction."""
        store = self._connection()
        with store.transaction():
            now = store.db_now()
            self._check_skew(now)
            result = PassResult(now=now)
            due = [Schedule(**row) for row in store.lock_due_schedules(_BATCH)]
            result.locked = len(due)
            for schedule in due:
                if self._failed_until.get(schedule.name, 0.0) > time.monotonic():
                    continue
                try:
                    # A savepoint per schedule: one that fails rolls back alone.
                    with store.transaction():
                        self._fire(store, schedule, now, result)
                except (DatabaseUnavailable, SchemaNotReady):
                    raise
                except PgqueueError as exc:
                    result.failed.append(schedule.name)
                    self._failed_until[schedule.name] = time.monotonic() + _FAILED_RETRY_SECONDS
                    get_logger("pgqueue.scheduler", schedule=schedule.name).error(
                        "schedule.fire_failed", error_type=type(exc).__name__, error=str(exc),
                        retry_in_s=_FAILED_RETRY_SECONDS)
        return result

    def _fire(self, store: ScheduleStore, schedule: Schedule, now: datetime, result: PassResult) -> None:
        log = get_logger("pgqueue.scheduler", schedule=schedule.name)
        try:
            cron = parse_cron(schedule.cron, schedule.timezone)
        except PgqueueError as exc:
            # A row edited by hand: report it once, leave it alone (fixing the row resumes it).
            key = (schedule.name, schedule.cron, schedule.timezone)
            if key not in self._invalid_reported:
                self._invalid_reported.add(key)
                log.error("schedule.invalid", error_type=type(exc).__name__, error=str(exc))
            store.advance_schedule(schedule.name, None, None)
            return
        plan = plan_runs(cron, next_run_at=schedule.next_run_at, now=now, misfire=schedule.misfire,
                         max_catchup=schedule.max_catchup, grace=self.misfire_grace)
        inserted: list[tuple[int, datetime]] = []
        if plan.fire_times:
            inserted = store.insert_scheduled_jobs(schedule.name, self._job(schedule), plan.fire_times,
                                                   plan.catch_up, actor=ACTOR)
            for job_id, fire_time in inserted:
                result.inserted.append((schedule.name, job_id, fire_time))
                log.info("schedule.fired", job_id=job_id, task=schedule.task, queue=schedule.queue,
                         fire_time=fire_time.isoformat(), lag_ms=round((now - fire_time).total_seconds() * 1000))
            done = {fire_time for _, fire_time in inserted}
            for fire_time in plan.fire_times:
                if fire_time not in done:
                    # Another pass recorded this fire time already (e.g. next_run_at was moved back).
                    result.already_inserted.append((schedule.name, fire_time))
                    log.info("schedule.already_fired", fire_time=fire_time.isoformat())
        if plan.missed:
            result.misfired.append(schedule.name)
            store.record_misfire(schedule.name, policy=schedule.misfire, plan=plan, actor=ACTOR)
            log.warning("schedule.misfired", policy=schedule.misfire, missed=plan.missed,
                        missed_truncated=plan.missed_truncated, inserted=plan.inserted_missed, dropped=plan.dropped,
                        first_missed=_iso(plan.first_missed), last_missed=_iso(plan.last_missed))
        last_run_at = max((fire_time for _, fire_time in inserted), default=None)
        store.advance_schedule(schedule.name, plan.next_run_at, last_run_at)

    def _job(self, schedule: Schedule) -> NewJob:
        # The App builds the job as it would for app.enqueue: task defaults, size limit, and the
        # encryption rules (a task that must be encrypted is never written in plaintext). Its
        # run_at is left out: each run's is its fire time.
        return self.app._new_job(schedule.task, schedule.args, queue=schedule.queue, priority=schedule.priority)

    def _check_skew(self, db_now: datetime) -> None:
        skew = self.host_clock() - db_now
        if abs(skew) > _SKEW_WARNING and time.monotonic() - self._last_skew_report > _SKEW_REPORT_EVERY:
            self._last_skew_report = time.monotonic()
            get_logger("pgqueue.scheduler").warning(
                "scheduler.clock_skew", host_minus_database_s=round(skew.total_seconds(), 3),
                note="fire times follow the database clock")

    def seconds_until_due(self) -> float:
        """Seconds (database clock) until the next schedule is due, between 0.02 and ``poll_seconds``.

        Schedules that just failed are left out, and the floor keeps a schedule that another
        scheduler holds locked from turning this loop into a busy wait.
        """
        backing_off = [name for name, until in self._failed_until.items() if until > time.monotonic()]
        now, next_run_at = self._connection().next_wakeup(exclude=backing_off)
        if next_run_at is None:
            return self.poll_seconds
        # Wake a little after the fire time rather than just before it: a pass that starts early
        # finds nothing due and has to sleep again.
        return min(self.poll_seconds, max(0.02, (next_run_at - now).total_seconds() + 0.005))

    # --- running ---

    def run(self, stop: threading.Event | None = None) -> None:
        """Sync (unless :meth:`sync` succeeded already), then insert due runs until ``stop`` (or
        :meth:`stop`) is set.

        An unreachable database is retried with capped backoff, both for the sync and later.

        Raises:
            ScheduleExists: the sync found a code schedule named like a run-time one.
            SchemaNotReady: the schema is missing at start (run ``pgqueue migrate``).
        """
        stop = stop or self._stop
        log = get_logger("pgqueue.scheduler")
        started = False
        try:
            failures = 0
            while self.synced is None and not stop.is_set():
                try:
                    self.sync()
                except DatabaseUnavailable as exc:
                    failures += 1
                    self.close()
                    stop.wait(self._backoff(failures, exc))
            if self.synced is None:
                return  # stopped while waiting for the database
            # Logged once the sync succeeded, so a refused sync is the single line the CLI prints.
            log.info("scheduler.started", pid=os.getpid(), code_schedules=len(self.app.schedules),
                     misfire_grace_s=self.misfire_grace.total_seconds())
            started = True
            failures = 0
            while not stop.is_set():
                try:
                    result = self.run_pass()
                    wait = 0.0 if result.locked >= _BATCH else self.seconds_until_due()
                    if failures:
                        log.info("database.reconnected")
                    failures = 0
                except PgqueueError as exc:
                    failures += 1
                    self.close()
                    wait = self._backoff(failures, exc)
                stop.wait(wait)
        finally:
            self.close()
            if started:
                log.info("scheduler.stopped")

    def _backoff(self, failures: int, exc: BaseException) -> float:
        wait = capped_backoff(failures, base=0.5, cap=10.0, doublings=5)
        get_logger("pgqueue.scheduler").warning(
            "database.unavailable", error_type=type(exc).__name__, error=first_line(exc), retry_in_s=wait)
        return wait

    def start(self) -> threading.Thread:
        """Run :meth:`run` in a daemon thread (the caller has usually called :meth:`sync` first)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_logged, name="pgqueue-scheduler", daemon=True)
        self._thread.start()
        return self._thread

    def _run_logged(self) -> None:
        try:
            self.run(self._stop)
        except PgqueueError as exc:
            get_logger("pgqueue.scheduler").error("scheduler.failed", error_type=type(exc).__name__, error=str(exc))

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask :meth:`run` to return after the current pass; joins the thread from :meth:`start`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def start_in_worker(app: App, dsn: str | None = None) -> Scheduler:
    """``pgqueue worker --with-scheduler``: sync now (errors reach the caller), then run in a thread."""
    scheduler = Scheduler(app, misfire_grace=misfire_grace_from_env(), dsn=dsn)
    # An unreachable database is not fatal here: the thread retries the sync until it is back.
    with contextlib.suppress(DatabaseUnavailable):
        scheduler.sync()
    scheduler.start()
    return scheduler


__all__ = [
    "DEFAULT_POLL_SECONDS",
    "PassResult",
    "Scheduler",
    "SyncResult",
    "misfire_grace_from_env",
    "start_in_worker",
    "sync_schedules",
]
