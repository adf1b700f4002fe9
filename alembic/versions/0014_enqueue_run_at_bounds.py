"""pgqueue.enqueue() refuses a run_at outside App.enqueue's bounds, infinities included.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05

The function took any timestamptz as ``run_at``. ``'-infinity'`` made an available job whose
age cannot be computed: ``pgqueue.queue_stats``, the queue_lag report, ``pgqueue stats`` and
``pgqueue health`` all failed with "cannot subtract infinite timestamps" until the row was
deleted. ``'infinity'`` and dates after year 9999 or BC made rows no program can read back. The
function now applies App.enqueue's rule: from 1970-01-01 to 100 years (36,500 days) from now.
``on_dependency_failure`` is checked for every job, as App.enqueue does, not only for one with
``depends_on`` (``'x'`` was accepted and ignored).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from textwrap import dedent

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# pgqueue.app.EARLIEST_RUN_AT and MAX_DELAY_SECONDS.
RUN_AT_CHECK = """
    -- App.enqueue's bounds (migration 0014): an infinite run_at broke every report on queue ages.
    IF job_run_at < '1970-01-01 00:00:00+00' OR job_run_at > now() + interval '36500 days' THEN
        RAISE EXCEPTION 'pgqueue.enqueue: run_at % must be between 1970-01-01 and 100 years from now', job_run_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF job_policy NOT IN ('cancel', 'run') THEN
        RAISE EXCEPTION 'pgqueue.enqueue: on_dependency_failure % must be cancel or run', quote_literal(job_policy)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    job_state := CASE WHEN job_run_at > now() THEN 'scheduled' ELSE 'available' END;"""

# Checked above for every job now, as App.enqueue does, not only for one with dependencies.
_POLICY_IN_DEPENDENCIES = """
        IF job_policy NOT IN ('cancel', 'run') THEN
            RAISE EXCEPTION 'pgqueue.enqueue: on_dependency_failure % must be cancel or run', quote_literal(job_policy)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;"""

_STATE_LINE = """

    job_state := CASE WHEN job_run_at > now() THEN 'scheduled' ELSE 'available' END;"""


def _enqueue_0010() -> str:
    """The 0010 pgqueue.enqueue() text, as CREATE OR REPLACE (grants and comment are kept)."""
    location = Path(__file__).with_name("0010_workflows.py")
    spec = importlib.util.spec_from_file_location("pgqueue_migration_0010", location)
    assert spec is not None and spec.loader is not None  # noqa: S101 -- the file ships beside this one
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = str(module._enqueue_0010(module._enqueue_0009()))
    return text.replace("CREATE FUNCTION pgqueue.enqueue(", "CREATE OR REPLACE FUNCTION pgqueue.enqueue(", 1)


def _enqueue_0014() -> str:
    old = _enqueue_0010()
    assert old.count(_STATE_LINE) == 1, "the 0010 function text changed: update this migration"  # noqa: S101
    assert old.count(_POLICY_IN_DEPENDENCIES) == 1, "the 0010 function text changed"  # noqa: S101
    return old.replace(_STATE_LINE, RUN_AT_CHECK, 1).replace(_POLICY_IN_DEPENDENCIES, "", 1)


def upgrade() -> None:
    op.execute(dedent(_enqueue_0014()).strip())


def downgrade() -> None:
    op.execute(dedent(_enqueue_0010()).strip())
