"""Migrations: alembic head is sql/schema.sql, downgrade removes it, deploys may race, the CLI behaves."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgqueue import _migrate
from pgqueue.errors import DatabaseUnavailable
from tests.helpers import REPO_ROOT, psql, scratch_database, wait_until

HEAD = "0016"
UNREACHABLE = "postgresql://nobody:s3cret-pw@127.0.0.1:1/x"

# What "the same catalog" means: every object in schema pgqueue, rendered by PostgreSQL itself.
CATALOG_QUERIES: dict[str, str] = {
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, c.reloptions::text
        FROM pg_class c WHERE c.relnamespace = 'pgqueue'::regnamespace ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position,
               format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
               a.attidentity, a.attgenerated, a.attcollation::regcollation::text
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'pgqueue'::regnamespace AND c.relkind IN ('r', 'v', 'p', 'm')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 3""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'pgqueue' ORDER BY 1, 2",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'pgqueue'::regnamespace ORDER BY 1, 2""",
    "views": "SELECT viewname, pg_get_viewdef(format('pgqueue.%I', viewname)::regclass) "
             "FROM pg_views WHERE schemaname = 'pgqueue' ORDER BY 1",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, min_value, max_value, increment_by, cycle
        FROM pg_sequences WHERE schemaname = 'pgqueue' ORDER BY 1""",
    "functions": """
        SELECT proname, pg_get_function_identity_arguments(oid), prokind, md5(prosrc)
        FROM pg_proc WHERE pronamespace = 'pgqueue'::regnamespace ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'pgqueue'::regnamespace AND NOT t.tgisinternal ORDER BY 1, 2""",
    "types": """
        SELECT typname, typtype FROM pg_type
        WHERE typnamespace = 'pgqueue'::regnamespace AND typtype IN ('e', 'd', 'r', 'c')
          AND (typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = typrelid) = 'c')
        ORDER BY 1""",
    "comments": """
        SELECT c.relname, d.objsubid, d.description
        FROM pg_description d JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
        WHERE c.relnamespace = 'pgqueue'::regnamespace ORDER BY 1, 2""",
}


def catalog(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(query).fetchall() for name, query in CATALOG_QUERIES.items()}


def schema_exists(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'pgqueue'").fetchone() is not None


def version_rows(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('pgqueue_alembic_version')").fetchone() == (None,):
            return []
        return [row[0] for row in conn.execute("SELECT version_num FROM pgqueue_alembic_version")]


PGQUEUE = [sys.executable, "-c", "from pgqueue.cli import main; main()"]


def pgqueue_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PGQUEUE, *args], capture_output=True, text=True, timeout=60, check=False)


def alembic_cli(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The alembic command line, run from the checkout root as the contract's §6 describes."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )


def test_alembic_head_builds_the_same_catalog_as_schema_sql(pg_server_dsn: str, empty_dsn: str) -> None:
    _migrate.upgrade(empty_dsn)
    with scratch_database(pg_server_dsn, "template0") as plain_dsn:
        with psycopg.connect(plain_dsn) as conn:
            conn.execute((REPO_ROOT / "sql" / "schema.sql").read_text())
        from_sql = catalog(plain_dsn)
    from_alembic = catalog(empty_dsn)

    assert {row[0] for row in from_sql["relations"]} >= {"jobs", "job_events", "queues", "queue_stats"}
    for kind in CATALOG_QUERIES:
        assert from_alembic[kind] == from_sql[kind], f"{kind} differ between alembic head and sql/schema.sql"


def test_alembic_command_line_upgrades_and_downgrade_base_removes_everything(empty_dsn: str) -> None:
    upgraded = alembic_cli(["upgrade", "head"], {"PGQUEUE_DSN": empty_dsn})
    assert upgraded.returncode == 0, upgraded.stderr
    assert schema_exists(empty_dsn)
    assert version_rows(empty_dsn) == [HEAD]

    downgraded = alembic_cli(["downgrade", "base"], {"PGQUEUE_DSN": empty_dsn})

    assert downgraded.returncode == 0, downgraded.stderr
    assert not schema_exists(empty_dsn)
    assert version_rows(empty_dsn) == []


@pytest.mark.parametrize("source", ["x-argument", "PGQUEUE_DSN", "DATABASE_URL"])
def test_alembic_command_line_takes_the_dsn_from_x_then_pgqueue_dsn_then_database_url(
    empty_dsn: str, source: str
) -> None:
    sqlalchemy_form = "postgresql+psycopg://" + empty_dsn.split("://", 1)[1] if "://" in empty_dsn else empty_dsn
    decoy = {"PGQUEUE_DSN": UNREACHABLE, "DATABASE_URL": UNREACHABLE}
    if source == "x-argument":
        result = alembic_cli(["-x", f"dsn={sqlalchemy_form}", "upgrade", "head"], decoy)
    elif source == "PGQUEUE_DSN":
        result = alembic_cli(["upgrade", "head"], {**decoy, "PGQUEUE_DSN": sqlalchemy_form})
    else:
        result = alembic_cli(["upgrade", "head"], {"PGQUEUE_DSN": "", "DATABASE_URL": sqlalchemy_form})

    assert result.returncode == 0, result.stderr
    assert version_rows(empty_dsn) == [HEAD]


def test_alembic_command_line_without_a_dsn_fails_with_one_clear_line() -> None:
    result = alembic_cli(["upgrade", "head"], {"PGQUEUE_DSN": "", "DATABASE_URL": ""})

    assert result.returncode != 0
    assert "FAILED: no database" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_downgrade_base_then_upgrade_round_trips(dsn: str) -> None:
    before = catalog(dsn)

    _migrate.downgrade(dsn, "base")
    assert not schema_exists(dsn)
    assert version_rows(dsn) == []
    _migrate.upgrade(dsn)

    assert catalog(dsn) == before


def test_the_rate_ledger_keeps_its_window_counts_through_0012_and_back(dsn: str) -> None:
    # 0012 turned one row per start into one row per claim with a count: a window's starts are
    # sum(starts) on both sides of the migration, and its downgrade expands the counts into rows.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pgqueue.rate_starts (scope, at, starts) VALUES ('queue:sms', now(), 3),"
                     " ('queue:sms', now() - interval '1 second', 2)")
        _migrate.downgrade(dsn, "0011")
        assert conn.execute("SELECT count(*) FROM pgqueue.rate_starts WHERE scope = 'queue:sms'").fetchone() == (5,)
        conn.execute("INSERT INTO pgqueue.rate_starts (scope, at) VALUES ('task:send', now())")
        _migrate.upgrade(dsn)
        rows = conn.execute("SELECT scope, sum(starts), count(*) FROM pgqueue.rate_starts"
                            " GROUP BY scope ORDER BY scope").fetchall()
    assert rows == [("queue:sms", 5, 5), ("task:send", 1, 1)]
    assert version_rows(dsn) == [HEAD]


def test_upgrade_twice_is_a_no_op(dsn: str) -> None:
    before = catalog(dsn)

    _migrate.upgrade(dsn)

    assert catalog(dsn) == before
    assert version_rows(dsn) == [HEAD]
    assert _migrate.check(dsn) == []


def test_check_and_current_report_pending_revisions(empty_dsn: str) -> None:
    assert _migrate.current(empty_dsn) is None
    assert _migrate.check(empty_dsn) == [
        "0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010", "0011", "0012", "0013", "0014",
        "0015", HEAD]

    _migrate.upgrade(empty_dsn)

    assert _migrate.current(empty_dsn) == HEAD
    assert _migrate.check(empty_dsn) == []


def test_version_table_never_touches_the_applications_alembic_version(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('app_rev_1')")

    _migrate.upgrade(empty_dsn)
    _migrate.downgrade(empty_dsn, "base")

    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("app_rev_1",)]


def test_offline_sql_is_the_upgrade_ddl_in_one_locked_transaction() -> None:
    script = _migrate.sql(None)

    assert script.lstrip().startswith("BEGIN;")
    assert script.index("pg_advisory_xact_lock") < script.index("CREATE SCHEMA IF NOT EXISTS pgqueue")
    assert "CREATE TABLE pgqueue.jobs" in script
    assert "INSERT INTO pgqueue_alembic_version" in script
    assert script.rstrip().endswith("COMMIT;")


def test_offline_sql_run_by_psql_builds_the_same_schema_as_upgrade(empty_dsn: str, dsn: str) -> None:
    # What a DBA does with `pgqueue migrate --sql`: pipe it into psql. Function bodies with RAISE
    # format strings ('%') must come out as written, not doubled.
    script = _migrate.sql(None)
    assert "%%" not in script
    result = subprocess.run([psql(), empty_dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1"], input=script,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]

    assert catalog(empty_dsn) == catalog(dsn)
    assert version_rows(empty_dsn) == [HEAD]


def test_upgrade_reports_an_unreachable_database_without_the_password() -> None:
    with pytest.raises(DatabaseUnavailable) as caught:
        _migrate.upgrade(UNREACHABLE)

    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "127.0.0.1:1" in message
    assert "\n" not in message


def test_scripts_come_from_the_checkout_when_running_from_source() -> None:
    assert _migrate.script_location() == REPO_ROOT / "alembic"
    assert not (REPO_ROOT / "alembic" / "__init__.py").exists(), "it would shadow the alembic library"


def test_a_running_migration_holds_the_advisory_lock_before_any_ddl(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [_migrate.MIGRATION_LOCK_KEY])
        proc = subprocess.Popen(
            [*PGQUEUE, "migrate", "--dsn", empty_dsn],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_until(
                lambda: holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchone() == (1,),
                timeout=30, message="the migrator waiting on the advisory lock",
            )
            assert version_rows(empty_dsn) == []
            assert not schema_exists(empty_dsn)
        except BaseException:
            proc.kill()
            raise
    # Leaving the block committed the holder's transaction, releasing the lock.
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, err
    assert out.strip() == f"pgqueue schema upgraded to {HEAD}"


def test_two_migrate_commands_started_at_once_both_succeed(empty_dsn: str) -> None:
    procs = [
        subprocess.Popen(
            [*PGQUEUE, "migrate", "--dsn", empty_dsn],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    results = [(proc.wait(timeout=60), *proc.communicate()) for proc in procs]

    assert [code for code, _, _ in results] == [0, 0], results
    assert version_rows(empty_dsn) == [HEAD]
    assert _migrate.check(empty_dsn) == []


def test_migrate_check_exits_1_while_pending_and_0_when_up_to_date(empty_dsn: str) -> None:
    pending = pgqueue_cli("migrate", "--check", "--dsn", empty_dsn)
    assert pending.returncode == 1
    assert HEAD in pending.stdout
    assert not schema_exists(empty_dsn), "--check must not migrate"

    migrated = pgqueue_cli("migrate", "--dsn", empty_dsn)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"pgqueue schema upgraded to {HEAD}"

    up_to_date = pgqueue_cli("migrate", "--check", "--dsn", empty_dsn)
    assert up_to_date.returncode == 0, up_to_date.stderr


def test_migrate_sql_prints_the_ddl_without_connecting() -> None:
    result = pgqueue_cli("migrate", "--sql", "--dsn", UNREACHABLE)

    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE pgqueue.jobs" in result.stdout


def test_migrate_reports_an_unreachable_database_in_one_line() -> None:
    result = pgqueue_cli("migrate", "--dsn", "postgresql://nobody@127.0.0.1:1/x")

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pgqueue: error:")
    assert "Traceback" not in result.stderr


def test_roles_sql_applies_cleanly_twice_and_grants_least_privilege(pg_server_dsn: str, dsn: str) -> None:
    roles_sql = (REPO_ROOT / "sql" / "roles.sql").read_text()
    # Roles are cluster-wide: serialise with any concurrent run applying the same file.
    with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", [int.from_bytes(b"pgqroles", "big")])
        try:
            for _ in range(2):
                with psycopg.connect(dsn) as conn:
                    conn.execute(roles_sql)
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", [int.from_bytes(b"pgqroles", "big")])

    def allowed(role: str, statement: str) -> bool:
        with psycopg.connect(dsn) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege:
                return False
            finally:
                conn.rollback()
            return True

    # The shapes of the real queries: ON CONFLICT on the unique_key index, RETURNING metadata, nextval.
    enqueue = ("INSERT INTO pgqueue.jobs (id, task, unique_key) VALUES (nextval('pgqueue.jobs_id_seq'), 't', 'k')"
               " ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL"
               " AND state IN ('scheduled', 'available', 'running') DO NOTHING RETURNING id, queue, state, attempt")
    heartbeat = ("INSERT INTO pgqueue.workers (id, hostname, pid, concurrency, lease_expires_at)"
                 " VALUES ('w', 'h', 1, 1, now()) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()")
    pause = ("INSERT INTO pgqueue.queues (name, paused) VALUES ('q', true)"
             " ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused")
    forge = "UPDATE pgqueue.job_events SET event = 'forged'"

    assert allowed("pgqueue_enqueuer", enqueue)
    assert allowed("pgqueue_enqueuer", "INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt) "
                                       "VALUES (1, 'enqueued', 'available', 0)")
    assert allowed("pgqueue_enqueuer", "SELECT id FROM pgqueue.jobs WHERE unique_key = 'k' AND state = 'running'")
    assert not allowed("pgqueue_enqueuer", "SELECT args FROM pgqueue.jobs")
    assert not allowed("pgqueue_enqueuer", "UPDATE pgqueue.jobs SET state = 'running'")
    assert not allowed("pgqueue_enqueuer", "DELETE FROM pgqueue.job_events")
    for role in ("pgqueue_enqueuer", "pgqueue_worker", "pgqueue_admin"):  # no back-dating into a sealed range
        assert not allowed(role, "INSERT INTO pgqueue.job_events (event, xid) VALUES ('forged', '1')")
        assert not allowed(role, "INSERT INTO pgqueue.job_events (event, at) VALUES ('forged', '2001-01-01')")
    assert allowed("pgqueue_worker", "INSERT INTO pgqueue.audit_seals (seal_no, xid_from, xid_to, events, first_at, "
                                     "last_at, prev_digest, digest) VALUES (1, '0', '5', 1, now(), now(), "
                                     "sha256(convert_to('pgqueue audit chain v1', 'UTF8')), '')")
    assert allowed("pgqueue_worker", "UPDATE pgqueue.audit_seals SET pruned_at = now()")
    assert not allowed("pgqueue_enqueuer", "UPDATE pgqueue.audit_seals SET pruned_at = now()")
    assert allowed("pgqueue_worker", "UPDATE pgqueue.jobs SET state = 'running' WHERE id = 1 RETURNING args")
    assert allowed("pgqueue_worker", heartbeat)
    assert allowed("pgqueue_worker", "DELETE FROM pgqueue.job_events WHERE at < now() - interval '30 days'")
    assert not allowed("pgqueue_worker", forge)
    assert not allowed("pgqueue_worker", pause)
    assert allowed("pgqueue_reader", "SELECT * FROM pgqueue.queue_stats")
    assert allowed("pgqueue_reader", "SELECT * FROM pgqueue.job_events")
    assert not allowed("pgqueue_reader", enqueue)
    assert allowed("pgqueue_admin", pause)
    assert allowed("pgqueue_admin", "DELETE FROM pgqueue.jobs WHERE queue = 'q' AND state <> 'running'")
    assert not allowed("pgqueue_admin", forge)

    # The grants must not stop a clean downgrade.
    _migrate.downgrade(dsn, "base")
    assert not schema_exists(dsn)


@pytest.mark.slow
def test_an_installed_wheel_migrates_with_no_checkout(tmp_path: Path, empty_dsn: str) -> None:
    wheel_dir, env_dir, elsewhere = tmp_path / "wheel", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "-w", str(wheel_dir), "--no-deps", "-q"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert built.returncode == 0, built.stderr
    # A bare venv that borrows this environment's packages (the dependencies, pip) through a .pth
    # line. Unlike system_site_packages, that also works when the tests themselves run in a venv, and
    # it does not process this environment's own .pth files, so the editable checkout stays out.
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    (Path(purelib) / "_borrowed_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
         *map(str, wheel_dir.glob("*.whl"))],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert installed.returncode == 0, installed.stderr
    clean_env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PGQUEUE_DSN", "DATABASE_URL"}}

    located = subprocess.run(
        [str(python), "-c", "from pgqueue import _migrate; print(_migrate.script_location())"],
        cwd=elsewhere, env=clean_env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert located.returncode == 0, located.stderr
    assert Path(located.stdout.strip()).is_relative_to(env_dir), located.stdout
    migrated = subprocess.run(
        [str(env_dir / "bin" / "pgqueue"), "migrate", "--dsn", empty_dsn],
        cwd=elsewhere, env=clean_env, capture_output=True, text=True, timeout=120, check=False,
    )

    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"pgqueue schema upgraded to {HEAD}"
    assert version_rows(empty_dsn) == [HEAD]
