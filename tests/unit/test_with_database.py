"""with_database: the DSN of another database on the same server, for the bench, demo and soak."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgqueue._db.databases import with_database


@pytest.mark.parametrize(("dsn", "kept"), [
    ("postgresql://root:pw@db.example:6432/app", {"host": "db.example", "port": "6432", "user": "root",
                                                   "password": "pw"}),
    # A dbname in the query overrides the path in libpq: kept, the scratch database would be the app's own.
    ("postgresql://root@db.example/app?dbname=app&sslmode=require", {"host": "db.example", "sslmode": "require"}),
    # No host: a socket directory in the query, and the URL keeps its "//".
    ("postgresql:///app?host=/var/run/postgresql&user=root", {"host": "/var/run/postgresql", "user": "root"}),
    ("host=db.example port=6432 user=root dbname=app sslmode=require",
     {"host": "db.example", "port": "6432", "user": "root", "sslmode": "require"}),
])
def test_it_points_the_same_server_and_options_at_another_database(dsn: str, kept: dict[str, str]) -> None:
    params = conninfo_to_dict(with_database(dsn, "pgqueue_bench_1a2b"))

    assert params["dbname"] == "pgqueue_bench_1a2b"
    assert {key: params.get(key) for key in kept} == kept
