"""What each part of the claim SQL costs an idle worker's cold claim: variants interleaved job by job.

    python bench/cold_claim_ab.py --dsn postgresql://root@127.0.0.1:5432/postgres [--jobs 200] \
        [--gap-ms 50] [--skip 5] [--variants select1,minimal,no_gates,no_audit,claim]

One scratch database per variant (clones of the migrated template). A producer process enqueues
one job (``App.enqueue`` on an autocommit connection, which NOTIFYs) into each database in turn,
``--gap-ms`` apart, starting each round with the next variant so no variant always comes first.
This process holds one session per database as the worker's claim session does (prepared
statements, ``synchronous_commit = off``) that LISTENs, and on each notification runs its
database's variant on that same session. Printed per variant: the median and p90 from the
enqueue's commit to the claim's answer, and the median's difference to ``claim``'s.

Variants: ``claim`` is ``claim_jobs_any_queue`` as shipped; ``no_audit`` drops its job_events
insert, ``no_gates`` its gated-queue (paused or limited) and open-breaker checks; ``minimal`` is a
one-row UPDATE; ``select1`` a trivial statement with the same parameters (the round-trip floor).
"""

# ruff: noqa: T201, S603 - a command-line script: printing is its output; it runs its producer

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

import pgqueue
from pgqueue._bench.database import ScratchDatabases
from pgqueue._db.jobs import JOBS
from pgqueue._db.notifications import NOTIFY_CHANNEL
from pgqueue._db.server import SERVER

# A separate interpreter, not a thread: a producer thread would compete for this process's GIL
# and distort the very timings measured here.
PRODUCER = '''
import json, sys, time
import psycopg
from pgqueue import App
out, gap_ms, rounds, *dsns = sys.argv[1:]
app = App()
conns = [psycopg.connect(dsn, autocommit=True) for dsn in dsns]
commits = []
for r in range(int(rounds)):
    for k in range(len(dsns)):
        v = (r + k) % len(dsns)
        job_id = app.enqueue(conns[v], "t", {"i": r})
        commits.append((v, job_id, time.monotonic_ns()))
        time.sleep(float(gap_ms) / 1000)
with open(out, "w") as f:
    json.dump(commits, f)
'''

AUDIT_CTE: tuple[LiteralString, ...] = (
    "), audit AS (",
    "INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id)",
    "SELECT id, 'claimed', 'available', 'running', attempt, %(worker_id)s FROM claimed",
    ")",
)
GATES: tuple[LiteralString, ...] = (
    "AND NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = jobs.queue AND q.gated)",
    "AND jobs.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')",
)
MINIMAL: LiteralString = """
UPDATE pgqueue.jobs SET state = 'running', attempt = attempt + 1, worker_id = %(worker_id)s,
    lease_token = %(lease_token)s::uuid, started_at = now()
WHERE id = (SELECT id FROM pgqueue.jobs WHERE state = 'available' ORDER BY priority, run_at, id
            LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED)
RETURNING id, task, queue, args, attempt, max_attempts, enqueued_at, priority, tags, args_encrypted
"""
SELECT1: LiteralString = "SELECT %(limit)s::int, %(worker_id)s::text, %(lease_token)s::uuid"


def replace_lines(text: LiteralString, lines: tuple[LiteralString, ...], by: tuple[LiteralString, ...],
                  variant: str) -> LiteralString:
    """``text`` with the run of ``lines`` (compared stripped) replaced by ``by``; exits when the
    run is not there exactly once, so a changed claim never silently measures something else."""
    have = text.splitlines()
    stripped = [line.strip() for line in have]
    starts = [i for i in range(len(have)) if stripped[i : i + len(lines)] == list(lines)]
    if len(starts) != 1:
        raise SystemExit(f"{variant}: JOBS.claim_jobs_any_queue holds these lines {len(starts)} times, not once:\n"
                         + "\n".join(lines) + "\nupdate bench/cold_claim_ab.py to the claim's new text")
    return "\n".join([*have[: starts[0]], *by, *have[starts[0] + len(lines) :]])


def variant_sql() -> dict[str, LiteralString]:
    claim = JOBS.claim_jobs_any_queue
    return {
        "select1": SELECT1,
        "minimal": MINIMAL,
        "no_gates": replace_lines(claim, GATES, (), "no_gates"),
        "no_audit": replace_lines(claim, AUDIT_CTE, (")",), "no_audit"),
        "claim": claim,
    }


@contextmanager
def claim_session(dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    """A session like the worker's claim session (prepared, no flush wait) that also LISTENs."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        conn.execute(SERVER.skip_commit_flush_wait)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        yield conn


def consume(conns: list[psycopg.Connection[TupleRow]], queries: list[LiteralString], by_rank: list[bool],
            expected: int, producer: subprocess.Popen[bytes]) -> list[dict[int, int]]:
    """Per variant: job id (or the notification's rank) -> when its claim was answered."""
    answered: list[dict[int, int]] = [{} for _ in conns]
    notified = [0] * len(conns)
    idle_since = time.monotonic()
    while sum(notified) < expected:
        # notifies() holds the connection's lock while it runs: drained with list() before executing.
        woken = [(v, len(list(conn.notifies(timeout=0, stop_after=1)))) for v, conn in enumerate(conns)]
        for v, count in woken:
            for _ in range(count):
                rows = conns[v].execute(queries[v], {"limit": 10, "worker_id": "cold-claim-ab",
                                                     "lease_token": str(uuid.uuid4())}).fetchall()
                at = time.monotonic_ns()
                keys = [notified[v]] if by_rank[v] else [int(row[0]) for row in rows]
                answered[v].update(dict.fromkeys(keys, at))
                notified[v] += 1
        if any(count for _, count in woken):
            idle_since = time.monotonic()
            continue
        if producer.poll() not in (None, 0):
            raise SystemExit(f"the producer failed (exit status {producer.returncode})")
        if producer.returncode == 0 and time.monotonic() - idle_since > 2:
            break  # notifications lost: the jobs left unanswered are reported
        select.select([conn.fileno() for conn in conns], [], [], 0.5)
    return answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", required=True, help="a server where the role may create databases")
    parser.add_argument("--jobs", type=int, default=200, help="rounds: one job per variant each")
    parser.add_argument("--gap-ms", type=float, default=50.0)
    parser.add_argument("--skip", type=int, default=5, help="warm-up rounds left out of the statistics")
    parser.add_argument("--variants", default="select1,minimal,no_gates,no_audit,claim")
    args = parser.parse_args()
    known = variant_sql()
    names = args.variants.split(",")
    if unknown := [name for name in names if name not in known]:
        parser.error(f"unknown variants {unknown}: choose among {','.join(known)}")

    databases = ScratchDatabases(args.dsn)
    try:
        databases.create_template()
        with ExitStack() as stack:
            dsns = [stack.enter_context(databases.fresh()) for _ in names]
            conns = [stack.enter_context(claim_session(dsn)) for dsn in dsns]
            commits_file = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cold_claim_ab_"))) / "commits"
            # The producer imports the same pgqueue as this process, wherever it was run from.
            tree = str(Path(pgqueue.__file__).resolve().parents[1])
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")])))
            producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(commits_file), str(args.gap_ms),
                                         str(args.jobs), *dsns], env=env, start_new_session=True)
            # Its own session, out of reach of the terminal's Ctrl-C: stopped here, whatever happened.
            stack.callback(producer.wait)
            stack.callback(producer.terminate)
            # select1 claims nothing: its answers are matched to the jobs by rank, not by id.
            by_rank = [name == "select1" for name in names]
            answered = consume(conns, [known[name] for name in names], by_rank, args.jobs * len(names), producer)
            producer.wait()
            commits: list[tuple[int, int, int]] = json.loads(commits_file.read_text())
        report(names, by_rank, answered, commits, args)
    finally:
        databases.drop_all()


def report(names: list[str], by_rank: list[bool], answered: list[dict[int, int]],
           commits: list[tuple[int, int, int]], args: argparse.Namespace) -> None:
    print(f"{args.jobs} rounds ({args.skip} warm-up left out), one job every {args.gap_ms:g} ms, rotated order;"
          " from the enqueue's commit to the claim's answer:")
    medians: dict[str, float] = {}
    lines: list[tuple[str, float, float, int]] = []
    for v, name in enumerate(names):
        mine = [(job_id, at) for variant, job_id, at in commits if variant == v]
        keyed = [(rank if by_rank[v] else job_id, at) for rank, (job_id, at) in enumerate(mine)][args.skip :]
        latencies = sorted((answered[v][key] - at) / 1000 for key, at in keyed if key in answered[v])
        if not latencies:
            raise SystemExit(f"{name}: no claim answered after the warm-up")
        medians[name] = statistics.median(latencies)
        lines.append((name, medians[name], latencies[int(0.9 * (len(latencies) - 1))], len(keyed) - len(latencies)))
    for name, median, p90, missing in lines:
        versus = f"{median - medians['claim']:+6.0f} us vs claim" if "claim" in medians else ""
        unanswered = f"  ({missing} jobs unanswered)" if missing else ""
        print(f"  {name:9s} median {median:6.0f} us  p90 {p90:6.0f} us  {versus}{unanswered}")


if __name__ == "__main__":
    main()
