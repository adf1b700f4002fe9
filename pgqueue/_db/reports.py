"""The SQL reports (``queries/reports/*.sql``, the same files as ``sql/reports/`` for people): one
definition of each figure, run by ``pgqueue.admin.report``, the dashboard's charts, ``queues list``
and ``/metrics``.

Each file holds one block named ``report_<file name>``. Reports read their window and bucket from
session settings (``current_setting('pgqueue.report_window')``), so the files run unchanged in psql.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from pgqueue._db.cursors import cursor_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.queries import _parse
from pgqueue._db.server import ServerStore


class ReportQueries(NamedTuple):
    report_queue_lag: LiteralString
    report_throughput: LiteralString
    report_failure_rate: LiteralString
    report_run_times: LiteralString
    report_dead_letters: LiteralString


def _load_reports() -> ReportQueries:
    folder = resources.files("pgqueue._db").joinpath("queries", "reports")
    blocks: dict[str, str] = {}
    for name in ReportQueries._fields:
        filename = f"{name.removeprefix('report_')}.sql"
        parsed = _parse(folder.joinpath(filename).read_text(encoding="utf-8"))
        if list(parsed) != [name]:
            raise RuntimeError(f"reports/{filename}: expected one block named {name}, found {sorted(parsed)}")
        blocks.update(parsed)
    return ReportQueries(**blocks)


REPORTS = _load_reports()

#: Session settings the reports read (current_setting) for their window and bucket.
REPORT_SETTINGS = ("pgqueue.report_window", "pgqueue.report_bucket")


def run_report(conn: psycopg.Connection[Any], query: LiteralString,
               settings: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Run one of :data:`REPORTS` with its optional session settings (window, bucket).

    The settings are transaction-local and reset afterwards, so the caller's transaction is left
    as it was; on an autocommit connection the report runs in a transaction of its own.
    """
    if settings:
        unknown = set(settings) - set(REPORT_SETTINGS)
        if unknown:
            raise ValueError(f"unknown report settings {sorted(unknown)}")
    with translate_errors():
        if settings and conn.autocommit:
            with conn.transaction():
                return _run(conn, query, settings)
        return _run(conn, query, settings)


def _run(conn: psycopg.Connection[Any], query: LiteralString, settings: Mapping[str, str] | None) -> list[
        dict[str, Any]]:
    server = ServerStore(conn)
    if settings:
        server.set_transaction_settings(dict(settings))
    with cursor_on(conn, row_factory=dict_row) as cur:
        rows = cur.execute(query).fetchall()
    if settings:
        server.set_transaction_settings(dict.fromkeys(settings, ""))
    return rows
