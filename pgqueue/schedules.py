"""Cron schedules: validated definitions, DST-correct fire times, the misfire policy, and the
Python API for schedules managed at run time.

A schedule fires a job of ``task`` at every instant its cron expression matches, read on the wall
clock of its IANA time zone. Schedules come from two places:

- **code**: ``app.schedule(...)`` builds a :class:`ScheduleSpec`; ``pgqueue scheduler`` (and
  ``pgqueue worker --with-scheduler``) syncs the app's specs into ``pgqueue.schedules`` at start
  (``source = 'code'``), see :func:`sync_schedules`;
- **run time**: :func:`add_schedule`, :func:`remove_schedule`, :func:`pause_schedule`,
  :func:`resume_schedule` (and ``pgqueue schedules add|remove|pause|resume``), ``source = 'runtime'``.

The rules, in one place (the README's "Scheduling" section explains them with examples):

- Cron: 5 fields (minute hour day-of-month month day-of-week), or 6 with a leading seconds field
  (``*/10 * * * * *``), plus ``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly``.
  ``H`` (hashed) and ``R`` (random) fields are refused: every scheduler must compute the same
  fire times, or running several of them would insert different runs.
- Daylight saving: a local time that does not exist (spring forward) fires once, at the first
  valid instant after it (the moment the clocks jump); a local time that occurs twice (fall back)
  fires once, at its first occurrence. So every wall-clock time fires at most once per day it
  occurs, and schedules that fire several times inside the gap collapse into one run.
- Misfire: a fire time is *missed* when it is processed more than the scheduler's misfire grace
  (60 s by default) after it passed, i.e. no scheduler was running. ``once`` inserts a single
  run (the latest missed fire time) for the whole missed window, ``skip`` inserts none, ``all``
  inserts each one. Fire times within the grace always run. ``max_catchup`` bounds how many runs
  one pass inserts for a schedule (the most recent are kept).
- Removing a schedule from code *disables* its row (``disabled_at`` is set, ``next_run_at``
  cleared): it stops firing, stays visible in ``pgqueue schedules list``, and is re-enabled if it
  comes back into code. An admin's ``paused`` flag is independent of code and survives syncs.
- A code schedule whose name belongs to a runtime schedule is refused: the sync raises
  :class:`~pgqueue.errors.ScheduleExists` and changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from pgqueue._db.connections import sync_connection
from pgqueue._db.schedule_store import ScheduleRow, ScheduleStore, ScheduleValues
from pgqueue._payload import check_queue_name, encode_args
from pgqueue.errors import InvalidCron, InvalidTimezone, ScheduleError, ScheduleExists, ScheduleNotFound
from pgqueue.tasks import DEFAULT_PRIORITY, DEFAULT_QUEUE, resolve_priority

__all__ = [
    "DEFAULT_MISFIRE_GRACE",
    "MISFIRE_POLICIES",
    "Cron",
    "RunPlan",
    "Schedule",
    "ScheduleSpec",
    "SyncResult",
    "add_schedule",
    "database_now",
    "describe",
    "get_schedule",
    "list_schedules",
    "load_timezone",
    "parse_cron",
    "pause_schedule",
    "plan_runs",
    "remove_schedule",
    "resume_schedule",
    "sync_schedules",
]

MisfirePolicy = Literal["once", "skip", "all"]
MISFIRE_POLICIES: tuple[MisfirePolicy, ...] = ("once", "skip", "all")
DEFAULT_MAX_CATCHUP = 100
MAX_MAX_CATCHUP = 10_000
#: How late a fire time may be processed and still count as on time (not missed).
DEFAULT_MISFIRE_GRACE = timedelta(seconds=60)
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
_MAX_NAME_LENGTH = 200
_MAX_TASK_LENGTH = 255
# Counting missed fire times stops here: a per-second schedule down for a week has 604,800 of
# them, and a scheduler pass holds the schedule's row lock while it counts.
_MISSED_COUNT_CAP = 10_000
_ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
# croniter's Jenkins-style "H" (hash) and "R" (random) values; letters inside month and weekday
# names (MAR, THU) do not match because they are preceded by another letter.
_HASH_OR_RANDOM = re.compile(r"(?<![A-Za-z])[HR](?![A-Za-z])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A fixed reference for "does this expression ever fire": any instant works, a fixed one keeps
# validation deterministic.
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


# --- time zones and cron expressions ---------------------------------------------------------


def load_timezone(name: str) -> ZoneInfo:
    """The :class:`~zoneinfo.ZoneInfo` for an IANA name such as ``"Europe/London"``.

    Raises:
        InvalidTimezone: ``name`` is not a time zone of the IANA database.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise InvalidTimezone(f"time zone {name!r} must be an IANA name such as 'Europe/London' or 'UTC'")
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: a path-like key ("../x"); OSError: an unreadable tzdata file.
        raise InvalidTimezone(
            f"unknown time zone {name!r}: use an IANA name such as 'America/New_York', 'Europe/London' or 'UTC'"
        ) from None


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _normalize_expression(expression: str) -> tuple[str, bool]:
    """The expression with single spaces, and whether it has a leading seconds field."""
    if not isinstance(expression, str):
        raise InvalidCron(f"cron expression {expression!r} must be a string")
    text = " ".join(expression.split())
    if text.lower() in _ALIASES:
        return text.lower(), False
    fields = text.split(" ") if text else []
    if len(fields) not in (5, 6):
        raise InvalidCron(
            f"cron expression {expression!r} must have 5 fields (minute hour day-of-month month day-of-week) "
            f"or 6 with a leading seconds field, got {len(fields)}"
        )
    if _HASH_OR_RANDOM.search(text):
        raise InvalidCron(
            f"cron expression {expression!r} uses H or R: hashed and random values are not supported, "
            "because every scheduler must compute the same fire times"
        )
    return text, len(fields) == 6


class Cron:
    """A cron expression read on the wall clock of an IANA time zone.

    All inputs and outputs are timezone-aware datetimes; results are in UTC. Fire times are found
    on the naive local wall clock (where croniter's arithmetic is exact) and then mapped to
    instants with the daylight-saving rules of the module docstring. croniter's own time zone
    support fires an ambiguous fall-back time twice (once per offset), which is why it is not used.

    Args:
        expression: 5 or 6 (leading seconds) fields, or an ``@daily``-style alias.
        timezone: an IANA time zone name.

    Raises:
        InvalidCron: the expression cannot be parsed, or never fires (``0 0 30 2 *``).
        InvalidTimezone: unknown time zone.

    Example:
        >>> cron = Cron("30 2 * * *", "America/New_York")
        >>> cron.next_after(datetime(2024, 3, 10, 5, 0, tzinfo=UTC))   # 02:30 does not exist that day
        datetime.datetime(2024, 3, 10, 7, 0, tzinfo=datetime.timezone.utc)   # 03:00 EDT
    """

    __slots__ = ("expression", "has_seconds", "timezone", "zone")

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        self.zone = load_timezone(timezone)
        self.timezone = timezone
        self.expression, self.has_seconds = _normalize_expression(expression)
        try:
            self._iterator(_REFERENCE.replace(tzinfo=None))
        except CroniterError as exc:
            raise InvalidCron(f"invalid cron expression {expression!r}: {_croniter_reason(exc)}") from None
        if self.next_after(_REFERENCE) is None:
            raise InvalidCron(f"cron expression {expression!r} never fires (no matching date)")

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, {self.timezone!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cron) and (self.expression, self.timezone) == (other.expression, other.timezone)

    def __hash__(self) -> int:
        return hash((self.expression, self.timezone))

    def _iterator(self, start: datetime) -> croniter:
        return croniter(self.expression, start, second_at_beginning=self.has_seconds)

    # -- wall clock -> instant --

    def _wall(self, instant: datetime) -> datetime:
        # Naive on purpose: cron fields match the local wall clock, which has no offset.
        return instant.astimezone(self.zone).replace(tzinfo=None)

    def to_instant(self, wall: datetime) -> datetime:
        """The UTC instant at which the naive local wall time ``wall`` fires.

        An ambiguous wall time (it occurs twice when clocks fall back) maps to its first
        occurrence; a wall time that does not exist (clocks spring forward over it) maps to the
        first valid instant after it, which is the moment of the jump.
        """
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        if self._wall(first) == wall:
            return first
        # In a gap, fold=1 applies the offset after the jump, which lands before it; fold=0 (the
        # offset before) lands after it. The jump is between: find it to the second.
        low = int(wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC).timestamp())
        high = int(first.timestamp())
        while high - low > 1:
            middle = (low + high) // 2
            if self._wall(datetime.fromtimestamp(middle, UTC)) < wall:
                low = middle
            else:
                high = middle
        return datetime.fromtimestamp(high, UTC)

    # -- iteration --

    def iter_after(self, after: datetime) -> Iterator[datetime]:
        """Fire times strictly after ``after``, ascending, as UTC datetimes (endless)."""
        _require_aware(after, "after")
        last = after
        iterator = self._iterator(self._wall(after))
        while True:
            try:
                wall = iterator.get_next(datetime)
            except CroniterBadDateError:
                return
            instant = self.to_instant(wall)
            if self._wall(instant) != wall:
                # A wall time inside a gap: every later one in the same gap maps to the same instant,
                # so continue from the wall time at which the gap ends.
                iterator = self._iterator(self._wall(instant))
            # Filters the collapsed gap, and fall-back wall times whose first occurrence is
            # already behind ``after`` (when ``after`` is in the repeated hour).
            if instant > last:
                last = instant
                yield instant

    def iter_at_or_before(self, before: datetime) -> Iterator[datetime]:
        """Fire times at or before ``before``, descending, as UTC datetimes."""
        _require_aware(before, "before")
        local = before.astimezone(self.zone)
        wall = local.replace(tzinfo=None)
        first_offset = wall.replace(tzinfo=self.zone, fold=0).utcoffset()
        if local.fold == 1 and first_offset is not None and first_offset != local.utcoffset():
            # ``before`` is in the repeated hour. Wall times later than its own, up to one offset
            # change later, fired in the first occurrence, i.e. before ``before``: start there.
            wall += first_offset - (local.utcoffset() or timedelta(0))
        # croniter's get_prev is strictly before its start; fire times are whole seconds.
        start = wall.replace(microsecond=0) + timedelta(seconds=1)
        iterator = self._iterator(start)
        last: datetime | None = None
        while True:
            try:
                candidate = iterator.get_prev(datetime)
            except CroniterBadDateError:
                return
            instant = self.to_instant(candidate)
            if self._wall(instant) != candidate:
                # Inside a gap: continue from the last wall time before the jump.
                iterator = self._iterator(self._wall(instant - timedelta(seconds=1)) + timedelta(seconds=1))
            if instant <= before and (last is None or instant < last):
                last = instant
                yield instant

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (None if the expression never fires again)."""
        return next(self.iter_after(after), None)

    def latest_at_or_before(self, before: datetime) -> datetime | None:
        """The last fire time at or before ``before``."""
        return next(self.iter_at_or_before(before), None)

    def fire_times_after(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` fire times strictly after ``after`` (UTC)."""
        result: list[datetime] = []
        for instant in self.iter_after(after):
            if len(result) >= count:
                break
            result.append(instant)
        return result


def _croniter_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _require_aware(value: datetime, name: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


@lru_cache(maxsize=512)
def parse_cron(expression: str, timezone: str) -> Cron:
    """A cached :class:`Cron` (schedulers parse the same few expressions on every pass)."""
    return Cron(expression, timezone)


# --- misfire policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """What one scheduler pass does for one due schedule.

    Attributes:
        fire_times: fire times to insert a job for, ascending (UTC).
        catch_up: per fire time, whether it was missed (inserted late by the misfire policy).
        next_run_at: the schedule's new ``next_run_at``: the first fire time after ``now``.
        missed: fire times older than the grace (counted up to 10,000; see ``missed_truncated``).
        dropped: missed fire times the policy (or ``max_catchup``) did not insert.
        missed_truncated: counting stopped at 10,000; there were more.
    """

    fire_times: tuple[datetime, ...]
    catch_up: tuple[bool, ...]
    next_run_at: datetime | None
    missed: int = 0
    dropped: int = 0
    missed_truncated: bool = False
    first_missed: datetime | None = None
    last_missed: datetime | None = None


def plan_runs(cron: Cron, *, next_run_at: datetime | None, now: datetime, misfire: str = "once",
              max_catchup: int = DEFAULT_MAX_CATCHUP, grace: timedelta = DEFAULT_MISFIRE_GRACE) -> RunPlan:
    """Decide which fire times to insert at ``now`` (the database clock), by the misfire policy.

    Due fire times are those from ``next_run_at`` up to ``now``. Those no older than ``grace`` are
    on time and always inserted; older ones were missed (no scheduler ran) and ``misfire`` says
    what to do: ``once`` inserts the latest missed one, ``skip`` none, ``all`` each of them. No
    pass inserts more than ``max_catchup`` runs; the most recent are kept.

    Args:
        cron: the schedule's expression and time zone.
        next_run_at: the first fire time not yet handled (None: a new schedule, nothing is due).
        now: the current instant, from the database's clock.
        misfire: ``once``, ``skip`` or ``all``.
        max_catchup: upper bound of runs inserted by this pass.
        grace: how late a fire time may be processed and still be on time.

    Returns:
        The fire times to insert and the schedule's next ``next_run_at``.

    Example:
        >>> cron = Cron("0 * * * *")               # hourly; the schedulers were down 03:30-06:10
        >>> plan = plan_runs(cron, next_run_at=datetime(2024, 1, 1, 4, tzinfo=UTC),
        ...                  now=datetime(2024, 1, 1, 6, 10, tzinfo=UTC), misfire="once")
        >>> plan.fire_times, plan.missed, plan.next_run_at.hour
        ((datetime.datetime(2024, 1, 1, 6, 0, tzinfo=datetime.timezone.utc),), 3, 7)
    """
    _require_aware(now, "now")
    if misfire not in MISFIRE_POLICIES:
        raise ScheduleError(f"misfire policy {misfire!r} must be one of {', '.join(MISFIRE_POLICIES)}")
    if next_run_at is None:
        return RunPlan((), (), cron.next_after(now))
    _require_aware(next_run_at, "next_run_at")
    if next_run_at > now:
        return RunPlan((), (), next_run_at)
    limit = max(1, max_catchup)
    cutoff = now - grace
    on_time: list[datetime] = []
    missed: list[datetime] = []  # newest first; only as many as the policy can use
    missed_count = 0
    truncated = False
    first_missed: datetime | None = None
    last_missed: datetime | None = None
    keep_missed = {"once": 1, "skip": 0, "all": limit}[misfire]
    for fire_time in cron.iter_at_or_before(now):
        if fire_time < next_run_at:
            break
        if fire_time >= cutoff:
            if len(on_time) < limit:
                on_time.append(fire_time)
            continue
        missed_count += 1
        last_missed = last_missed or fire_time
        first_missed = fire_time
        if len(missed) < keep_missed:
            missed.append(fire_time)
        if missed_count >= _MISSED_COUNT_CAP:
            truncated = True
            break
    if truncated:
        first_missed = next_run_at
    chosen = sorted([(t, False) for t in on_time] + [(t, True) for t in missed])[-limit:]
    inserted_missed = sum(1 for _, late in chosen if late)
    return RunPlan(
        fire_times=tuple(t for t, _ in chosen),
        catch_up=tuple(late for _, late in chosen),
        next_run_at=cron.next_after(now),
        missed=missed_count,
        dropped=missed_count - inserted_missed,
        missed_truncated=truncated,
        first_missed=first_missed,
        last_missed=last_missed,
    )


# --- definitions --------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or name != name.strip() or len(name) > _MAX_NAME_LENGTH \
            or _CONTROL.search(name):
        raise ScheduleError(
            f"schedule name {name!r} must be 1-{_MAX_NAME_LENGTH} characters, without control characters "
            "or surrounding spaces"
        )
    return name


def _check_task(task: str) -> str:
    if not isinstance(task, str) or not task or len(task) > _MAX_TASK_LENGTH or _CONTROL.search(task):
        raise ScheduleError(f"task name {task!r} must be 1-{_MAX_TASK_LENGTH} characters")
    return task


def _check_misfire(misfire: str) -> MisfirePolicy:
    for policy in MISFIRE_POLICIES:
        if misfire == policy:
            return policy
    raise ScheduleError(f"misfire policy {misfire!r} must be one of {', '.join(MISFIRE_POLICIES)}")


def _check_max_catchup(max_catchup: int) -> int:
    if isinstance(max_catchup, bool) or not isinstance(max_catchup, int) \
            or not 1 <= max_catchup <= MAX_MAX_CATCHUP:
        raise ScheduleError(f"max_catchup {max_catchup!r} must be an integer from 1 to {MAX_MAX_CATCHUP}")
    return max_catchup


@dataclass(frozen=True)
class ScheduleSpec:
    """A validated schedule definition (what ``app.schedule`` and ``schedules add`` produce).

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
        """Validate a schedule definition.

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
            InvalidCron: unparsable expression (``61 * * * *``) or one that never fires.
            InvalidTimezone: not an IANA time zone.
            InvalidQueueName: queue name not matching ``[a-z0-9_-]{1,63}``.
            InvalidPriority: priority out of range.
            ArgsNotSerializable: args are not a JSON object.
            PayloadTooLarge: args over ``max_payload_bytes``.
            ScheduleError: bad name, task, misfire policy or max_catchup.

        Example:
            >>> ScheduleSpec.build(name="nightly-cleanup", cron="0 3 * * *", task="cleanup",
            ...                    timezone="Europe/London", misfire="skip")
        """
        checked_name = _check_name(name)
        load_timezone(timezone)
        expression = parse_cron(cron, timezone).expression
        return cls(
            name=checked_name,
            cron=expression,
            task=_check_task(task),
            args_json=encode_args(args if args is not None else {}, max_payload_bytes),
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

    def _values(self, source: str) -> ScheduleValues:
        return ScheduleValues(
            name=self.name, cron=self.cron, timezone=self.timezone, task=self.task, queue=self.queue,
            args_json=self.args_json, priority=self.priority, misfire=self.misfire,
            max_catchup=self.max_catchup, source=source,
        )


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
        """
        if self.state != "active":
            return []
        try:
            cron = parse_cron(self.cron, self.timezone)
        except ScheduleError:
            return []
        return [t.astimezone(cron.zone) for t in cron.fire_times_after(after, count)]

    def to_dict(self) -> dict[str, Any]:
        """The stored columns as a plain dict (datetimes left as datetimes)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__} | {"state": self.state}


def _schedule(row: ScheduleRow) -> Schedule:
    return Schedule(**row)


@dataclass(frozen=True)
class SyncResult:
    """What :func:`sync_schedules` changed (schedule names)."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


# --- the run-time API -------------------------------------------------------------------------


def _first_fire(spec: ScheduleSpec, now: datetime) -> datetime | None:
    return spec.cron_schedule().next_after(now)


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
    store = ScheduleStore(sync_connection(conn))
    with store.transaction():
        now = store.db_now()
        existing = store.get_schedule(spec.name, for_update=True)
        next_run_at = _first_fire(spec, now)
        if existing is None:
            if not store.insert_schedule(spec._values("runtime"), next_run_at, actor=actor):
                raise ScheduleExists(f"schedule {spec.name!r} already exists (it was added concurrently)")
        elif existing["source"] == "code":
            raise ScheduleExists(
                f"schedule {spec.name!r} is defined in code (app.schedule); change it there, "
                f"or pause it with `pgqueue schedules pause {spec.name}`"
            )
        elif not replace:
            raise ScheduleExists(
                f"schedule {spec.name!r} already exists; pass --replace (replace=True) to overwrite it")
        else:
            store.update_schedule(spec._values("runtime"), next_run_at, event="schedule_updated", actor=actor,
                                  changed=_changed_fields(existing, spec))
        return _schedule(_reread(store, spec.name))


def remove_schedule(conn: Any, name: str, *, actor: str | None = None) -> Schedule:
    """Delete a schedule (its ``schedule_runs`` history stays, so no fire time can repeat).

    A code schedule can be removed too, but the next scheduler start re-creates it while it is
    still in the code: remove it from the code, or pause it.

    Returns:
        The schedule as it was.

    Raises:
        ScheduleNotFound: no schedule has that name.

    Example:
        >>> pgqueue.schedules.remove_schedule(conn, "nightly"); conn.commit()
    """
    store = ScheduleStore(sync_connection(conn))
    with store.transaction():
        row = store.get_schedule(name, for_update=True)
        if row is None:
            raise ScheduleNotFound(f"no schedule named {name!r}")
        store.delete_schedule(name, actor=actor)
    return _schedule(row)


def pause_schedule(conn: Any, name: str, *, actor: str | None = None) -> Schedule:
    """Stop inserting runs of a schedule until :func:`resume_schedule` (idempotent).

    Raises:
        ScheduleNotFound: no schedule has that name.

    Example:
        >>> pgqueue.schedules.pause_schedule(conn, "nightly"); conn.commit()
    """
    return _set_paused(conn, name, paused=True, actor=actor)


def resume_schedule(conn: Any, name: str, *, actor: str | None = None) -> Schedule:
    """Resume a paused schedule at its next fire time after now (idempotent).

    Fire times that passed while it was paused are not caught up: pausing means "do not run".

    Raises:
        ScheduleNotFound: no schedule has that name.

    Example:
        >>> pgqueue.schedules.resume_schedule(conn, "nightly"); conn.commit()
    """
    return _set_paused(conn, name, paused=False, actor=actor)


def _set_paused(conn: Any, name: str, *, paused: bool, actor: str | None) -> Schedule:
    store = ScheduleStore(sync_connection(conn))
    with store.transaction():
        row = store.get_schedule(name, for_update=True)
        if row is None:
            raise ScheduleNotFound(f"no schedule named {name!r}")
        if row["paused"] != paused:
            # A paused schedule has no next run; resuming starts from the next fire time after now.
            next_run_at = None
            if not paused and row["disabled_at"] is None:
                next_run_at = _next_fire_or_none(row["cron"], row["timezone"], store.db_now())
            store.set_paused(name, paused, next_run_at, actor=actor)
            row = _reread(store, name)
    return _schedule(row)


def _reread(store: ScheduleStore, name: str) -> ScheduleRow:
    row = store.get_schedule(name)
    if row is None:  # pragma: no cover - written in this transaction, under its row lock
        raise ScheduleNotFound(f"no schedule named {name!r}")
    return row


def _next_fire_or_none(cron: str, timezone: str, now: datetime) -> datetime | None:
    try:
        return parse_cron(cron, timezone).next_after(now)
    except ScheduleError:
        return None  # a row edited by hand with a bad expression: the scheduler reports it


def get_schedule(conn: Any, name: str) -> Schedule:
    """One schedule by name.

    Raises:
        ScheduleNotFound: no schedule has that name.
    """
    row = ScheduleStore(sync_connection(conn)).get_schedule(name)
    if row is None:
        raise ScheduleNotFound(f"no schedule named {name!r}")
    return _schedule(row)


def list_schedules(conn: Any) -> list[Schedule]:
    """Every schedule, by name.

    Example:
        >>> for s in pgqueue.schedules.list_schedules(conn):
        ...     print(s.name, s.state, s.next_fire_times(datetime.now(UTC)))
    """
    return [_schedule(row) for row in ScheduleStore(sync_connection(conn)).list_schedules()]


def database_now(conn: Any) -> datetime:
    """The database server's clock (``now()``), which decides what is due."""
    return ScheduleStore(sync_connection(conn)).db_now()


_COMPARED = ("cron", "timezone", "task", "queue", "priority", "misfire", "max_catchup")
_TIMING = frozenset({"cron", "timezone"})


def _changed_fields(row: ScheduleRow, spec: ScheduleSpec) -> list[str]:
    changed = [name for name in _COMPARED if row[name] != getattr(spec, name)]
    if row["args"] != spec.args:
        changed.append("args")
    return changed


def sync_schedules(conn: Any, specs: Iterable[ScheduleSpec], *, actor: str | None = "scheduler") -> SyncResult:
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
    store = ScheduleStore(sync_connection(conn))
    created: list[str] = []
    updated: list[str] = []
    enabled: list[str] = []
    unchanged: list[str] = []
    with store.transaction():
        store.lock_for_sync()
        now = store.db_now()
        rows = {row["name"]: row for row in store.list_schedules()}
        collisions = sorted(name for name in wanted if name in rows and rows[name]["source"] != "code")
        if collisions:
            names = ", ".join(repr(n) for n in collisions)
            raise ScheduleExists(
                f"schedule {names} is defined in code (app.schedule) but a run-time schedule with that name exists "
                f"(added with `pgqueue schedules add`); rename one, or remove the run-time one with "
                f"`pgqueue schedules remove {collisions[0]}`. Nothing was synced."
            )
        for name, spec in sorted(wanted.items()):
            row = rows.get(name)
            if row is None:
                if not store.insert_schedule(spec._values("code"), _first_fire(spec, now), actor=actor):
                    # Only `schedules add` can race a sync (syncs run one at a time).
                    raise ScheduleExists(f"schedule {name!r} is defined in code but was just added at run time; "
                                         "rename one of them. Nothing was synced.")
                created.append(name)
                continue
            changed = _changed_fields(row, spec)
            was_disabled = row["disabled_at"] is not None
            if not changed and not was_disabled:
                unchanged.append(name)
                continue
            restart = was_disabled or bool(_TIMING.intersection(changed)) or row["next_run_at"] is None
            # A paused schedule has no next run (resume sets one); a restart begins after now.
            next_run_at = None if row["paused"] else _first_fire(spec, now)
            store.update_schedule(spec._values("code"), next_run_at,
                                  event="schedule_enabled" if was_disabled else "schedule_updated",
                                  actor=actor, changed=changed, keep_next_run_at=not row["paused"] and not restart)
            (enabled if was_disabled else updated).append(name)
        disabled = store.disable_code_schedules(keep=sorted(wanted), actor=actor)
    return SyncResult(tuple(created), tuple(updated), tuple(enabled), tuple(sorted(disabled)), tuple(unchanged))


def describe(schedules: Sequence[Schedule], now: datetime, count: int = 3) -> list[dict[str, Any]]:
    """Schedules as JSON-ready dicts with their next ``count`` fire times (ISO 8601, own time zone)."""
    result = []
    for schedule in schedules:
        zone = _safe_zone(schedule.timezone)
        item = schedule.to_dict()
        item["next_fire_times"] = [t.isoformat() for t in schedule.next_fire_times(now, count)]
        for key in ("next_run_at", "last_run_at", "disabled_at"):
            value = item[key]
            item[key] = value.astimezone(zone).isoformat() if value is not None else None
        for key in ("created_at", "updated_at"):
            item[key] = item[key].isoformat()
        result.append(item)
    return result


def _safe_zone(name: str) -> tzinfo:
    try:
        return load_timezone(name)
    except InvalidTimezone:
        return UTC
