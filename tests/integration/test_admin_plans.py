"""Performance guards: on an analyzed table of 1M jobs, every list_jobs filter and every report reads
a bounded number of rows through an index: no sequential scan of pgqueue.jobs, no sort of it.

The table is generated once for the module with one INSERT ... SELECT generate_series: 90 days of
history, 2 % failed, 0.5 % cancelled, 5,000 live jobs, four busy queues and a rare one, ten tasks
and a rare one, tags on a fifth of the jobs and a rare tag.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import admin
from pgqueue._db.jobs import JOBS, JobStore
from pgqueue._db.reports import REPORTS
from tests.helpers import scratch_database

Conn = psycopg.Connection[TupleRow]
ROWS = 1_000_000
SPACING = 90 * 86400 / ROWS  # seconds between two jobs' enqueue times

GENERATE = """
INSERT INTO pgqueue.jobs (task, queue, state, priority, args, attempt, max_attempts, run_at, enqueued_at, started_at,
                          finished_at, tags, result, last_error)
SELECT
  CASE WHEN g %% 1000 = 7 THEN 'rare-task' ELSE 'task-' || (g %% 10) END,
  CASE WHEN g %% 1000 = 3 THEN 'rare' ELSE (ARRAY['emails', 'reports', 'webhooks', 'default'])[1 + g %% 4] END,
  CASE WHEN g > %(rows)s - 5000 THEN (ARRAY['available', 'scheduled', 'running'])[1 + g %% 3]
       WHEN g %% 50 = 1 THEN 'failed' WHEN g %% 200 = 2 THEN 'cancelled' ELSE 'completed' END,
  100, jsonb_build_object('n', g), 1, 5,
  now() - make_interval(secs => (%(rows)s - g) * %(spacing)s),
  now() - make_interval(secs => (%(rows)s - g) * %(spacing)s),
  now() - make_interval(secs => (%(rows)s - g) * %(spacing)s - 0.5),
  CASE WHEN g <= %(rows)s - 5000 THEN now() - make_interval(secs => (%(rows)s - g) * %(spacing)s - 1) END,
  CASE WHEN g %% 5 = 0 THEN ARRAY['facility:' || (g %% 7)] WHEN g %% 10000 = 9 THEN ARRAY['rare-tag']
       ELSE '{}' END,
  CASE WHEN g <= %(rows)s - 5000 THEN '{"ok": true}'::jsonb END,
  CASE WHEN g %% 50 = 1 THEN '{"type": "Boom", "message": "bad"}'::jsonb END
FROM generate_series(1, %(rows)s) AS g
"""

# Rows a page may read: the scan budget, plus what index lookups of the page's own rows add.
PAGE_BOUND = admin.SCAN_BUDGET + 5_000


@pytest.fixture(scope="module")
def big(pg_server_dsn: str, template_db: str) -> Iterator[Conn]:
    with scratch_database(pg_server_dsn, template_db) as database_dsn, \
            psycopg.connect(database_dsn, autocommit=True) as conn:
        conn.execute(GENERATE, {"rows": ROWS, "spacing": SPACING})
        conn.execute("VACUUM ANALYZE pgqueue.jobs")
        yield conn


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _explain(conn: Conn, query: str, params: Any = None) -> list[dict[str, Any]]:
    row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", params, prepare=False).fetchone()
    assert row is not None
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return list(_nodes(document[0]["Plan"]))


def _rows_read(nodes: list[dict[str, Any]]) -> int:
    """Rows that scans of pgqueue.jobs produced or threw away (over every loop)."""
    total = 0
    for node in nodes:
        if node.get("Relation Name") == "jobs":
            produced = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0) + node.get(
                "Rows Removed by Index Recheck", 0)
            total += produced * node.get("Actual Loops", 1)
    return total


def _assert_bounded(nodes: list[dict[str, Any]], bound: int) -> None:
    scans = [n["Node Type"] for n in nodes if n.get("Relation Name") == "jobs"]
    assert scans, "the plan reads pgqueue.jobs"
    assert "Seq Scan" not in scans, f"a sequential scan of pgqueue.jobs: {scans}"
    assert all("Index" in kind or kind == "Bitmap Heap Scan" for kind in scans), scans
    for node in nodes:
        if node["Node Type"] in ("Sort", "Incremental Sort"):
            assert node.get("Actual Rows", 0) <= bound, f"a sort of {node['Actual Rows']} rows"
    assert _rows_read(nodes) <= bound, f"read {_rows_read(nodes)} rows of pgqueue.jobs (bound {bound})"


FILTERS = [
    {}, {"state": "failed"}, {"state": "cancelled"}, {"state": "available"}, {"state": "scheduled"},
    {"state": "running"}, {"state": "completed"}, {"queue": "rare"}, {"queue": "emails"}, {"task": "rare-task"},
    {"tag": "rare-tag"}, {"queue": "emails", "state": "failed"}, {"task": "rare-task", "state": "completed"},
    {"since": "1 hour"}, {"since": "1 minute"}, {"queue": "rare", "tag": "facility:3", "since": "30 days"},
]


@pytest.mark.slow
@pytest.mark.parametrize("filters", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_every_list_jobs_filter_reads_a_bounded_range_of_an_index_on_1m_jobs(
        big: Conn, filters: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}
    real = JobStore.list_jobs_page

    def spy(store: JobStore, **params: Any) -> Any:
        captured.update(query=JOBS.list_jobs_page, params=params)
        return real(store, **params)

    monkeypatch.setattr(JobStore, "list_jobs_page", spy)
    arguments = dict(filters)
    if "since" in arguments:
        amount, unit = arguments["since"].split()
        arguments["since"] = datetime.now(UTC) - timedelta(**{unit.rstrip("s") + "s": int(amount)})

    first = admin.list_jobs(big, **arguments)
    nodes = _explain(big, captured["query"], captured["params"])
    _assert_bounded(nodes, PAGE_BOUND)
    if first.next_cursor:  # and the next page too, from the middle of the table
        admin.list_jobs(big, **arguments, cursor=first.next_cursor)
        _assert_bounded(_explain(big, captured["query"], captured["params"]), PAGE_BOUND)


# Each report reads its window (24 h of 90 days: ~11k jobs; 7 days: ~78k) or the live and dead sets.
REPORT_BOUNDS = {"throughput": 20_000, "run_times": 20_000, "failure_rate": 100_000, "queue_lag": 40_000,
                 "dead_letters": 30_000}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REPORT_BOUNDS))
def test_every_report_reads_only_its_window_or_set_on_1m_jobs(big: Conn, name: str) -> None:
    rows = admin.report(big, name)  # type: ignore[arg-type]
    nodes = _explain(big, getattr(REPORTS, f"report_{name}"))

    assert rows
    _assert_bounded(nodes, REPORT_BOUNDS[name])
