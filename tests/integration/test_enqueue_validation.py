"""Enqueue validation: whatever a caller passes is either stored and read back intact, or refused
with a typed ``pgqueue.errors.EnqueueError`` before PostgreSQL sees it (nothing written).

Property tests (hypothesis) run against the real database: the property is about what PostgreSQL
accepts and what Python can read back, so a model of either would prove nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import TupleRow

from pgqueue import App, admin
from pgqueue._payload import MAX_JSON_DEPTH, MAX_TASK_NAME_LENGTH, MAX_UNIQUE_KEY_BYTES
from pgqueue.errors import ArgsNotSerializable, ConfigurationError, EnqueueError, InvalidEnqueueOption, UnknownTask

Conn = psycopg.Connection[TupleRow]

# Any str Python can hold: lone surrogates, NUL and control characters included.
# hypothesis leaves surrogates out of text by default; here they are the point, so they come often.
_NASTY = ["\ud800", "\udfff", "\x00", "\x1b[31m", "\u2028", "é", "\U0001f600", "\\u0000"]
any_text = st.lists(st.characters(exclude_categories=()) | st.sampled_from(_NASTY), max_size=12).map("".join)
json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | any_text
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner,
                                                                                                    max_size=3),
                          max_leaves=12)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _numbers_as_floats(value: Any) -> Any:
    """jsonb keeps numbers as numeric: 4.59e16 comes back as an int. Compare numbers as floats."""
    if isinstance(value, dict):
        return {key: _numbers_as_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers_as_floats(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _stored(conn: Conn, job_id: int) -> tuple[Any, ...]:
    row = conn.execute("SELECT task, args, unique_key, tags, run_at FROM pgqueue.jobs WHERE id = %s",
                       [job_id]).fetchone()
    assert row is not None
    return tuple(row)


def _count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
    assert row is not None
    return int(row[0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=any_text, args=st.dictionaries(any_text, json_value, max_size=4),
       unique_key=st.none() | any_text, tags=st.none() | st.lists(any_text, max_size=3))
def test_enqueue_stores_what_it_accepts_and_refuses_the_rest_with_a_typed_error(
        conn: Conn, task: str, args: dict[str, Any], unique_key: str | None, tags: list[str] | None) -> None:
    app = App(conn.info.dsn)
    before = _count(conn)
    try:
        with conn.transaction(force_rollback=True):
            try:
                job_id = app.enqueue(conn, task, args, unique_key=unique_key, tags=tags)
            except EnqueueError:
                assert _count(conn) == before  # nothing written
                return
            stored_task, stored_args, stored_key, stored_tags, _ = _stored(conn, job_id)
            assert stored_task == task
            assert _numbers_as_floats(stored_args) == _numbers_as_floats(args)
            assert stored_key == unique_key
            assert list(stored_tags or []) == list(tags or [])
            # The listing that every operator surface uses reads it back.
            assert any(job.id == job_id for job in admin.list_jobs(conn, limit=1000).items)
    except psycopg.Error as exc:  # pragma: no cover - the failure this test exists to catch
        pytest.fail(f"PostgreSQL refused what enqueue accepted: {exc!r}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_at=st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)),
                                                      timezone(timedelta(hours=-12))])),
       delay=st.none() | st.floats(allow_nan=True, allow_infinity=True))
def test_a_run_at_or_delay_is_stored_readable_or_refused(conn: Conn, run_at: datetime, delay: float | None) -> None:
    app = App(conn.info.dsn)
    with conn.transaction(force_rollback=True):
        for options in ({"run_at": run_at}, {"delay": delay}):
            try:
                job_id = app.enqueue(conn, "t", {}, **options)
            except InvalidEnqueueOption:
                continue
            # Reading it back as Python values must work (a year-10000 row crashed `jobs list`).
            assert _stored(conn, job_id)[4] is not None
            assert admin.get_job(conn, job_id).run_at is not None


def test_far_run_at_and_delay_are_refused_before_the_database(conn: Conn) -> None:
    app = App(conn.info.dsn)
    with pytest.raises(InvalidEnqueueOption, match="100 years"):
        app.enqueue(conn, "t", {}, run_at=datetime(9999, 12, 31, tzinfo=UTC))
    with pytest.raises(InvalidEnqueueOption, match="1970"):
        app.enqueue(conn, "t", {}, run_at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))))
    with pytest.raises(InvalidEnqueueOption, match="100 years"):
        app.enqueue(conn, "t", {}, delay=1e12)
    assert _count(conn) == 0


@pytest.mark.parametrize(("kwargs", "error", "fragment"), [
    ({"task": "t\ud800"}, UnknownTask, "surrogate"),
    ({"task": "t" * (MAX_TASK_NAME_LENGTH + 1)}, UnknownTask, f"at most {MAX_TASK_NAME_LENGTH}"),
    ({"args": {"a": "\ud800"}}, ArgsNotSerializable, "surrogate"),
    ({"args": {"\udc00": 1}}, ArgsNotSerializable, "surrogate"),
    ({"args": {"a": _nested(MAX_JSON_DEPTH + 1)}}, ArgsNotSerializable, f"{MAX_JSON_DEPTH} levels"),
    ({"args": {"a": _nested(100_000)}}, ArgsNotSerializable, f"{MAX_JSON_DEPTH} levels"),
    ({"unique_key": "k" * (MAX_UNIQUE_KEY_BYTES + 1)}, InvalidEnqueueOption, f"{MAX_UNIQUE_KEY_BYTES} UTF-8 bytes"),
    ({"unique_key": "é" * (MAX_UNIQUE_KEY_BYTES // 2 + 1)}, InvalidEnqueueOption, "UTF-8 bytes"),
    ({"unique_key": "\ud800"}, InvalidEnqueueOption, "surrogate"),
    ({"tags": ["ok", "\udfff"]}, InvalidEnqueueOption, "surrogate"),
])
def test_hostile_input_is_refused_with_a_typed_error_and_nothing_is_written(
        conn: Conn, kwargs: dict[str, Any], error: type[Exception], fragment: str) -> None:
    app = App(conn.info.dsn)
    call: dict[str, Any] = {"task": "t", "args": {}, **kwargs}
    with pytest.raises(error, match=fragment):
        app.enqueue(conn, call.pop("task"), call.pop("args"), **call)
    assert _count(conn) == 0


def test_the_limits_themselves_are_accepted(conn: Conn) -> None:
    app = App(conn.info.dsn)
    app.enqueue(conn, "t" * MAX_TASK_NAME_LENGTH, {"a": _nested(MAX_JSON_DEPTH - 1)},
                unique_key="k" * MAX_UNIQUE_KEY_BYTES, delay=99 * 365 * 86400)
    assert _count(conn) == 1


def test_a_task_registered_with_the_longest_name_can_be_enqueued(conn: Conn) -> None:
    # @app.task, schedules and SQL's pgqueue.enqueue take names of up to 255 characters: a name the
    # decorator accepts must not be refused by every enqueue afterwards.
    app = App(conn.info.dsn)
    longest = app.task(name="t" * 255)(lambda job: None)
    job_id = longest.enqueue(conn)
    assert _stored(conn, job_id)[0] == "t" * 255
    with pytest.raises(ConfigurationError, match="1-255 characters"):
        app.task(name="t" * 256)(lambda job: None)
