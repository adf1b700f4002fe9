"""Tasks declared ``encrypt=True`` are known to the database: ``pgqueue enqueue`` encrypts them, SQL enqueue refuses them.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05

Only ``App.enqueue`` knew a task's ``encrypt=True``: ``pgqueue enqueue TASK`` without
``--encrypt`` (it loads no application) and ``SELECT pgqueue.enqueue('task', ...)`` stored that
task's args in plaintext. ``pgqueue.encrypted_tasks`` now lists the tasks the code of a started
worker declares ``encrypt=True`` (every worker writes it at start, as it does ``task_limits``):
``pgqueue enqueue`` encrypts their args (and fails without keys), and ``pgqueue.enqueue()``, which
cannot encrypt, refuses them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from textwrap import dedent

from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENCRYPTED_TASKS = """
    CREATE TABLE pgqueue.encrypted_tasks (
        task        text PRIMARY KEY,
        declared_at timestamptz NOT NULL DEFAULT now()
    )"""

COMMENT = ("tasks the code of a started worker declares encrypt=True: "
           "pgqueue enqueue encrypts them, SQL enqueue refuses them")

_TASK_CHECK = """
    IF enqueue.task IS NULL OR enqueue.task = '' OR length(enqueue.task) > 255 THEN
        RAISE EXCEPTION 'pgqueue.enqueue: task name % must be 1-255 characters', quote_nullable(enqueue.task)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;"""

# Right after the task name's check: the args of such a task must not be stored in plaintext.
ENCRYPTED_CHECK = """
    -- Migration 0015: a task whose workers declare encrypt=True is stored only as ciphertext.
    IF EXISTS (SELECT 1 FROM pgqueue.encrypted_tasks WHERE encrypted_tasks.task = enqueue.task) THEN
        RAISE EXCEPTION 'pgqueue.enqueue: task % is declared encrypt=True, and SQL enqueue cannot encrypt: '
                        'enqueue it from Python or with pgqueue enqueue', quote_literal(enqueue.task)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;"""


def _enqueue_0014() -> str:
    """The 0014 pgqueue.enqueue() text, as CREATE OR REPLACE (grants and comment are kept)."""
    location = Path(__file__).with_name("0014_enqueue_run_at_bounds.py")
    spec = importlib.util.spec_from_file_location("pgqueue_migration_0014", location)
    assert spec is not None and spec.loader is not None  # noqa: S101 -- the file ships beside this one
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module._enqueue_0014())


def _enqueue_0015() -> str:
    old = _enqueue_0014()
    assert old.count(_TASK_CHECK) == 1, "the 0014 function text changed: update this migration"  # noqa: S101
    return old.replace(_TASK_CHECK, _TASK_CHECK + ENCRYPTED_CHECK, 1)


def upgrade() -> None:
    op.execute(dedent(ENCRYPTED_TASKS).strip())
    op.execute(f"COMMENT ON TABLE pgqueue.encrypted_tasks IS '{COMMENT}'")
    op.execute(dedent(_enqueue_0015()).strip())


def downgrade() -> None:
    op.execute(dedent(_enqueue_0014()).strip())
    op.execute("DROP TABLE pgqueue.encrypted_tasks")
