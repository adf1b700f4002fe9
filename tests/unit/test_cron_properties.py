"""Property-based tests of the cron parser: what it accepts fires exactly when the expression says,
daylight-saving days neither skip nor double a wall-clock run, and every value outside its field's
range is refused.

The reference here is written from the cron rules, not from the parser: each generated field comes
with the set of values it stands for, and the expected fire times are found by walking the
calendar day by day. The day fields follow classic cron: when both are restricted a day matching
either runs; a field written with a bare ``*`` (or listing every value while the other field
has a ``*``) does not restrict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgqueue._cron import Cron
from pgqueue.errors import InvalidCron

MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
WEEKDAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


@dataclass(frozen=True)
class Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i
    step_high: int = 0  # where */n and a/n stop: the field's high, but 6 for day-of-week

    @property
    def last(self) -> int:
        return self.step_high or self.high


SECOND = Field("second", 0, 59)
MINUTE = Field("minute", 0, 59)
HOUR = Field("hour", 0, 23)
DAY = Field("day-of-month", 1, 31)
MONTH = Field("month", 1, 12, MONTH_NAMES)
WEEKDAY = Field("day-of-week", 0, 7, WEEKDAY_NAMES, step_high=6)
FIVE = (MINUTE, HOUR, DAY, MONTH, WEEKDAY)
SIX = (SECOND, *FIVE)


@dataclass(frozen=True)
class Written:
    """A field as written, and the values it stands for (day-of-week 7 counted as 0)."""

    text: str
    values: frozenset[int]
    bare_star: bool = False


def _norm(spec: Field, values: range | list[int]) -> frozenset[int]:
    return frozenset(v % 7 for v in values) if spec is WEEKDAY else frozenset(values)


def _written_value(draw: st.DrawFn, spec: Field, value: int) -> str:
    index = value - spec.low
    if spec.names and index < len(spec.names) and draw(st.booleans()):
        name = spec.names[index]
        return draw(st.sampled_from([name, name.lower(), name.capitalize()]))
    return draw(st.sampled_from([str(value), f"0{value}"])) if value < 10 else str(value)


@st.composite
def part(draw: st.DrawFn, spec: Field) -> Written:
    shape = draw(st.sampled_from(["star", "star_step", "value", "range", "range_step", "start_step"]))
    step = draw(st.integers(1, spec.last - spec.low))
    if shape == "star":
        return Written("*", _norm(spec, range(spec.low, spec.last + 1)), bare_star=True)
    if shape == "star_step":
        return Written(f"*/{step}", _norm(spec, range(spec.low, spec.last + 1, step)))
    if shape == "value":
        value = draw(st.integers(spec.low, spec.high))
        return Written(_written_value(draw, spec, value), _norm(spec, [value]))
    if shape == "start_step":
        start = draw(st.integers(spec.low, spec.last))
        return Written(f"{_written_value(draw, spec, start)}/{step}", _norm(spec, range(start, spec.last + 1, step)))
    start = draw(st.integers(spec.low, spec.high - 1))
    end = draw(st.integers(start + 1, spec.high))
    text = f"{_written_value(draw, spec, start)}-{_written_value(draw, spec, end)}"
    if shape == "range":
        return Written(text, _norm(spec, range(start, end + 1)))
    return Written(f"{text}/{step}", _norm(spec, range(start, end + 1, step)))


@st.composite
def field_text(draw: st.DrawFn, spec: Field) -> Written:
    parts = draw(st.lists(part(spec), min_size=1, max_size=3))
    return Written(",".join(p.text for p in parts), frozenset().union(*(p.values for p in parts)),
                   bare_star=any(p.bare_star for p in parts))


@dataclass(frozen=True)
class Expression:
    fields: tuple[Written, ...]

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.fields)

    def _day_matches(self, day: date) -> bool:
        dom, month, dow = self.fields[-3:]
        if day.month not in month.values:
            return False
        in_dom = day.day in dom.values
        in_dow = (day.weekday() + 1) % 7 in dow.values
        dom_star = dom.bare_star or (len(dom.values) == 31 and "*" in dow.text)
        dow_star = dow.bare_star or (len(dow.values) == 7 and "*" in dom.text)
        if not dom_star and not dow_star:
            return in_dom or in_dow
        return in_dom and in_dow

    def walls(self, first_day: date, last_day: date) -> list[datetime]:
        """Every matching wall-clock time on the days from ``first_day`` to ``last_day``, ascending."""
        seconds = sorted(self.fields[0].values) if len(self.fields) == 6 else [0]
        minutes, hours = (sorted(f.values) for f in self.fields[-5:-3])
        found = []
        day = first_day
        while day <= last_day:
            if self._day_matches(day):
                found += [datetime(day.year, day.month, day.day, h, m, s)  # noqa: DTZ001 - a wall-clock reading
                          for h in hours for m in minutes for s in seconds]
            day += timedelta(days=1)
        return found

    def next_walls(self, after: datetime, count: int, years: int = 30) -> list[datetime]:
        """The first ``count`` matching wall-clock times after ``after``, searching ``years`` ahead."""
        result: list[datetime] = []
        day, end = after.date(), after.date() + timedelta(days=365 * years)
        while day <= end and len(result) < count:
            result += [w for w in self.walls(day, day) if w > after][:count - len(result)]
            day += timedelta(days=1)
        return result


@st.composite
def expressions(draw: st.DrawFn, layout: tuple[Field, ...] | None = None) -> Expression:
    chosen = layout or draw(st.sampled_from([FIVE, SIX]))
    return Expression(tuple(draw(field_text(spec)) for spec in chosen))


# --- every accepted expression fires exactly when it says ------------------------------------------


@settings(max_examples=80, deadline=None)
@given(expression=expressions(),
       start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)))  # noqa: DTZ001
def test_fire_times_are_the_matching_times_in_order_and_none_is_skipped(expression: Expression,
                                                                        start: datetime) -> None:
    start = start.replace(microsecond=0)
    expected = expression.next_walls(start, 4)
    if not expected:
        # Well-formed and in range, but on a day that never comes (31 February): refused.
        with pytest.raises(InvalidCron, match="never fires"):
            Cron(expression.text)
        return
    fired = Cron(expression.text).fire_times_after(start.replace(tzinfo=UTC), 4)
    assert [t.replace(tzinfo=None) for t in fired] == expected, expression.text
    assert all(earlier < later for earlier, later in pairwise(fired))


# --- daylight saving: no wall-clock run skipped, none doubled ---------------------------------------


DST_ZONES = ("America/New_York", "Europe/London", "Australia/Sydney", "Australia/Lord_Howe")


@lru_cache
def transitions(zone_name: str, year: int) -> tuple[datetime, ...]:
    """The instants (UTC) at which ``zone_name`` changes its offset in ``year``, to the minute."""
    zone = ZoneInfo(zone_name)
    found = []
    hour = datetime(year, 1, 1, tzinfo=UTC)
    while hour.year == year:
        after = hour + timedelta(hours=1)
        if hour.astimezone(zone).utcoffset() != after.astimezone(zone).utcoffset():
            minute = hour
            while minute.astimezone(zone).utcoffset() == hour.astimezone(zone).utcoffset():
                minute += timedelta(minutes=1)
            found.append(minute)
        hour = after
    return tuple(found)


DST_DAYS = [(zone, at) for zone in DST_ZONES for year in (2024, 2031) for at in transitions(zone, year)]


def wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def instant_of(local: datetime, zone: ZoneInfo) -> datetime:
    """Contract §7: a wall time that occurs twice fires at its first occurrence; one that does
    not exist fires at the first instant after it (the moment the clocks jump)."""
    occurrences = [t for t in (local.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1))
                   if wall(t, zone) == local]
    if occurrences:
        return min(occurrences)
    moment = min(local.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1))
    while wall(moment, zone) < local:
        moment += timedelta(minutes=1)
    return moment


@settings(max_examples=30, deadline=None)
@given(expression=st.tuples(field_text(MINUTE), field_text(HOUR)).map(
           lambda f: Expression((*f, Written("*", frozenset(range(1, 32)), True),
                                 Written("*", frozenset(range(1, 13)), True),
                                 Written("*", frozenset(range(7)), True)))),
       day=st.sampled_from(DST_DAYS))
def test_a_dst_day_neither_skips_nor_doubles_a_wall_clock_run(expression: Expression,
                                                              day: tuple[str, datetime]) -> None:
    zone_name, transition = day
    zone = ZoneInfo(zone_name)
    start, end = transition - timedelta(hours=5), transition + timedelta(hours=5)
    cron = Cron(expression.text, zone_name)

    fired = []
    for instant in cron.iter_after(start):
        if instant > end:
            break
        fired.append(instant)

    local_days = wall(start, zone).date() - timedelta(days=1), wall(end, zone).date() + timedelta(days=1)
    expected = sorted({t for t in (instant_of(w, zone) for w in expression.walls(*local_days)) if start < t <= end})
    assert fired == expected, (expression.text, zone_name, transition)
    walls = [wall(t, zone) for t in fired]
    assert len(walls) == len(set(walls)), "a wall-clock time fired twice"


# --- every value, step or range that breaks its field's rule is refused -----------------------------


@st.composite
def one_field(draw: st.DrawFn) -> tuple[tuple[Field, ...], int]:
    """A layout (5 or 6 fields) and the index of the field to break."""
    layout = draw(st.sampled_from([FIVE, SIX]))
    return layout, draw(st.integers(0, len(layout) - 1))


def with_field(layout: tuple[Field, ...], index: int, text: str) -> str:
    fields = ["*"] * len(layout)
    fields[index] = text
    return " ".join(fields)


@st.composite
def value_out_of_range(draw: st.DrawFn) -> tuple[str, str]:
    """(expression, the rule's words) with one field holding a value outside its range, in any position."""
    layout, index = draw(one_field())
    spec = layout[index]
    below = [st.just(0)] if spec.low == 1 else []
    bad = str(draw(st.one_of(*below, st.integers(spec.high + 1, 99), st.integers(100, 10**12))))
    good = str(spec.low)
    shape: Callable[[str], str] = draw(st.sampled_from([
        lambda v: v, lambda v: f"{v}-{spec.high}" if int(v) < spec.low else f"{good}-{v}",
        lambda v: f"{v}/2", lambda v: f"{good},{v}", lambda v: f"{v},{good}", lambda v: f"{good}-{v}/3",
    ]))
    return with_field(layout, index, shape(bad)), f"{spec.name} {bad} is out of range {spec.low}-{spec.high}"


@st.composite
def step_out_of_range(draw: st.DrawFn) -> tuple[str, str]:
    layout, index = draw(one_field())
    spec = layout[index]
    span = spec.last - spec.low
    step = draw(st.one_of(st.just(0), st.integers(span + 1, 10**6)))
    base = draw(st.sampled_from(["*", str(spec.low), f"{spec.low}-{spec.high}"]))
    return with_field(layout, index, f"{base}/{step}"), f"step {step} in the {spec.name} field must be from 1 to {span}"


@st.composite
def backward_range(draw: st.DrawFn) -> tuple[str, str]:
    layout, index = draw(one_field())
    spec = layout[index]
    end = draw(st.integers(spec.low, spec.high - 1))
    start = draw(st.integers(end, spec.high))
    if spec is WEEKDAY and start == 7 and end == 0:
        start = 6  # 7-0 would be Sunday-Sunday written both ways
    text = f"{start}-{end}" + draw(st.sampled_from(["", "/2"]))
    words = "has equal bounds" if start == end else "is reversed"
    return with_field(layout, index, text), f"range {start}-{end} in the {spec.name} field {words}"


@settings(max_examples=200, deadline=None)
@given(case=st.one_of(value_out_of_range(), step_out_of_range(), backward_range()))
def test_every_value_step_or_range_that_breaks_its_field_rule_is_refused_naming_it(case: tuple[str, str]) -> None:
    expression, rule = case
    with pytest.raises(InvalidCron) as refused:
        Cron(expression)
    assert repr(expression) in str(refused.value)
    assert rule in str(refused.value)
