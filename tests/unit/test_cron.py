"""Cron fire times (seconds field, aliases, DST in two zones) and the misfire policy, all on an
injected clock: every "now" below is a fixed instant, never the machine's time.

DST days used (2024):
- America/New_York: spring forward Sun 10 March 02:00 EST -> 03:00 EDT (07:00 UTC);
  fall back Sun 3 November 02:00 EDT -> 01:00 EST (06:00 UTC).
- Europe/London: spring forward Sun 31 March 01:00 GMT -> 02:00 BST (01:00 UTC);
  fall back Sun 27 October 02:00 BST -> 01:00 GMT (01:00 UTC).
"""

from __future__ import annotations

import time
import zoneinfo
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pgqueue._cron import Cron, load_timezone, plan_runs
from pgqueue.errors import InvalidCron, InvalidTimezone, ScheduleError

NY = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
          second: int = 0) -> datetime:
    """A wall-clock reading in ``zone`` (the first occurrence when it is ambiguous)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=zone)


def iso_local(times: list[datetime], zone: ZoneInfo) -> list[str]:
    return [t.astimezone(zone).isoformat() for t in times]


def between(cron: Cron, start: datetime, end: datetime) -> list[datetime]:
    result = []
    for instant in cron.iter_after(start):
        if instant > end:
            break
        result.append(instant)
    return result


# --- syntax -------------------------------------------------------------------------------------


def test_six_fields_have_a_leading_seconds_field() -> None:
    cron = Cron("*/10 * * * * *")
    assert cron.has_seconds
    assert cron.fire_times_after(utc(2024, 1, 1, 12, 0, 5), 4) == [
        utc(2024, 1, 1, 12, 0, 10), utc(2024, 1, 1, 12, 0, 20), utc(2024, 1, 1, 12, 0, 30), utc(2024, 1, 1, 12, 0, 40),
    ]


def test_a_seconds_value_with_fixed_minutes_fires_once_a_minute_at_that_second() -> None:
    cron = Cron("30 */15 * * * *")  # second 30 of minutes 0, 15, 30, 45
    assert cron.fire_times_after(utc(2024, 1, 1, 12, 0, 30), 2) == [
        utc(2024, 1, 1, 12, 15, 30), utc(2024, 1, 1, 12, 30, 30)]


def test_five_fields_start_with_minutes() -> None:
    cron = Cron("5 9 * * MON-FRI", "UTC")
    assert not cron.has_seconds
    # 2024-01-05 is a Friday: the next run after its 09:05 is Monday's.
    assert cron.next_after(utc(2024, 1, 5, 9, 5)) == utc(2024, 1, 8, 9, 5)


def test_fire_times_are_strictly_after_the_given_instant() -> None:
    cron = Cron("* * * * *")
    assert cron.next_after(utc(2024, 1, 1, 12, 0)) == utc(2024, 1, 1, 12, 1)
    assert cron.next_after(utc(2024, 1, 1, 12, 0, 0) + timedelta(microseconds=1)) == utc(2024, 1, 1, 12, 1)


def test_aliases_and_extra_whitespace_are_accepted() -> None:
    assert Cron("@daily", "Europe/London").next_after(utc(2024, 6, 1, 12)) == utc(2024, 6, 1, 23)  # 00:00 BST
    assert Cron("  0   9 * *   *  ").expression == "0 9 * * *"


@pytest.mark.parametrize(("expression", "message"), [
    ("61 * * * *", "61 * * * *"),
    ("* * * *", "must have 5 fields"),
    ("* * * * * * *", "must have 5 fields"),
    ("", "must have 5 fields"),
    ("60 * * * * *", "60 * * * * *"),
    ("0 0 30 2 *", "never fires"),
    ("H * * * *", "hashed and random"),
    ("R 2 * * *", "hashed and random"),
    ("*/0 * * * *", "step"),
    ("@reboot", "must have 5 fields"),
    # croniter accepts each of these (wrapping, widening or ignoring them); pgqueue refuses them.
    ("5-1 * * * *", "range 5-1 in the minute field is reversed"),
    ("59-0 * * * *", "range 59-0 in the minute field is reversed"),
    ("0 0 * * FRI-MON", "range FRI-MON in the day-of-week field is reversed"),
    ("0 0 * DEC-JAN *", "range DEC-JAN in the month field is reversed"),
    ("5-5 * * * *", "range 5-5 in the minute field has equal bounds"),  # croniter: every minute
    ("0 0 * * 7-7", "range 7-7 in the day-of-week field has equal bounds"),  # croniter: every day
    ("0 0 31-L * *", "range 31-L in the day-of-month field has equal bounds"),
    ("*/61 * * * *", "step 61 in the minute field must be from 1 to 59"),
    ("0 */24 * * *", "step 24 in the hour field must be from 1 to 23"),
    ("*/60 * * * * *", "step 60 in the second field must be from 1 to 59"),
    ("0 0 1-31/31 * *", "step 31 in the day-of-month field must be from 1 to 30"),
    ("0 0 * */12 *", "step 12 in the month field must be from 1 to 11"),
    ("0 0 * * */7", "step 7 in the day-of-week field must be from 1 to 6"),
    ("0 0 * * 7/2", "a step starts from 0-6"),  # croniter reads it as 0-6/2
    # And these it refused already, now with the value and the rule.
    ("61 * * * *", "minute 61 is out of range 0-59"),
    ("* 25 * * *", "hour 25 is out of range 0-23"),
    ("0 0 32 * *", "day-of-month 32 is out of range 1-31"),
    ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
    ("0 0 * 13 *", "month 13 is out of range 1-12"),
    ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
    ("60 * * * * *", "second 60 is out of range 0-59"),
    ("*/-1 * * * *", "minute value '*/-1' is not valid"),
    ("0 0 * * MONDAY", "day-of-week value 'MONDAY' is not valid"),
    ("0 0 * * FRI#6", "the week of the month after # must be from 1 to 5"),
    ("0 0 32W * *", "day-of-month 32 in 32W (nearest weekday) is out of range 1-31"),
    ("? * * * *", "'?' is allowed only in the day-of-month and day-of-week fields"),
    # Characters no crontab holds: a newline, a non-breaking space, a non-ASCII digit, a lone surrogate.
    ("0\n9 * * *", "character '\\n' is not allowed"),
    ("0 9 * * *\u00a0", "character '\\xa0' is not allowed"),
    ("\u0663 * * * *", "is not allowed"),
    ("\ud800 * * * *", "character '\\ud800' is not allowed"),
])
def test_invalid_expressions_are_refused_with_the_expression_in_the_message(expression: str, message: str) -> None:
    with pytest.raises(InvalidCron) as raised:
        Cron(expression)
    assert message in str(raised.value)
    assert repr(expression) in str(raised.value)


@pytest.mark.parametrize(("expression", "wrapped", "expected"), [
    ("50-10 * * * *", "50-59,0-10", [58, 59, 0, 1, 2]),
    ("0 0 * * SAT-SUN", "6-7", None),
    ("0 22-2 * * *", "22-23,0-2", None),
])
def test_a_reversed_range_is_refused_with_the_wrapping_lists_that_mean_it(
        expression: str, wrapped: str, expected: list[int] | None) -> None:
    with pytest.raises(InvalidCron) as raised:
        Cron(expression)
    assert f"list both parts: {wrapped})" in str(raised.value)
    field = expression.split().index(next(f for f in expression.split() if "-" in f))
    fields = expression.split()
    fields[field] = wrapped
    hint = Cron(" ".join(fields))  # the hint is itself accepted
    if expected is not None:
        minutes = [t.minute for t in hint.fire_times_after(utc(2024, 1, 1, 0, 57), 5)]
        assert minutes == expected


def test_accepted_extensions_keep_their_meaning() -> None:
    assert Cron("0 0 L * *").next_after(utc(2024, 2, 1)) == utc(2024, 2, 29)  # last day of the month
    assert Cron("0 0 15-L/7 * *").fire_times_after(utc(2024, 1, 1), 3) == [
        utc(2024, 1, 15), utc(2024, 1, 22), utc(2024, 1, 29)]
    assert Cron("0 0 * * 5#3").next_after(utc(2024, 1, 1)) == utc(2024, 1, 19)  # third Friday
    assert Cron("0 0 * * L5").next_after(utc(2024, 1, 1)) == utc(2024, 1, 26)  # last Friday
    assert Cron("0 0 15W * *").next_after(utc(2024, 6, 1)) == utc(2024, 6, 14)  # the 15th is a Saturday
    assert Cron("0 0 ? * MON").next_after(utc(2024, 1, 1)) == utc(2024, 1, 8)
    assert Cron("0 0 * * 5-7").fire_times_after(utc(2024, 1, 1), 3) == [  # 7 is Sunday
        utc(2024, 1, 5), utc(2024, 1, 6), utc(2024, 1, 7)]
    assert Cron("59/15 * * * *").fire_times_after(utc(2024, 1, 1), 2) == [  # 59 only, not every 15 minutes
        utc(2024, 1, 1, 0, 59), utc(2024, 1, 1, 1, 59)]


def test_month_and_weekday_names_are_not_mistaken_for_hash_or_random_values() -> None:
    assert Cron("0 0 * MAR THU").next_after(utc(2024, 1, 1)) == utc(2024, 3, 7)


@pytest.mark.parametrize("zone", [
    "Mars/Olympus_Mons", "", " UTC", "../../etc/passwd", "America/New York", "localtime", "utc", "UTC\n",
    "Europe/\x1b[31mLondon", chr(0xD800), chr(0xDCFF), "UTC\x00",
])
def test_unknown_time_zones_are_refused(zone: str) -> None:
    with pytest.raises(InvalidTimezone) as raised:
        Cron("* * * * *", zone)
    assert repr(zone) in str(raised.value)
    assert "IANA name" in str(raised.value)


def test_every_zone_of_the_iana_database_is_accepted() -> None:
    # "localtime" is a file beside the zones on Debian: this host's zone, which another host
    # would read differently, so it is refused above.
    zones = zoneinfo.available_timezones() - {"localtime"}
    assert len(zones) > 300
    for zone in zones:
        assert load_timezone(zone).key == zone


def test_naive_datetimes_are_refused() -> None:
    cron = Cron("* * * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        cron.next_after(datetime(2024, 1, 1))  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_runs(cron, next_run_at=None, now=datetime(2024, 1, 1))  # noqa: DTZ001


# --- daylight saving: spring forward --------------------------------------------------------------


def test_new_york_spring_forward_runs_a_nonexistent_time_once_at_the_jump() -> None:
    cron = Cron("30 2 * * *", "America/New_York")  # 02:30 does not exist on 10 March
    times = cron.fire_times_after(local(NY, 2024, 3, 9, 12), 3)
    assert iso_local(times, NY) == [
        "2024-03-10T03:00:00-04:00",  # the first valid instant after 02:30 EST
        "2024-03-11T02:30:00-04:00",
        "2024-03-12T02:30:00-04:00",
    ]
    assert times[0] == utc(2024, 3, 10, 7, 0)


def test_new_york_spring_forward_collapses_every_time_in_the_gap_into_one_run() -> None:
    cron = Cron("*/15 2 * * *", "America/New_York")  # 02:00, 02:15, 02:30, 02:45: none exist on 10 March
    times = between(cron, local(NY, 2024, 3, 10, 0), local(NY, 2024, 3, 10, 23))
    assert iso_local(times, NY) == ["2024-03-10T03:00:00-04:00"]


def test_new_york_spring_forward_every_half_hour_loses_only_the_missing_hour() -> None:
    cron = Cron("*/30 * * * *", "America/New_York")
    times = between(cron, local(NY, 2024, 3, 10, 0, 45), local(NY, 2024, 3, 10, 4, 0))
    # 02:00 and 02:30 do not exist; they become the single 03:00 run, which 03:00 itself also is.
    assert iso_local(times, NY) == [
        "2024-03-10T01:00:00-05:00", "2024-03-10T01:30:00-05:00",
        "2024-03-10T03:00:00-04:00", "2024-03-10T03:30:00-04:00", "2024-03-10T04:00:00-04:00",
    ]


def test_london_spring_forward_runs_a_nonexistent_time_once_at_the_jump() -> None:
    cron = Cron("30 1 * * *", "Europe/London")  # 01:30 does not exist on 31 March
    times = cron.fire_times_after(local(LONDON, 2024, 3, 30, 12), 2)
    assert iso_local(times, LONDON) == ["2024-03-31T02:00:00+01:00", "2024-04-01T01:30:00+01:00"]
    assert times[0] == utc(2024, 3, 31, 1, 0)


def test_london_spring_forward_with_seconds_fires_once_at_the_jump() -> None:
    cron = Cron("*/20 * 1 * * *", "Europe/London")  # every 20 s during the 01:xx hour, which does not exist
    times = between(cron, local(LONDON, 2024, 3, 31, 0, 0), local(LONDON, 2024, 3, 31, 5, 0))
    assert iso_local(times, LONDON) == ["2024-03-31T02:00:00+01:00"]


# --- daylight saving: fall back -------------------------------------------------------------------


def test_new_york_fall_back_runs_a_repeated_time_once_at_its_first_occurrence() -> None:
    cron = Cron("30 1 * * *", "America/New_York")  # 01:30 happens twice on 3 November
    times = cron.fire_times_after(local(NY, 2024, 11, 2, 12), 3)
    assert iso_local(times, NY) == [
        "2024-11-03T01:30:00-04:00",  # EDT, the first occurrence; 01:30 EST does not run
        "2024-11-04T01:30:00-05:00",
        "2024-11-05T01:30:00-05:00",
    ]


def test_new_york_fall_back_every_half_hour_never_repeats_a_wall_clock_time() -> None:
    cron = Cron("*/30 * * * *", "America/New_York")
    times = between(cron, local(NY, 2024, 11, 3, 0, 15), local(NY, 2024, 11, 3, 3, 0))
    assert iso_local(times, NY) == [
        "2024-11-03T00:30:00-04:00", "2024-11-03T01:00:00-04:00", "2024-11-03T01:30:00-04:00",
        "2024-11-03T02:00:00-05:00", "2024-11-03T02:30:00-05:00", "2024-11-03T03:00:00-05:00",
    ]


def test_starting_inside_the_repeated_hour_does_not_rerun_its_times() -> None:
    cron = Cron("*/30 * * * *", "America/New_York")
    inside = utc(2024, 11, 3, 6, 10)  # 01:10 EST, the second pass through 01:xx
    assert inside.astimezone(NY).fold == 1
    assert iso_local(cron.fire_times_after(inside, 2), NY) == ["2024-11-03T02:00:00-05:00", "2024-11-03T02:30:00-05:00"]


def test_london_fall_back_runs_a_repeated_time_once_at_its_first_occurrence() -> None:
    cron = Cron("30 1 * * *", "Europe/London")  # 01:30 happens twice on 27 October
    times = cron.fire_times_after(local(LONDON, 2024, 10, 26, 12), 2)
    assert iso_local(times, LONDON) == ["2024-10-27T01:30:00+01:00", "2024-10-28T01:30:00+00:00"]
    assert times[0] == utc(2024, 10, 27, 0, 30)


def test_london_fall_back_every_ten_seconds_fires_each_wall_clock_second_once() -> None:
    cron = Cron("*/10 * * * * *", "Europe/London")
    times = between(cron, local(LONDON, 2024, 10, 26, 23, 59, 59), local(LONDON, 2024, 10, 27, 2, 0, 0))
    walls = [t.astimezone(LONDON).replace(tzinfo=None) for t in times]
    assert len(walls) == len(set(walls)), "a wall-clock time fired twice"
    # 00:00-00:59:50 BST and 01:00-01:59:50 BST fire; the repeated 01:xx GMT fires nothing; 02:00 GMT does.
    assert walls[-1] == datetime(2024, 10, 27, 2, 0, 0)  # noqa: DTZ001 - a wall-clock reading
    assert len(times) == 2 * 360 + 1


@pytest.mark.parametrize(("expression", "zone", "start"), [
    ("*/30 * * * *", "America/New_York", utc(2024, 3, 10, 4)),
    ("*/30 * * * *", "America/New_York", utc(2024, 11, 3, 3)),
    ("*/20 * * * * *", "Europe/London", utc(2024, 3, 31, 0, 30)),
    ("*/20 * * * * *", "Europe/London", utc(2024, 10, 26, 23, 30)),
    ("30 1,2 * * *", "Europe/London", utc(2024, 3, 29)),
    ("30 1,2 * * *", "America/New_York", utc(2024, 11, 1)),
])
def test_walking_backwards_finds_the_same_fire_times_as_walking_forwards(
        expression: str, zone: str, start: datetime) -> None:
    cron = Cron(expression, zone)
    end = start + timedelta(hours=4 if cron.has_seconds else 96)
    forward = between(cron, start, end)
    backward = []
    for instant in cron.iter_at_or_before(end):
        if instant <= start:
            break
        backward.append(instant)
    assert backward[::-1] == forward
    # From every fire time, including those inside the repeated hour, both directions agree.
    for index in range(1, len(forward)):
        assert cron.latest_at_or_before(forward[index]) == forward[index]
        assert cron.latest_at_or_before(forward[index] - timedelta(microseconds=1)) == forward[index - 1]
        assert cron.next_after(forward[index - 1]) == forward[index]


# --- misfire policy -------------------------------------------------------------------------------


HOURLY = Cron("0 * * * *")
GRACE = timedelta(seconds=60)


def test_a_new_schedule_inserts_nothing_and_starts_at_the_next_fire_time() -> None:
    plan = plan_runs(HOURLY, next_run_at=None, now=utc(2024, 1, 1, 4, 30))
    assert plan.fire_times == ()
    assert plan.next_run_at == utc(2024, 1, 1, 5)


def test_nothing_is_inserted_before_the_fire_time() -> None:
    plan = plan_runs(HOURLY, next_run_at=utc(2024, 1, 1, 5), now=utc(2024, 1, 1, 4, 59, 59))
    assert plan.fire_times == ()
    assert plan.next_run_at == utc(2024, 1, 1, 5)


@pytest.mark.parametrize("policy", ["once", "skip", "all"])
def test_a_run_processed_within_the_grace_is_on_time_under_every_policy(policy: str) -> None:
    plan = plan_runs(HOURLY, next_run_at=utc(2024, 1, 1, 5), now=utc(2024, 1, 1, 5, 0, 45), misfire=policy,
                     grace=GRACE)
    assert plan.fire_times == (utc(2024, 1, 1, 5),)
    assert plan.catch_up == (False,)
    assert plan.missed == 0
    assert plan.next_run_at == utc(2024, 1, 1, 6)


def test_once_inserts_a_single_run_for_the_whole_missed_window() -> None:
    # Schedulers down from 03:30 to 07:20: 04:00, 05:00, 06:00 and 07:00 were missed.
    plan = plan_runs(HOURLY, next_run_at=utc(2024, 1, 1, 4), now=utc(2024, 1, 1, 7, 20), misfire="once", grace=GRACE)
    assert plan.fire_times == (utc(2024, 1, 1, 7),)  # the latest missed fire time stands for the window
    assert plan.catch_up == (True,)
    assert (plan.missed, plan.dropped) == (4, 3)
    assert (plan.first_missed, plan.last_missed) == (utc(2024, 1, 1, 4), utc(2024, 1, 1, 7))
    assert plan.next_run_at == utc(2024, 1, 1, 8)


def test_skip_inserts_nothing_for_the_missed_window_and_resumes_at_the_next_fire_time() -> None:
    plan = plan_runs(HOURLY, next_run_at=utc(2024, 1, 1, 4), now=utc(2024, 1, 1, 7, 20), misfire="skip", grace=GRACE)
    assert plan.fire_times == ()
    assert (plan.missed, plan.dropped) == (4, 4)
    assert plan.next_run_at == utc(2024, 1, 1, 8)


def test_all_inserts_each_missed_run() -> None:
    plan = plan_runs(HOURLY, next_run_at=utc(2024, 1, 1, 4), now=utc(2024, 1, 1, 7, 20), misfire="all", grace=GRACE)
    assert plan.fire_times == (utc(2024, 1, 1, 4), utc(2024, 1, 1, 5), utc(2024, 1, 1, 6), utc(2024, 1, 1, 7))
    assert plan.catch_up == (True, True, True, True)
    assert plan.dropped == 0
    assert plan.next_run_at == utc(2024, 1, 1, 8)


def test_all_keeps_the_most_recent_runs_up_to_max_catchup() -> None:
    plan = plan_runs(HOURLY, next_run_at=utc(2024, 1, 1, 0), now=utc(2024, 1, 2, 0, 30), misfire="all",
                     max_catchup=3, grace=GRACE)
    assert plan.fire_times == (utc(2024, 1, 1, 22), utc(2024, 1, 1, 23), utc(2024, 1, 2, 0))
    assert (plan.missed, plan.dropped) == (25, 22)


@pytest.mark.parametrize("policy", ["once", "skip", "all"])
def test_on_time_runs_beyond_max_catchup_are_counted_as_dropped_not_lost_silently(policy: str) -> None:
    # A per-second schedule whose scheduler paused 9 s (a reconnect): 10 fire times, all within the
    # grace. max_catchup keeps the 3 newest; the 7 others used to vanish with missed == 0, so no
    # schedule_misfired event said so.
    plan = plan_runs(Cron("* * * * * *"), next_run_at=utc(2024, 1, 1, 12, 0, 1), now=utc(2024, 1, 1, 12, 0, 10),
                     misfire=policy, max_catchup=3, grace=GRACE)
    assert plan.fire_times == (utc(2024, 1, 1, 12, 0, 8), utc(2024, 1, 1, 12, 0, 9), utc(2024, 1, 1, 12, 0, 10))
    assert plan.catch_up == (False, False, False)
    assert (plan.missed, plan.inserted_missed, plan.dropped) == (7, 0, 7)
    assert (plan.first_missed, plan.last_missed) == (utc(2024, 1, 1, 12, 0, 1), utc(2024, 1, 1, 12, 0, 7))


@pytest.mark.parametrize(("policy", "expected"), [
    ("once", [utc(2024, 1, 1, 12, 1, 20), utc(2024, 1, 1, 12, 1, 30), utc(2024, 1, 1, 12, 1, 40)]),
    ("skip", [utc(2024, 1, 1, 12, 1, 30), utc(2024, 1, 1, 12, 1, 40)]),
    ("all", [utc(2024, 1, 1, 12, 0, s) for s in (0, 10, 20, 30, 40, 50)]
     + [utc(2024, 1, 1, 12, 1, s) for s in (0, 10, 20, 30, 40)]),
])
def test_fire_times_within_the_grace_run_besides_the_policy_for_older_ones(
        policy: str, expected: list[datetime]) -> None:
    every_10s = Cron("*/10 * * * * *")
    plan = plan_runs(every_10s, next_run_at=utc(2024, 1, 1, 12, 0, 0), now=utc(2024, 1, 1, 12, 1, 45),
                     misfire=policy, grace=timedelta(seconds=20))
    assert list(plan.fire_times) == expected
    assert plan.missed == 9  # 12:00:00 .. 12:01:20 are older than 20 s
    assert plan.next_run_at == utc(2024, 1, 1, 12, 1, 50)


def test_a_misfire_window_across_spring_forward_follows_the_dst_rules() -> None:
    cron = Cron("30 2 * * *", "America/New_York")
    # Down from 9 to 12 March: 02:30 on the 9th, 03:00 EDT on the 10th (no 02:30 that day), 02:30 on the 11th.
    plan = plan_runs(cron, next_run_at=local(NY, 2024, 3, 9, 2, 30), now=local(NY, 2024, 3, 12, 1), misfire="all")
    assert iso_local(list(plan.fire_times), NY) == [
        "2024-03-09T02:30:00-05:00", "2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"]


@pytest.mark.timing
def test_a_long_outage_of_a_per_second_schedule_is_counted_up_to_a_cap_quickly() -> None:
    started = time.monotonic()
    plan = plan_runs(Cron("* * * * * *"), next_run_at=utc(2024, 1, 1), now=utc(2024, 1, 8), misfire="once")
    assert time.monotonic() - started < 5
    # The latest missed fire time, then the 61 within the 60 s grace (23:59:00 to 00:00:00).
    assert plan.fire_times[0] == utc(2024, 1, 7, 23, 58, 59)
    assert plan.catch_up[:2] == (True, False)
    assert len(plan.fire_times) == 62
    assert plan.missed_truncated
    assert plan.missed == 10_000
    assert plan.first_missed == utc(2024, 1, 1)
    assert plan.next_run_at == utc(2024, 1, 8, 0, 0, 1)


def test_an_unknown_misfire_policy_is_refused() -> None:
    with pytest.raises(ScheduleError, match="misfire policy 'sometimes'"):
        plan_runs(HOURLY, next_run_at=utc(2024, 1, 1), now=utc(2024, 1, 1, 3), misfire="sometimes")
