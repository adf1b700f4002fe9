"""Job rows and their 'enqueued' audit rows for ``COPY ... FROM STDIN``, in COPY's text format by hand.

``Copy.write_row`` adapts every value of every row on its own (about 7 µs a row for the nine
columns, a third of ``enqueue_many``'s client time at 50k jobs); the text format of a row is one
f-string. Only the escapes COPY's text format needs are applied: backslash, tab, newline and
carriage return in text values, ``\\N`` for NULL, bytea as ``\\x`` hex and tags as an array literal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgqueue._db.jobs import NewJob

NULL = "\\N"
#: Rows per ``Copy.write``: big enough to amortise the call, small enough to stream while the
#: caller validates the next jobs.
CHUNK_ROWS = 1000


def copy_text(value: str) -> str:
    """``value`` escaped for a text-format COPY field."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _tags_literal(tags: tuple[str, ...]) -> str:
    if not tags:
        return "{}"
    quoted = ('"' + tag.replace("\\", "\\\\").replace('"', '\\"') + '"' for tag in tags)
    return copy_text("{" + ",".join(quoted) + "}")


def _bytea(value: bytes) -> str:
    return "\\\\x" + value.hex()  # COPY unescapes \\ to \, and bytea reads \x as hex


class JobRowWriter:
    """Text lines of ``copy_jobs`` (and, with ``extra``, ``copy_workflow_jobs``), in chunks.

    Task and queue names repeat across a batch: their escaped form is remembered.
    """

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def _name(self, value: str) -> str:
        escaped = self._names.get(value)
        if escaped is None:
            escaped = self._names[value] = copy_text(value)
        return escaped

    def line(self, job_id: int, job: NewJob, extra: str = "") -> str:
        """One row: id, task, queue, priority, args, args_encrypted, max_attempts, tags, group_key
        (then ``extra``: the further columns, already formatted, each preceded by a tab)."""
        args = NULL if job.args is None else copy_text(job.args)
        sealed = NULL if job.args_encrypted is None else _bytea(job.args_encrypted)
        group = NULL if job.group_key is None else copy_text(job.group_key)
        return (f"{job_id}\t{self._name(job.task)}\t{self._name(job.queue)}\t{job.priority}\t{args}\t{sealed}\t"
                f"{job.max_attempts}\t{_tags_literal(job.tags)}\t{group}{extra}\n")

    def chunks(self, lines: Iterable[str]) -> Iterator[str]:
        """``lines`` joined CHUNK_ROWS at a time."""
        chunk: list[str] = []
        for text in lines:
            chunk.append(text)
            if len(chunk) >= CHUNK_ROWS:
                yield "".join(chunk)
                chunk = []
        if chunk:
            yield "".join(chunk)


def enqueued_event_chunks(ids: Sequence[int], actor: str | None) -> Iterator[str]:
    """Rows of ``copy_job_events`` (job_id, event, to_state, attempt, actor), CHUNK_ROWS at a time."""
    tail = f"\tenqueued\tavailable\t0\t{NULL if actor is None else copy_text(actor)}\n"
    for start in range(0, len(ids), CHUNK_ROWS):
        yield "".join(f"{job_id}{tail}" for job_id in ids[start:start + CHUNK_ROWS])


def workflow_extra(has_dependents: bool, workflow_id: str | None) -> str:
    """The two further columns of ``copy_workflow_jobs``: has_dependents, workflow_id."""
    return f"\t{'t' if has_dependents else 'f'}\t{NULL if workflow_id is None else copy_text(workflow_id)}"
