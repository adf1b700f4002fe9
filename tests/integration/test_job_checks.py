"""The CHECK constraints of pgqueue.jobs accept and refuse exactly what their rules say.

Migration 0011 rewrote them in forms the server evaluates for less (array literals, typed
constants, no bounded regex repetition); these rows pin the rules at their edges, for INSERT and
UPDATE, so a rewrite that changes what passes fails here.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

Conn = psycopg.Connection[TupleRow]

ACCEPTED: list[tuple[str, Any]] = [
    ("queue", "a" * 63),
    ("queue", "0-9_z"),
    ("queue", "-"),
    ("state", "waiting"),
    ("state", "cancelled"),
    ("progress", 0.0),
    ("progress", 100.0),
    ("progress", None),
    ("attempt", 0),
    ("max_attempts", 1),
    ("on_dependency_failure", "run"),
    ("on_dependency_failure", "cancel"),
    ("on_dependency_failure", None),
]

REFUSED: list[tuple[str, Any, str]] = [
    ("queue", "a" * 64, "jobs_queue_check"),
    ("queue", "", "jobs_queue_check"),
    ("queue", "Emails", "jobs_queue_check"),
    ("queue", "a b", "jobs_queue_check"),
    ("queue", "abc\n", "jobs_queue_check"),
    ("queue", "\u00e9t\u00e9", "jobs_queue_check"),
    ("queue", "a.b", "jobs_queue_check"),
    ("state", "done", "jobs_state_check"),
    ("state", "Available", "jobs_state_check"),
    ("progress", -0.5, "jobs_progress_check"),
    ("progress", 100.5, "jobs_progress_check"),
    ("progress", float("nan"), "jobs_progress_check"),
    ("attempt", -1, "jobs_attempt_check"),
    ("max_attempts", 0, "jobs_attempt_check"),
    ("pending_dependencies", -1, "jobs_dependencies_check"),
    ("on_dependency_failure", "ignore", "jobs_dependencies_check"),
]


def _insert(conn: Conn, column: str, value: Any) -> None:
    # As the table's owner, so the fresh-insert trigger lets any state through: only the checks decide.
    conn.execute(sql.SQL("INSERT INTO pgqueue.jobs (task, {}) VALUES ('t', %s)").format(sql.Identifier(column)),
                 [value])


@pytest.mark.parametrize(("column", "value"), ACCEPTED)
def test_a_value_within_the_rules_is_written_by_insert_and_update(conn: Conn, column: str, value: Any) -> None:
    _insert(conn, column, value)
    conn.execute("INSERT INTO pgqueue.jobs (task) VALUES ('u')")
    conn.execute(sql.SQL("UPDATE pgqueue.jobs SET {} = %s WHERE task = 'u'").format(sql.Identifier(column)), [value])
    row = conn.execute(sql.SQL("SELECT count(*) FROM pgqueue.jobs WHERE {} IS NOT DISTINCT FROM %s").format(
        sql.Identifier(column)), [value]).fetchone()
    assert row == (2,)


@pytest.mark.parametrize(("column", "value", "constraint"), REFUSED)
def test_a_value_outside_the_rules_is_refused_by_its_check(conn: Conn, column: str, value: Any,
                                                           constraint: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        _insert(conn, column, value)
    assert refused.value.diag.constraint_name == constraint
    conn.rollback()
    conn.execute("INSERT INTO pgqueue.jobs (task) VALUES ('u')")
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        conn.execute(sql.SQL("UPDATE pgqueue.jobs SET {} = %s").format(sql.Identifier(column)), [value])
    assert refused.value.diag.constraint_name == constraint
