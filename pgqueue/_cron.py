"""Cron maths: expressions checked field by field, DST-correct fire times, and the misfire plan.

Pure functions of their arguments: no database, no clock (every "now" is passed in). The rules:

- Cron: 5 fields (minute hour day-of-month month day-of-week), or 6 with a leading seconds field
  (``*/10 * * * * *``), plus ``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly``. Each
  field is ``*``, a value, a range ``a-b``, a step ``*/n``, ``a/n`` or ``a-b/n``, or a list of
  them; month and weekday names (``JAN``, ``MON``) stand for their numbers; ``L`` (last day),
  ``15W`` (nearest weekday), ``5#3`` (third Friday), ``L5`` (last Friday) and ``?`` are accepted
  in the day fields. Values outside a field's range, ranges that run backwards or have equal
  bounds, and steps outside 1 to the field's span are refused (croniter would wrap them, read
  ``5-5`` as "every minute", or accept a step that matches one value). ``H`` (hashed) and ``R``
  (random) are refused: every scheduler must compute the same fire times.
- Daylight saving: a local time that does not exist (spring forward) fires once, at the first
  valid instant after it (the moment the clocks jump); a local time that occurs twice (fall back)
  fires once, at its first occurrence. So every wall-clock time fires at most once per day it
  occurs, and schedules that fire several times inside the gap collapse into one run.
- Misfire: a fire time is *missed* when it is processed more than the scheduler's misfire grace
  (60 s by default) after it passed, i.e. no scheduler was running. ``once`` inserts a single
  run (the latest missed fire time) for the whole missed window, ``skip`` inserts none, ``all``
  inserts each one. Fire times within the grace always run. ``max_catchup`` bounds how many runs
  one pass inserts for a schedule (the most recent are kept); on-time fire times beyond it are
  counted as missed and dropped, like the others the bound leaves out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from pgqueue.errors import InvalidCron, InvalidTimezone, ScheduleError

__all__ = [
    "DEFAULT_MAX_CATCHUP",
    "DEFAULT_MISFIRE_GRACE",
    "MAX_MAX_CATCHUP",
    "MISFIRE_POLICIES",
    "Cron",
    "MisfirePolicy",
    "RunPlan",
    "load_timezone",
    "parse_cron",
    "plan_runs",
]

MisfirePolicy = Literal["once", "skip", "all"]
MISFIRE_POLICIES: tuple[MisfirePolicy, ...] = ("once", "skip", "all")
DEFAULT_MAX_CATCHUP = 100
MAX_MAX_CATCHUP = 10_000
#: How late a fire time may be processed and still count as on time (not missed).
DEFAULT_MISFIRE_GRACE = timedelta(seconds=60)
# Counting missed fire times stops here: a per-second schedule down for a week has 604,800 of
# them, and a scheduler pass holds the schedule's row lock while it counts.
_MISSED_COUNT_CAP = 10_000
_MAX_EXPRESSION_LENGTH = 1000
_ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
# croniter's Jenkins-style "H" (hash) and "R" (random) values; letters inside month and weekday
# names (MAR, THU) do not match because they are preceded by another letter.
_HASH_OR_RANDOM = re.compile(r"(?<![A-Za-z])[HR](?![A-Za-z])")
# Printable ASCII, and spaces or tabs between fields: croniter would read other characters
# (a newline, a non-ASCII digit) in ways no crontab does.
_CRON_TEXT = re.compile(r"[ \t!-~]*")
# Every name of the IANA database; lowercase files beside them (``localtime``) are the host's
# own zone, which would make schedulers on different hosts disagree.
_ZONE_NAME = re.compile(r"[A-Z][A-Za-z0-9_+-]*(?:/[A-Z][A-Za-z0-9_+-]*)*")
# A fixed reference for "does this expression ever fire": any instant works, a fixed one keeps
# validation deterministic.
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


# --- time zones ---------------------------------------------------------------------------------


def load_timezone(name: str) -> ZoneInfo:
    """The :class:`~zoneinfo.ZoneInfo` for an IANA name such as ``"Europe/London"``.

    Raises:
        InvalidTimezone: ``name`` is not a time zone of the IANA database.
    """
    if not isinstance(name, str) or len(name) > 255 or not _ZONE_NAME.fullmatch(name):
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


# --- checking an expression, field by field -----------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: Mapping[str, int] = field(default_factory=dict)
    # The largest step that can match two values; a larger one matches only the start.
    step_max: int = 0
    note: str = ""


_MONTHS = {name: number for number, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_WEEKDAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_SECOND = _Field("second", 0, 59, step_max=59)
_MINUTE = _Field("minute", 0, 59, step_max=59)
_HOUR = _Field("hour", 0, 23, step_max=23)
_DAY = _Field("day-of-month", 1, 31, step_max=30)
_MONTH = _Field("month", 1, 12, _MONTHS, step_max=11, note=" (or JAN-DEC)")
# 0 and 7 are both Sunday; croniter steps through 0-6.
_WEEKDAY = _Field("day-of-week", 0, 7, _WEEKDAYS, step_max=6, note=" (or SUN-SAT; 0 and 7 are Sunday)")

_PART = re.compile(r"(?P<start>[0-9a-z]+)(?:-(?P<end>[0-9a-z]+))?(?:/(?P<step>[0-9]+))?")
_STAR = re.compile(r"\*(?:/(?P<step>[0-9]+))?")
_NEAREST_WEEKDAY = re.compile(r"(?:(?P<a>[0-9]+)w|w(?P<b>[0-9]+))")
_NTH_WEEKDAY = re.compile(r"(?P<day>[0-9a-z]+)#(?P<nth>[0-9]+)")
_LAST_WEEKDAY = re.compile(r"l(?P<day>[0-9]+)")


def _check_fields(fields: list[str]) -> None:
    """Raise ValueError naming the first value that breaks its field's rule."""
    layout = (_SECOND, _MINUTE, _HOUR, _DAY, _MONTH, _WEEKDAY)[6 - len(fields):]
    for spec, text in zip(layout, fields, strict=True):
        parts = text.lower().split(",")
        if "?" in parts and spec not in (_DAY, _WEEKDAY):
            raise ValueError(f"'?' is allowed only in the day-of-month and day-of-week fields, not in the {spec.name}")
        if "?" in parts and text != "?":
            raise ValueError(f"'?' must be the whole {spec.name} field, not part of {text!r}")
        for part in parts:
            if part == "?":
                continue
            if spec is _DAY and _NEAREST_WEEKDAY.fullmatch(part):
                _check_nearest_weekday(part, alone=len(parts) == 1)
            elif spec is _WEEKDAY and ("#" in part or _LAST_WEEKDAY.fullmatch(part)):
                _check_weekday_of_month(part)
            else:
                _check_part(spec, part)


def _check_part(spec: _Field, part: str) -> None:
    found = _STAR.fullmatch(part) or _PART.fullmatch(part)
    if found is None:
        raise ValueError(_malformed(spec, part))
    step_text = found.group("step")
    if step_text is not None and not 1 <= _number(step_text) <= spec.step_max:
        raise ValueError(f"step {step_text} in the {spec.name} field must be from 1 to {spec.step_max}")
    if part.startswith("*"):
        return
    start_text, end_text = found.group("start"), found.group("end")
    if spec is _DAY and start_text == "l":
        if end_text is not None or step_text is not None:
            raise ValueError(f"day-of-month {part.upper()!r}: L (the last day) may only end a range, as in 15-L")
        return
    start = _value(spec, start_text)
    if end_text is None:
        if spec is _WEEKDAY and start == 7 and step_text is not None:
            raise ValueError(f"day-of-week {part!r}: a step starts from 0-6 (7 is Sunday: write 0/{step_text})")
        return
    end = spec.high if spec is _DAY and end_text == "l" else _value(spec, end_text)
    bounds = f"{start_text}-{end_text}".upper()
    if start == end:
        raise ValueError(f"range {bounds} in the {spec.name} field has equal bounds: "
                         f"write the single value {start_text.upper()}")
    if start > end:
        raise ValueError(f"range {bounds} in the {spec.name} field is reversed: ranges run upwards "
                         f"within {spec.low}-{spec.high} (for one that wraps, list both parts: "
                         f"{_wrapped(spec, start, end)})")


def _check_nearest_weekday(part: str, *, alone: bool) -> None:
    found = _NEAREST_WEEKDAY.fullmatch(part)
    day = (found.group("a") or found.group("b")) if found else ""
    if not 1 <= _number(day) <= 31:
        raise ValueError(f"day-of-month {day} in {part.upper()} (nearest weekday) is out of range 1-31")
    if not alone:
        raise ValueError(f"day-of-month {part.upper()} (nearest weekday) must be the only value of its field")


def _check_weekday_of_month(part: str) -> None:
    found = _NTH_WEEKDAY.fullmatch(part) or _LAST_WEEKDAY.fullmatch(part)
    if found is None:
        raise ValueError(_malformed(_WEEKDAY, part))
    _value(_WEEKDAY, found.group("day"))
    if "#" in part and not 1 <= _number(found.group("nth")) <= 5:
        raise ValueError(f"day-of-week {part.upper()}: the week of the month after # must be from 1 to 5")


def _number(digits: str) -> int:
    # Long digit strings are out of every range; int() of thousands of digits is slow or refused.
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 9 else 10**9


def _value(spec: _Field, text: str) -> int:
    if text in spec.names:
        return spec.names[text]
    if not (text.isascii() and text.isdigit()):
        raise ValueError(_malformed(spec, text))
    value = _number(text)
    if not spec.low <= value <= spec.high:
        raise ValueError(f"{spec.name} {text} is out of range {spec.low}-{spec.high}{spec.note}")
    return value


def _wrapped(spec: _Field, start: int, end: int) -> str:
    upper = str(start) if start == spec.high else f"{start}-{spec.high}"
    if spec is _WEEKDAY and end == 0:
        return upper  # 7 is Sunday already
    return upper + "," + (str(spec.low) if end == spec.low else f"{spec.low}-{end}")


def _malformed(spec: _Field, text: str) -> str:
    return (f"{spec.name} value {text.upper()!r} is not valid: use *, a value from {spec.low} to {spec.high}"
            f"{spec.note}, a range a-b, a step */n or a-b/n, or a list a,b")


def _normalize_expression(expression: str) -> tuple[str, bool]:
    """The expression with single spaces, and whether it has a leading seconds field."""
    if not isinstance(expression, str):
        raise InvalidCron(f"cron expression {expression!r} must be a string")
    if len(expression) > _MAX_EXPRESSION_LENGTH:
        raise InvalidCron(f"cron expression {expression[:40]!r}... is {len(expression)} characters long, "
                          f"over the limit of {_MAX_EXPRESSION_LENGTH}")
    if not _CRON_TEXT.fullmatch(expression):
        bad = next(c for c in expression if not _CRON_TEXT.fullmatch(c))
        raise InvalidCron(f"invalid cron expression {expression!r}: character {bad!r} is not allowed "
                          "(printable ASCII, fields separated by spaces)")
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
    try:
        _check_fields(fields)
    except ValueError as exc:
        raise InvalidCron(f"invalid cron expression {expression!r}: {exc}") from None
    return text, len(fields) == 6


# --- fire times -----------------------------------------------------------------------------------


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
        InvalidCron: the expression breaks a field's rule (``61 * * * *``, ``5-1 * * * *``,
            ``*/0 * * * *``) or never fires (``0 0 30 2 *``).
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
        missed: fire times older than the grace, and on-time ones beyond ``max_catchup`` (counted up
            to 10,000; see ``missed_truncated``).
        missed_truncated: counting stopped at 10,000; there were more.
        first_missed: the oldest missed fire time (``next_run_at`` when counting was truncated).
        last_missed: the newest missed fire time.
    """

    fire_times: tuple[datetime, ...]
    catch_up: tuple[bool, ...]
    next_run_at: datetime | None
    missed: int = 0
    missed_truncated: bool = False
    first_missed: datetime | None = None
    last_missed: datetime | None = None

    @property
    def inserted_missed(self) -> int:
        """How many of :attr:`fire_times` were missed (inserted late by the policy)."""
        return sum(1 for late in self.catch_up if late)

    @property
    def dropped(self) -> int:
        """Missed fire times the policy (or ``max_catchup``) did not insert."""
        return self.missed - self.inserted_missed


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
        if fire_time >= cutoff and len(on_time) < limit:
            on_time.append(fire_time)
            continue
        # Older than the grace, or on time but beyond max_catchup: either way not inserted by
        # this pass unless the policy keeps it, and counted, so the drop is never silent.
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
    return RunPlan(
        fire_times=tuple(t for t, _ in chosen),
        catch_up=tuple(late for _, late in chosen),
        next_run_at=cron.next_after(now),
        missed=missed_count,
        missed_truncated=truncated,
        first_missed=first_missed,
        last_missed=last_missed,
    )
