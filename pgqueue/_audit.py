"""The tamper-evident audit trail: seal ``pgqueue.job_events`` into a hash chain, verify it, prune it.

Why seals and not a per-row chain: every claim and ack writes event rows in batches from many
connections at once. A chain where each row hashes its predecessor would make every writer wait
for the previous one (a global lock on the hot path). Instead each row records the transaction
that wrote it (``xid``), and one process (the maintenance leader, or ``pgqueue audit verify``)
seals ranges of transactions that have all finished:

- seal ``n`` covers the rows with ``xid`` in ``[xid_from, xid_to)``, where ``xid_to`` was the oldest
  transaction still running when the seal was made, so no row can legitimately appear in that
  range later;
- ``digest_n = sha256(digest_{n-1} || sha256(sha256(row) for each row in id order))``.

Editing, deleting or inserting a sealed row changes its seal's digest; deleting a seal breaks the
chain. Retention deletes whole seals' rows, oldest first, and keeps their seal rows (``pruned_at``):
the database's triggers refuse any other delete, so pruned seals are always a prefix of the chain,
and :func:`verify` reports a seal pruned before the audit retention was up.

Rows are protected once sealed (a few seconds after they commit while a worker runs; a
transaction left open anywhere in the cluster holds sealing back, as it holds back vacuum).
Someone who can bypass the triggers (a superuser, or the tables' owner disabling them) can rewrite
both the trail and the seals and recompute the chain: record the head digest that
``pgqueue audit verify`` prints somewhere else to detect that too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pgqueue._db.audit import AuditStore, RangeDigest

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection

#: The ``prev_digest`` of the first seal.
GENESIS = hashlib.sha256(b"pgqueue audit chain v1").digest()

#: Rows per seal at most (about 32 bytes each in memory while digesting), so one seal is bounded work.
MAX_EVENTS_PER_SEAL = 100_000

#: Seals digested per verification statement.
VERIFY_BATCH = 200


def chain(prev_digest: bytes, range_digest: bytes) -> bytes:
    return hashlib.sha256(prev_digest + range_digest).digest()


@dataclass(frozen=True)
class SealReport:
    seals: int = 0
    events: int = 0


def seal_pending(conn: PsycopgConnection, *, max_seals: int | None = None,
                 max_events: int = MAX_EVENTS_PER_SEAL) -> SealReport:
    """Seal every finished transaction's events not sealed yet (on an autocommit connection).

    Safe to run from several processes at once: a seal number is written once, by whoever gets
    there first, and the others re-read the head and carry on from it.
    """
    store = AuditStore(conn)
    seals = events = 0
    while max_seals is None or seals < max_seals:
        head = store.head()
        xid_from = head.xid_to or 0
        xid_to = head.horizon
        if xid_to <= xid_from:
            break
        capped = store.seal_cap(xid_from, xid_to, max_events)
        if capped is not None:
            xid_to = capped
        (rng,) = store.range_digests([(xid_from, xid_to)])
        if rng.events == 0 and capped is not None:
            # The first transaction alone has more rows than the cap: it goes in one seal, whole.
            xid_to = store.next_xid_after(capped, head.horizon) or head.horizon
            (rng,) = store.range_digests([(xid_from, xid_to)])
        if rng.events == 0:
            break  # nothing new: the next seal starts where this one would have
        prev = head.digest or GENESIS
        if store.insert_seal((head.seal_no or 0) + 1, xid_from, xid_to, rng, prev, chain(prev, rng.digest)):
            seals += 1
            events += rng.events
    return SealReport(seals, events)


def can_seal(conn: PsycopgConnection) -> bool:
    """Whether this session may seal (``pgqueue_reader`` and standbys may not: they verify only
    what is sealed and report the rest as pending)."""
    return AuditStore(conn).may_seal()


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``ok`` is False when any problem was found."""

    seals: int = 0
    pruned_seals: int = 0
    events: int = 0
    pending_events: int = 0
    head_seal: int | None = None
    head_digest: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seals": self.seals, "pruned_seals": self.pruned_seals, "events": self.events,
                "pending_events": self.pending_events, "head_seal": self.head_seal,
                "head_digest": self.head_digest, "problems": list(self.problems)}


def verify(conn: PsycopgConnection, *, progress: Callable[[int, int], None] | None = None,
           expect_digests: Sequence[str] = (), max_problems: int = 20, min_retention: float = 0.0) -> VerifyReport:
    """Recompute every unpruned seal from the rows now in the table and check the chain's links.

    Reads only: a session that may not seal (see :func:`can_seal`) verifies the same way.
    ``expect_digests``: head digests recorded elsewhere by earlier verifications (hex); each must
    still be a seal of the chain, else the chain was rebuilt. ``min_retention``: the audit
    retention in seconds (``math.inf`` when audit rows are kept forever); a seal pruned when its
    newest row was younger was pruned early. Pruned seals must also be the oldest ones.
    ``progress(done, total)`` is called after each batch of seals.
    """
    store = AuditStore(conn)
    report = VerifyReport()
    total = store.count_seals()
    prev_no, prev_digest, prev_to = 0, GENESIS, 0
    kept: int | None = None  # the oldest seal seen that was not pruned

    def problem(text: str) -> None:
        if len(report.problems) < max_problems:
            report.problems.append(text)

    missing = {d.strip().lower() for d in expect_digests}
    after = 0
    while True:
        seals = store.list_seals(after, VERIFY_BATCH)
        if not seals:
            break
        digests = store.range_digests([(s["xid_from"], s["xid_to"]) for s in seals])
        for seal, now in zip(seals, digests, strict=True):
            _check_seal(seal, now, prev_no, prev_digest, prev_to, report, problem)
            if seal["pruned_at"] is None:
                kept = kept or seal["seal_no"]
            else:
                _check_pruned(seal, kept, min_retention, problem)
            prev_no, prev_digest, prev_to = seal["seal_no"], seal["digest"], seal["xid_to"]
            missing.discard(prev_digest.hex())
        after = seals[-1]["seal_no"]
        if progress is not None:
            progress(report.seals, total)
    for digest in sorted(missing):
        problem(f"the recorded digest {digest} is not in the chain: the chain was rebuilt")
    report.head_seal = prev_no or None
    report.head_digest = prev_digest.hex() if prev_no else None
    report.pending_events = store.count_pending_events(prev_to)
    return report


def _check_seal(seal: dict[str, Any], now: RangeDigest, prev_no: int, prev_digest: bytes, prev_to: int,
                report: VerifyReport, problem: Callable[[str], None]) -> None:
    no = seal["seal_no"]
    report.seals += 1
    where = f"seal {no} (events at {_when(seal)})"
    if no != prev_no + 1:
        problem(f"seals {prev_no + 1}..{no - 1} are missing: the chain was cut")
    if seal["xid_from"] != prev_to:
        problem(f"{where} does not start where seal {prev_no} ends: the chain was re-cut")
    if seal["prev_digest"] != prev_digest:
        problem(f"{where} does not link to seal {prev_no}: a seal was altered or removed")
    if seal["pruned_at"] is not None:
        report.pruned_seals += 1
        if now.events:
            problem(f"{where} was pruned but {now.events:,} rows are back in its range: rows were inserted")
        return
    report.events += now.events
    if chain(seal["prev_digest"], now.digest) != seal["digest"]:
        if now.events != seal["events"]:
            problem(f"{where}: {seal['events']:,} rows were sealed, {now.events:,} are there now: "
                    "rows were deleted or inserted")
        else:
            problem(f"{where}: a row was edited ({now.events:,} rows, digest differs)")
    elif (now.events, now.first_at, now.last_at) != (seal["events"], seal["first_at"], seal["last_at"]):
        # The rows match the digest, so the seal's own description of them is what is false:
        # retention judges a seal's age by its last_at.
        problem(f"{where} does not describe its rows ({now.events:,} rows at {_span(now.first_at, now.last_at)}): "
                "the seal was forged")


def _check_pruned(seal: dict[str, Any], kept: int | None, min_retention: float,
                  problem: Callable[[str], None]) -> None:
    where = f"seal {seal['seal_no']} (events at {_when(seal)})"
    if kept is not None:
        problem(f"{where} was pruned while seal {kept}, older, was kept: a window was cut out of the trail")
    age = (seal["pruned_at"] - seal["last_at"]).total_seconds()
    if math.isinf(min_retention):
        problem(f"{where} was pruned, but the audit retention is 'never'")
    elif age < min_retention:
        problem(f"{where} was pruned {_duration(age)} after its newest row, before the audit retention "
                f"({_duration(min_retention)}) was up")


def _when(seal: dict[str, Any]) -> str:
    return _span(seal["first_at"], seal["last_at"])


def _span(first: datetime | None, last: datetime | None) -> str:
    if first is None or last is None:
        return "no time"
    fmt = "%Y-%m-%d %H:%M:%S"
    return first.strftime(fmt) if first == last else f"{first.strftime(fmt)}..{last.strftime(fmt)}"


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def job_trail(conn: PsycopgConnection, job_id: int) -> tuple[list[dict[str, Any]], dict[int, bool]]:
    """One job's events in order (each with the ``seal_no`` covering it, or None while pending),
    and for each of those seals whether its rows still match it."""
    store = AuditStore(conn)
    events = store.list_job_events(job_id)
    seals = store.get_seals(sorted({e["seal_no"] for e in events if e["seal_no"] is not None}))
    digests = store.range_digests([(s["xid_from"], s["xid_to"]) for s in seals])
    intact = {s["seal_no"]: chain(s["prev_digest"], now.digest) == s["digest"]
              for s, now in zip(seals, digests, strict=True)}
    return events, intact


def prune_sealed(conn: PsycopgConnection, before: datetime, *, min_events: int | None = None,
                 max_seals: int = 1000) -> int:
    """Delete the events of the oldest seals whose newest row is older than ``before``.

    Whole seals only, oldest first, stopping at the first seal still within retention, so what
    remains is always a contiguous, verifiable tail of the chain. Rows not sealed yet are never
    pruned. With ``min_events``, stops once that many rows were deleted (a batch). Each seal's
    delete and its ``pruned_at`` mark commit together (a savepoint inside the caller's transaction).
    Returns the number of event rows deleted.
    """
    store = AuditStore(conn)
    deleted = 0
    for seal_no, xid_from, xid_to, expired_before in store.prunable_seals(max_seals):
        if expired_before >= before:
            break
        deleted += store.prune_seal(seal_no, xid_from, xid_to)
        if min_events is not None and deleted >= min_events:
            break
    return deleted


def count_prunable(conn: PsycopgConnection, before: datetime) -> int:
    """Event rows :func:`prune_sealed` would delete for ``before`` (a dry run)."""
    return AuditStore(conn).count_prunable_events(before)
