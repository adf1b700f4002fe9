"""ScheduleSpec.build and app.schedule: every field is checked, with a typed error naming the bad value."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

import pgqueue
from pgqueue.errors import (
    ArgsNotSerializable,
    ConfigurationError,
    InvalidArgs,
    InvalidCron,
    InvalidPriority,
    InvalidQueueName,
    InvalidSchedule,
    InvalidTimezone,
    PayloadTooLarge,
    ScheduleError,
)
from pgqueue.schedules import Schedule, ScheduleSpec


def build(**overrides: object) -> ScheduleSpec:
    fields: dict[str, object] = {"name": "daily-report", "cron": "0 9 * * *", "task": "render-report"}
    fields.update(overrides)
    return ScheduleSpec.build(**fields)  # type: ignore[arg-type]


def test_build_fills_defaults_and_normalises_the_expression() -> None:
    spec = build(cron=" 0  9 * *  * ")
    assert spec.cron == "0 9 * * *"
    assert (spec.timezone, spec.queue, spec.priority, spec.misfire, spec.max_catchup) == ("UTC", "default", 100,
                                                                                          "once", 100)
    assert spec.args == {}


def test_args_are_kept_as_canonical_json_and_cannot_be_changed_through_the_spec() -> None:
    spec = build(args={"report_id": 1, "tags": ("a", "b")})
    assert spec.args_json == '{"report_id":1,"tags":["a","b"]}'
    spec.args["report_id"] = 2
    assert spec.args == {"report_id": 1, "tags": ["a", "b"]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.cron = "* * * * *"  # type: ignore[misc]


def test_priority_names_are_resolved() -> None:
    assert build(priority="high").priority == 25


@pytest.mark.parametrize(("overrides", "error", "message"), [
    ({"cron": "61 * * * *"}, InvalidCron, "'61 * * * *'"),
    ({"cron": "*/10 * * * * * *"}, InvalidCron, "got 7"),
    ({"timezone": "Europe/Lndon"}, InvalidTimezone, "'Europe/Lndon'"),
    ({"queue": "Reports!"}, InvalidQueueName, "[a-z0-9_-]{1,63}"),
    ({"args": [1, 2]}, ArgsNotSerializable, "JSON object"),
    ({"args": {"when": datetime(2024, 1, 1, tzinfo=UTC)}}, ArgsNotSerializable, "not JSON-serialisable"),
    ({"args": {"blob": "x" * 100}, "max_payload_bytes": 50}, PayloadTooLarge, "50-byte limit"),
    ({"priority": "urgent"}, InvalidPriority, "'urgent'"),
    ({"misfire": "twice"}, InvalidSchedule, "misfire policy 'twice'"),
    ({"max_catchup": 0}, InvalidSchedule, "max_catchup 0"),
    ({"max_catchup": 10_001}, InvalidSchedule, "max_catchup 10001"),
    ({"max_catchup": True}, InvalidSchedule, "max_catchup True"),
    ({"name": ""}, InvalidSchedule, "schedule name ''"),
    ({"name": " padded "}, InvalidSchedule, "surrounding spaces"),
    ({"name": "x" * 201}, InvalidSchedule, "1-200 characters"),
    ({"name": "line\nbreak"}, InvalidSchedule, "control characters"),
    ({"task": ""}, InvalidSchedule, "task name ''"),
    # Lone surrogates and control characters, in every field: refused before any SQL is sent.
    ({"name": "bad" + chr(0xD800)}, InvalidSchedule, "schedule name 'bad\\ud800' must be"),
    ({"name": "bad" + chr(0xDCFF)}, InvalidSchedule, "lone surrogates"),  # an undecodable byte in argv
    ({"name": "\x1b[31mred"}, InvalidSchedule, "schedule name '\\x1b[31mred'"),
    ({"name": "c1\x9bcontrol"}, InvalidSchedule, "control characters"),
    ({"task": "t" + chr(0xD800)}, InvalidSchedule, "task name 't\\ud800'"),
    ({"task": "t\x00"}, InvalidSchedule, "control characters"),
    ({"task": "tab\there"}, InvalidSchedule, "control characters"),
    ({"queue": "q" + chr(0xD800)}, InvalidQueueName, "[a-z0-9_-]{1,63}"),
    ({"queue": "q\n"}, InvalidQueueName, "[a-z0-9_-]{1,63}"),
    ({"timezone": "UTC" + chr(0xD800)}, InvalidTimezone, "IANA name"),
    ({"timezone": "Europe/\x1bLondon"}, InvalidTimezone, "IANA name"),
    ({"cron": "0 9 * * *" + chr(0xD800)}, InvalidCron, "is not allowed"),
    ({"cron": "5-1 * * * *"}, InvalidCron, "range 5-1 in the minute field is reversed"),
    ({"args": {"note": "x" + chr(0xD800)}}, ArgsNotSerializable, "lone surrogate '\\ud800'"),
    ({"args": {chr(0xDC80): 1}}, ArgsNotSerializable, "lone surrogate '\\udc80'"),
])
def test_invalid_fields_raise_a_typed_error_that_names_the_value(
        overrides: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as raised:
        build(**overrides)
    assert message in str(raised.value)


def test_schedule_errors_are_pgqueue_errors() -> None:
    # The CLI's single error boundary catches PgqueueError: every schedule error must be one.
    for error in (InvalidCron, InvalidTimezone, InvalidSchedule, ScheduleError, InvalidQueueName, ArgsNotSerializable):
        assert issubclass(error, pgqueue.errors.PgqueueError)
    assert issubclass(InvalidSchedule, ScheduleError)


def test_control_characters_inside_args_values_are_data_and_kept() -> None:
    # Args are the task's data (an email body has newlines); jsonb stores them escaped.
    assert build(args={"body": "line one\nline two\ttabbed"}).args == {"body": "line one\nline two\ttabbed"}


def test_app_schedule_takes_queue_and_priority_from_the_registered_task() -> None:
    app = pgqueue.App(dsn="postgresql://unused@127.0.0.1:1/x")

    @app.task(name="render-report", queue="reports", priority="low")
    def render(job: pgqueue.Job, report_id: int) -> None: ...

    spec = app.schedule("daily-report", cron="0 9 * * *", task="render-report", args={"report_id": 1},
                        timezone="America/New_York")
    assert (spec.queue, spec.priority, spec.timezone) == ("reports", 200, "America/New_York")
    assert app.schedules == {"daily-report": spec}
    explicit = app.schedule("urgent-report", cron="*/10 * * * * *", task="render-report", args={"report_id": 2},
                            queue="urgent", priority=0)
    assert (explicit.queue, explicit.priority) == ("urgent", 0)


def test_a_schedule_whose_args_do_not_fit_its_handler_is_refused_whichever_is_declared_first() -> None:
    # Each run would otherwise fail at once (InvalidArgs) for as long as the schedule is deployed.
    app = pgqueue.App(dsn="postgresql://unused@127.0.0.1:1/x")

    @app.task(name="render-report")
    def render(job: pgqueue.Job, report_id: int) -> None: ...

    with pytest.raises(InvalidArgs, match="schedule 'daily': args do not fit task 'render-report': missing"):
        app.schedule("daily", cron="0 9 * * *", task="render-report")
    assert app.schedules == {}

    app.schedule("early", cron="0 9 * * *", task="cleanup", args={"days": 30})  # its task comes later
    with pytest.raises(InvalidArgs, match="schedule 'early': args do not fit task 'cleanup': unexpected 'days'"):
        @app.task(name="cleanup")
        def cleanup(job: pgqueue.Job) -> None: ...
    assert "cleanup" not in app.tasks
    app.schedule("elsewhere", cron="0 9 * * *", task="another-apps-task", args={"x": 1})  # unknown here: kept


def test_app_schedule_refuses_invalid_input_without_registering_anything() -> None:
    app = pgqueue.App(dsn="postgresql://unused@127.0.0.1:1/x")
    with pytest.raises(InvalidCron):
        app.schedule("broken", cron="61 * * * *", task="t")
    with pytest.raises(InvalidTimezone):
        app.schedule("broken", cron="* * * * *", task="t", timezone="Nowhere/Special")
    assert app.schedules == {}


def _stored(**overrides: object) -> Schedule:
    now = datetime(2024, 3, 9, 12, tzinfo=UTC)
    fields: dict[str, object] = {
        "name": "n", "cron": "30 2 * * *", "timezone": "America/New_York", "task": "t", "queue": "default",
        "args": {}, "priority": 100, "paused": False, "misfire": "once", "max_catchup": 100, "source": "runtime",
        "disabled_at": None, "next_run_at": None, "last_run_at": None, "created_at": now, "updated_at": now,
    }
    fields.update(overrides)
    return Schedule(**fields)  # type: ignore[arg-type]


def test_a_stored_schedule_lists_its_next_fire_times_in_its_own_time_zone() -> None:
    times = _stored().next_fire_times(datetime(2024, 3, 9, 12, tzinfo=UTC))
    assert [t.isoformat() for t in times] == [
        "2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00", "2024-03-12T02:30:00-04:00"]


def test_paused_and_disabled_schedules_have_no_next_fire_times() -> None:
    after = datetime(2024, 3, 9, 12, tzinfo=UTC)
    assert _stored(paused=True).state == "paused"
    assert _stored(paused=True).next_fire_times(after) == []
    disabled = _stored(disabled_at=after)
    assert disabled.state == "disabled"
    assert disabled.next_fire_times(after) == []


@pytest.mark.parametrize("raw", ["0", "0.5", "nan", "inf", "-1", "soon"])
def test_a_misfire_grace_under_a_second_or_not_a_number_is_refused(raw: str) -> None:
    # A scheduler's pass lands milliseconds after a fire time: a grace of 0 made every run "missed".
    from pgqueue._scheduler import misfire_grace_from_env

    with pytest.raises(ConfigurationError, match=r"PGQUEUE_MISFIRE_GRACE_SECONDS .* must be a number of seconds >= 1"):
        misfire_grace_from_env({"PGQUEUE_MISFIRE_GRACE_SECONDS": raw})
    assert misfire_grace_from_env({"PGQUEUE_MISFIRE_GRACE_SECONDS": "1"}).total_seconds() == 1
