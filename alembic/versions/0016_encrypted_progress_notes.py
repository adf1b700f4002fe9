"""The progress note of an encrypted job is stored only as ciphertext: ``jobs.progress_note_encrypted``.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05

``job.set_progress(50, note=...)`` stored the note in plaintext in ``progress_note`` even for a
job whose args, result and error are encrypted, and notes routinely quote the args ("letter for
Jane Doe"). A worker now seals such a job's note like its result (AES-256-GCM, the same key ring
and ciphertext format, associated data binding it to the column and the task) into this nullable
``bytea`` column, and leaves ``progress_note`` NULL. Nullable with no default: adding it rewrites
nothing. A job inserted with a note ciphertext is not fresh: the ``jobs_insert_fresh`` trigger's
WHEN clause now lists it beside ``progress_note``.

The downgrade drops the column, and with it the notes of encrypted jobs (never decrypted into the
plaintext column): a note is a display of a running job's progress, not a payload, so unlike the
args and results of migration 0003 nothing that a job needs is lost.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from textwrap import dedent

from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOTE_CHECK = "NEW.progress_note IS NOT NULL"


def _fresh_0011() -> str:
    """The 0011 jobs_insert_fresh trigger, as created there."""
    location = Path(__file__).with_name("0011_cheaper_job_checks.py")
    spec = importlib.util.spec_from_file_location("pgqueue_migration_0011", location)
    assert spec is not None and spec.loader is not None  # noqa: S101 -- the file ships beside this one
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.FRESH_AFTER)


def _fresh_0016() -> str:
    old = _fresh_0011()
    assert old.count(_NOTE_CHECK) == 1, "the 0011 trigger text changed: update this migration"  # noqa: S101
    return old.replace(_NOTE_CHECK, f"{_NOTE_CHECK} OR NEW.progress_note_encrypted IS NOT NULL", 1)


def upgrade() -> None:
    op.execute("ALTER TABLE pgqueue.jobs ADD COLUMN progress_note_encrypted bytea")
    op.execute("DROP TRIGGER jobs_insert_fresh ON pgqueue.jobs")
    op.execute(dedent(_fresh_0016()).strip())


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_insert_fresh ON pgqueue.jobs")
    op.execute(dedent(_fresh_0011()).strip())
    op.execute("ALTER TABLE pgqueue.jobs DROP COLUMN progress_note_encrypted")
