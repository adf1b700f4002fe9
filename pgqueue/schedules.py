"""Cron schedules: the definition you declare or add, the schedule as stored, and the functions
that manage schedules at run time.

A schedule fires a job of ``task`` at every instant its cron expression matches, read on the wall
clock of its IANA time zone. Schedules come from two places:

- **code**: ``app.schedule(...)`` builds a :class:`ScheduleSpec`; ``pgqueue scheduler`` (and
  ``pgqueue worker --with-scheduler``) syncs the app's specs into ``pgqueue.schedules`` at start
  (``source = 'code'``);
- **run time**: :func:`add_schedule`, :func:`remove_schedule`, :func:`pause_schedule`,
  :func:`resume_schedule` (and ``pgqueue schedules add|remove|pause|resume``), ``source = 'runtime'``.

Both are read back as :class:`Schedule` records by :func:`get_schedule` and :func:`list_schedules`.
The cron syntax, the daylight-saving rules and the misfire policies are described in the README's
"Scheduling" section. Two rules of the sync matter here:

- Removing a schedule from code *disables* its row (``disabled_at`` is set, ``next_run_at``
  cleared): it stops firing, stays visible in ``pgqueue schedules list``, and is re-enabled if it
  comes back into code. An admin's ``paused`` flag is independent of code and survives syncs.
- A code schedule whose name belongs to a runtime schedule is refused: the sync raises
  :class:`~pgqueue.errors.ScheduleExists` and changes nothing.

Every function takes the caller's connection (a psycopg ``Connection`` or a SQLAlchemy
``Session``/``Connection`` on the psycopg driver) and runs inside its transaction, like
``app.enqueue``; each change writes its ``job_events`` audit row in the same transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from pgqueue._cron import DEFAULT_MAX_CATCHUP, MAX_MAX_CATCHUP, MISFIRE_POLICIES, Cron, MisfirePolicy, parse_cron
from pgqueue._db.connections import sync_connection
from pgqueue._db.schedules import ScheduleStore
from pgqueue._payload import check_queue_name, encode_args
from pgqueue.errors import ArgsNotSerializable, InvalidSchedule, ScheduleError, ScheduleExists, ScheduleNotFound
from pgqueue.tasks import DEFAULT_PRIORITY, DEFAULT_QUEUE, resolve_priority

__all__ = [
    "Schedule",
    "ScheduleSpec",
    "add_schedule",
    "get_schedule",
    "list_schedules",
    "pause_schedule",
    "remove_schedule",
    "resume_schedule",
]

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
_MAX_NAME_LENGTH = 200
_MAX_TASK_LENGTH = 255
# C0 and C1 control characters and lone surrogates: the first would reach terminals raw (an ANSI
# escape in `schedules list`), the second cannot be encoded for PostgreSQL at all.
_UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The definition fields compared by a replace or a sync, in the order their changes are reported.
_COMPARED = ("cron", "timezone", "task", "queue", "priority", "misfire", "max_catchup", "args")


# --- validation -----------------------------------------------------------------------------------


def check_schedule_name(name: str) -> str:
    """``name`` if it can name a schedule, else :class:`InvalidSchedule` (every call taking a name
    checks it first; ``pgqueue schedules add`` checks it apart from the options)."""
    if not isinstance(name, str) or not name or name != name.strip() or len(name) > _MAX_NAME_LENGTH \
            or _UNSAFE_TEXT.search(name):
        raise InvalidSchedule(
            f"schedule name {name!r} must be 1-{_MAX_NAME_LENGTH} characters, without control characters, "
            "lone surrogates or surrounding spaces"
        )
    return name


def _check_task(task: str) -> str:
    if not isinstance(task, str) or not task or len(task) > _MAX_TASK_LENGTH or _UNSAFE_TEXT.search(task):
        raise InvalidSchedule(
            f"task name {task!r} must be 1-{_MAX_TASK_LENGTH} characters, without control characters or lone "
            "surrogates"
        )
    return task


def _check_misfire(misfire: str) -> MisfirePolicy:
    for policy in MISFIRE_POLICIES:
        if misfire == policy:
            return policy
    raise InvalidSchedule(f"misfire policy {misfire!r} must be one of {', '.join(MISFIRE_POLICIES)}")


def _check_max_catchup(max_catchup: int) -> int:
    if isinstance(max_catchup, bool) or not isinstance(max_catchup, int) \
            or not 1 <= max_catchup <= MAX_MAX_CATCHUP:
        raise InvalidSchedule(f"max_catchup {max_catchup!r} must be an integer from 1 to {MAX_MAX_CATCHUP}")
    return max_catchup


def _encode_args(args: Mapping[str, Any], max_payload_bytes: int) -> str:
    try:
        return encode_args(args, max_payload_bytes)
    except UnicodeEncodeError as exc:
        raise ArgsNotSerializable(
            f"schedule args hold the lone surrogate {exc.object[exc.start:exc.end]!r}: strings must be valid "
            "Unicode (UTF-8 encodable)"
        ) from None


# --- the two records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleSpec:
    """A validated schedule definition: what ``app.schedule`` declares and :func:`add_schedule` adds.

    Build one with :meth:`build`, which checks every field; the constructor trusts its input.
    ``args`` is kept as canonical JSON text so a spec is immutable; :attr:`args` decodes it.
    """

    name: str
    cron: str
    task: str
    args_json: str
    timezone: str = "UTC"
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    misfire: MisfirePolicy = "once"
    max_catchup: int = DEFAULT_MAX_CATCHUP

    @classmethod
    def build(cls, *, name: str, cron: str, task: str, args: Mapping[str, Any] | None = None,
              timezone: str = "UTC", queue: str = DEFAULT_QUEUE, priority: int | str | None = DEFAULT_PRIORITY,
              misfire: str = "once", max_catchup: int = DEFAULT_MAX_CATCHUP,
              max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> ScheduleSpec:
        """Validate a schedule definition; nothing reaches the database before this passes.

        Args:
            name: unique name of the schedule (1-200 characters).
            cron: 5 fields, or 6 with a leading seconds field, or ``@daily``-style alias.
            task: the task name each run enqueues.
            args: keyword arguments for the task (a JSON object).
            timezone: IANA time zone the cron expression is read in.
            queue: queue of the jobs.
            priority: priority of the jobs (int, or critical/high/normal/low).
            misfire: ``once``, ``skip`` or ``all``: what to do with runs missed while no scheduler ran.
            max_catchup: most runs one scheduler pass inserts for this schedule (1-10000).
            max_payload_bytes: size limit of the encoded args.

        Returns:
            The frozen spec.

        Raises:
            InvalidCron: a value out of its field's range (``61 * * * *``), a reversed range
                (``5-1``), a step out of range (``*/0``), or an expression that never fires.
            InvalidTimezone: not an IANA time zone.
            InvalidSchedule: bad name or task (length, control characters, lone surrogates),
                misfire policy or max_catchup.
            InvalidQueueName: queue name not matching ``[a-z0-9_-]{1,63}``.
            InvalidPriority: priority out of range.
            ArgsNotSerializable: args are not a JSON object, or hold a lone surrogate.
            PayloadTooLarge: args over ``max_payload_bytes``.

        Example:
            >>> spec = ScheduleSpec.build(name="nightly-cleanup", cron="0 3 * * *", task="cleanup",
            ...                           timezone="Europe/London", misfire="skip")
            >>> spec.cron_schedule().next_after(datetime(2024, 7, 1, tzinfo=UTC))
            datetime.datetime(2024, 7, 1, 2, 0, tzinfo=datetime.timezone.utc)
        """
        checked_name = check_schedule_name(name)
        checked_task = _check_task(task)
        expression = parse_cron(cron, timezone).expression
        return cls(
            name=checked_name,
            cron=expression,
            task=checked_task,
            args_json=_encode_args(args if args is not None else {}, max_payload_bytes),
            timezone=timezone,
            queue=check_queue_name(queue),
            priority=resolve_priority(priority),
            misfire=_check_misfire(misfire),
            max_catchup=_check_max_catchup(max_catchup),
        )

    @property
    def args(self) -> dict[str, Any]:
        """The task's keyword arguments (a fresh dict each time)."""
        value: dict[str, Any] = json.loads(self.args_json)
        return value

    def cron_schedule(self) -> Cron:
        """The parsed expression in this schedule's time zone."""
        return parse_cron(self.cron, self.timezone)

    def changes_from(self, stored: Schedule) -> list[str]:
        """The definition fields in which this spec differs from ``stored`` (empty: the same).

        Example:
            >>> spec.changes_from(pgqueue.schedules.get_schedule(conn, spec.name))
            ['cron', 'args']
        """
        return [name for name in _COMPARED if getattr(stored, name) != getattr(self, name)]


@dataclass(frozen=True)
class Schedule:
    """A schedule as stored in ``pgqueue.schedules`` (see ``sql/README.md`` for the columns).

    Attributes:
        source: ``code`` (synced from ``app.schedule``) or ``runtime`` (added by the API or CLI).
        paused: paused by an operator; no runs are inserted, none are caught up on resume.
        disabled_at: when a code schedule was found missing from the code; it does not fire.
        next_run_at: the first fire time not yet handled (None while paused or disabled).
        last_run_at: the fire time of the latest run inserted.
    """

    name: str
    cron: str
    timezone: str
    task: str
    queue: str
    args: dict[str, Any]
    priority: int
    paused: bool
    misfire: str
    max_catchup: int
    source: str
    disabled_at: datetime | None
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def state(self) -> str:
        """``disabled`` (removed from code), ``paused``, or ``active``."""
        if self.disabled_at is not None:
            return "disabled"
        return "paused" if self.paused else "active"

    def next_fire_times(self, after: datetime, count: int = 3) -> list[datetime]:
        """The next ``count`` fire times after ``after``, in the schedule's own time zone.

        Empty when the schedule is paused or disabled (it will not fire), or when the stored
        expression or time zone is no longer valid.

        Example:
            >>> schedule.next_fire_times(datetime.now(UTC), 2)
            [datetime.datetime(2024, 3, 10, 3, 0, tzinfo=zoneinfo.ZoneInfo(key='America/New_York')), ...]
        """
        if self.state != "active":
            return []
        try:
            cron = parse_cron(self.cron, self.timezone)
        except ScheduleError:
            return []
        return [t.astimezone(cron.zone) for t in cron.fire_times_after(after, count)]

    def to_dict(self) -> dict[str, Any]:
        """The stored columns as a plain dict (datetimes left as datetimes), plus ``state``."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"state": self.state}


# --- the run-time API -----------------------------------------------------------------------------


def add_schedule(conn: Any, spec: ScheduleSpec, *, replace: bool = False, actor: str | None = None) -> Schedule:
    """Add a run-time schedule (``source = 'runtime'``), or replace one with ``replace=True``.

    Like ``app.enqueue``, this runs inside the caller's transaction and the caller commits (a
    ``with psycopg.connect(...) as conn:`` block commits at its end); on an autocommit connection
    it commits at once. The change and its ``job_events`` audit row (``schedule_added`` or
    ``schedule_updated``) commit together. The first run is the first fire time after now
    (database clock). The same holds for the other functions of this API.

    Args:
        conn: a psycopg ``Connection`` or a SQLAlchemy ``Session``/``Connection`` (psycopg driver).
        spec: the definition, from :meth:`ScheduleSpec.build`.
        replace: overwrite an existing run-time schedule of that name (its fire times restart
            from now; ``paused`` is kept).
        actor: who made the change, for the audit trail.

    Returns:
        The stored schedule.

    Raises:
        ScheduleExists: the name is taken (by a code schedule, always; by a run-time one unless
            ``replace``). Nothing is written.

    Example:
        >>> spec = ScheduleSpec.build(name="nightly", cron="0 3 * * *", task="cleanup", timezone="Europe/London")
        >>> with psycopg.connect(dsn) as conn:      # commits on leaving the block
        ...     pgqueue.schedules.add_schedule(conn, spec)
    """
    store = _store(conn)
    with store.transaction():
        next_run_at = spec.cron_schedule().next_after(store.db_now())
        existing = _read(store, spec.name, for_update=True)
        if existing is None:
            if not store.insert_schedule(spec, source="runtime", next_run_at=next_run_at, actor=actor):
                raise ScheduleExists(f"schedule {spec.name!r} already exists (it was added concurrently)")
        elif existing.source == "code" and existing.disabled_at is not None:
            raise ScheduleExists(
                f"schedule {spec.name!r} was defined in code and is disabled (no longer in the code); "
                f"remove it with `pgqueue schedules remove {spec.name}` to reuse the name"
            )
        elif existing.source == "code":
            raise ScheduleExists(
                f"schedule {spec.name!r} is defined in code (app.schedule); change it there, "
                f"or pause it with `pgqueue schedules pause {spec.name}`"
            )
        elif not replace:
            raise ScheduleExists(
                f"schedule {spec.name!r} already exists; pass --replace (replace=True) to overwrite it")
        else:
            store.update_schedule(spec, source="runtime", next_run_at=next_run_at, event="schedule_updated",
                                  actor=actor, changed=spec.changes_from(existing))
        return _existing(store, spec.name)


def remove_schedule(conn: Any, name: str, *, actor: str | None = None) -> Schedule:
    """Delete a schedule (its ``schedule_runs`` history stays, so no fire time can repeat).

    A code schedule can be removed too, but the next scheduler start re-creates it while it is
    still in the code: remove it from the code, or pause it.

    Returns:
        The schedule as it was.

    Raises:
        ScheduleNotFound: no schedule has that name.
        InvalidSchedule: the name breaks the naming rule (no schedule can have it).

    Example:
        >>> pgqueue.schedules.remove_schedule(conn, "nightly"); conn.commit()
    """
    check_schedule_name(name)
    store = _store(conn)
    with store.transaction():
        schedule = _existing(store, name, for_update=True)
        store.delete_schedule(name, actor=actor)
    return schedule


def pause_schedule(conn: Any, name: str, *, actor: str | None = None) -> Schedule:
    """Stop inserting runs of a schedule until :func:`resume_schedule` (idempotent).

    Raises:
        ScheduleNotFound: no schedule has that name.
        InvalidSchedule: the name breaks the naming rule (no schedule can have it).

    Example:
        >>> pgqueue.schedules.pause_schedule(conn, "nightly"); conn.commit()
    """
    return _set_paused(conn, name, paused=True, actor=actor)


def resume_schedule(conn: Any, name: str, *, actor: str | None = None) -> Schedule:
    """Resume a paused schedule at its next fire time after now (idempotent).

    Fire times that passed while it was paused are not caught up: pausing means "do not run".

    Raises:
        ScheduleNotFound: no schedule has that name.
        InvalidSchedule: the name breaks the naming rule (no schedule can have it).

    Example:
        >>> pgqueue.schedules.resume_schedule(conn, "nightly"); conn.commit()
    """
    return _set_paused(conn, name, paused=False, actor=actor)


def get_schedule(conn: Any, name: str) -> Schedule:
    """One schedule by name.

    Raises:
        ScheduleNotFound: no schedule has that name.
        InvalidSchedule: the name breaks the naming rule (no schedule can have it).

    Example:
        >>> pgqueue.schedules.get_schedule(conn, "nightly").next_run_at
        datetime.datetime(2024, 7, 2, 2, 0, tzinfo=datetime.timezone.utc)
    """
    check_schedule_name(name)
    return _existing(_store(conn), name)


def list_schedules(conn: Any) -> list[Schedule]:
    """Every schedule, by name.

    Example:
        >>> for s in pgqueue.schedules.list_schedules(conn):
        ...     print(s.name, s.state, s.next_fire_times(datetime.now(UTC)))
    """
    return [Schedule(**row) for row in _store(conn).list_schedules()]


def _store(conn: Any) -> ScheduleStore:
    return ScheduleStore(sync_connection(conn))


def _read(store: ScheduleStore, name: str, *, for_update: bool = False) -> Schedule | None:
    row = store.get_schedule(name, for_update=for_update)
    return Schedule(**row) if row is not None else None


def _existing(store: ScheduleStore, name: str, *, for_update: bool = False) -> Schedule:
    schedule = _read(store, name, for_update=for_update)
    if schedule is None:
        raise ScheduleNotFound(f"no schedule named {name!r}")
    return schedule


def _set_paused(conn: Any, name: str, *, paused: bool, actor: str | None) -> Schedule:
    check_schedule_name(name)
    store = _store(conn)
    with store.transaction():
        schedule = _existing(store, name, for_update=True)
        if schedule.paused == paused:
            return schedule
        # A paused schedule has no next run; resuming starts from the next fire time after now.
        next_run_at = None
        # A row edited by hand with a bad expression stays without one: the scheduler reports it.
        with suppress(ScheduleError):
            if not paused and schedule.disabled_at is None:
                next_run_at = parse_cron(schedule.cron, schedule.timezone).next_after(store.db_now())
        store.set_paused(name, paused, next_run_at, actor=actor)
        return _existing(store, name)
