"""A worker's slots per queue (``pgqueue worker --queue critical=20 --queue bulk=2``).

No database here: the CLI checks ``--queue`` entries with :func:`build_pools` before it starts anything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from pgqueue._payload import check_queue_name
from pgqueue.jobs import Job


@dataclass
class Pool:
    """Slots of one worker for some queues: ``--queue critical=20`` is a pool of its own, the bare
    ``--queue`` names share one of ``--concurrency`` slots (``queues`` None: every queue)."""

    queues: list[str] | None
    capacity: int
    #: Ids this pool started; those no longer running are dropped before counting.
    claimed: set[int] = field(default_factory=set)
    #: Jobs claimed ahead of a free slot (see :mod:`pgqueue._worker.prefetch`), oldest first:
    #: claimed in the database (``running`` under this worker's lease) but not started yet.
    buffer: deque[Job] = field(default_factory=deque)
    #: time.monotonic() of this pool's last job start (0: none yet).
    last_start: float = 0.0
    #: The claimer's count of wake-ups (``Flow.wakeup.times``) when this pool's claims last came
    #: back short (the database had no more of its jobs); None: they did not, or it never claimed.
    drained_at: int | None = None

    def free(self, running: Collection[int]) -> int:
        self.claimed.intersection_update(running)
        return self.capacity - len(self.claimed)

    def buffer_jobs(self, jobs: Sequence[Job]) -> None:
        """Add claimed jobs to the buffer, in priority order: a job claimed now that outranks
        buffered ones (a lone urgent job during a backlog) starts before them, not behind them.
        Within a priority, claim order is kept (the sort is stable, older claims first)."""
        if not jobs:
            return
        if self.buffer and min(job.priority for job in jobs) < self.buffer[-1].priority:
            merged = sorted([*self.buffer, *jobs], key=_priority)
            self.buffer.clear()
            self.buffer.extend(merged)
        else:
            self.buffer.extend(jobs)


def _priority(job: Job) -> int:
    return job.priority


def build_pools(queues: Sequence[str] | Mapping[str, int | None] | None, concurrency: int) -> list[Pool]:
    """The worker's slots: ``name=N`` (or a mapping's number) gives a queue N slots of its own; bare
    names share ``concurrency`` slots; no queues at all: every queue, ``concurrency`` slots.

    Raises:
        ValueError: a malformed entry, a slot count below 1, a queue given twice, or a single string
            instead of a list of them.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency {concurrency} must be >= 1")
    if isinstance(queues, str):
        # A str is a sequence of str: "emails" would serve the queues 'e', 'm', 'a', 'i', 'l', 's'.
        raise ValueError(f"queues must be a list of queue names, not a single string: write [{queues!r}]")
    if not queues:
        return [Pool(None, concurrency)]
    entries: list[tuple[str, int | None]] = []
    if isinstance(queues, Mapping):
        entries = list(queues.items())
    else:
        for entry in queues:
            queue, sep, count = entry.partition("=")
            if not sep:
                entries.append((queue.strip(), None))
                continue
            try:
                entries.append((queue.strip(), int(count)))
            except ValueError:
                raise ValueError(f"queue {entry!r} must be NAME or NAME=SLOTS (SLOTS a whole number >= 1)") from None
    shared: list[str] = []
    pools: list[Pool] = []
    seen: set[str] = set()
    for name, slots in entries:
        check_queue_name(name)
        # A mapping's values come unchecked from the caller.
        slots = slots if slots is None else _whole(name, slots)
        if name in seen:
            raise ValueError(f"queue {name!r} is given twice")
        seen.add(name)
        if slots is None:
            shared.append(name)
        else:
            pools.append(Pool([name], slots))
    if shared:
        pools.append(Pool(sorted(shared), concurrency))
    return pools


def _whole(name: str, slots: object) -> int:
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"queue {name!r}: slots {slots!r} must be a whole number >= 1")
    return slots
