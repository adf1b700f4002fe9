"""Whole databases on a server: the scratch databases of the demo, the benchmark, the soak and pgqueue.testing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, LiteralString
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgqueue._db.errors import translate_errors
from pgqueue.errors import ConfigurationError


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials as ``dsn`` (in the same form), pointing at ``database``.

    A ``dbname`` in a URL's query is dropped: libpq lets it override the path, so the scratch
    databases of the bench, the demo and the soak would otherwise be the caller's own database.
    """
    if "://" not in dsn:
        params = conninfo_to_dict(dsn)
        params["dbname"] = database
        return make_conninfo("", **{key: value for key, value in params.items() if value is not None})
    parts = urlsplit(dsn)
    query = urlencode([(key, value) for key, value in parse_qsl(parts.query) if key != "dbname"])
    # By hand, not urlunsplit: with no host (a socket in the query) it drops the "//" libpq needs.
    return f"{parts.scheme}://{parts.netloc}/{quote(database, safe='')}" + (f"?{query}" if query else "")


#: ``application_name`` prefix of the session a scratch run keeps open while its databases exist:
#: how a later run on the same server tells a live run's databases (however idle) from those a
#: killed run left behind. Visible to every role in pg_stat_activity, whoever owns the session.
RUN_MARKER = "pgqueue-scratch:"


def _marker_session(dsn: str, application_name: str) -> psycopg.Connection[Any]:
    """A session that marks something in use by its ``application_name`` for as long as it lives."""
    conn = psycopg.connect(dsn, autocommit=True, application_name=application_name)
    try:
        # A marker idles for its whole run: a server's idle_session_timeout (PostgreSQL 14+) must
        # not end it, or what it marks would look abandoned while in use.
        conn.execute("SELECT set_config('idle_session_timeout', '0', false) "
                     "WHERE current_setting('server_version_num')::int >= 140000")
    except BaseException:
        conn.close()
        raise
    return conn


class ScratchRun:
    """One run's scratch databases on a server, named :attr:`name` (``family`` + a random token)
    or :attr:`name` + ``_`` + a suffix.

    :meth:`start` opens the run's marker session (:data:`RUN_MARKER` + its name), then drops the
    family's databases whose run has no marker any more: a process killed outright (SIGKILL, a
    lost machine) never drops its databases, but its marker session ends with it. Start the run
    before creating its first database; close it after its last is dropped (or let the process end).
    """

    def __init__(self, dsn: str, family: str) -> None:
        self.dsn = dsn
        self.family = family
        self.name = f"{family}{uuid.uuid4().hex[:8]}"
        self._marker: psycopg.Connection[Any] | None = None
        #: Databases of runs that were gone, dropped by :meth:`start`.
        self.swept: list[str] = []

    def start(self) -> None:
        if self._marker is not None:
            return
        self._marker = self._open_marker()
        self.swept = drop_abandoned_runs(self.dsn, self.family)

    def keep_alive(self) -> None:
        """Reopen the marker if it was lost (a server restart): call before creating a database
        in a run that lasts (a test process)."""
        if self._marker is None:
            return
        try:
            self._marker.execute("SELECT 1")
        except psycopg.Error:
            self._marker.close()
            self._marker = self._open_marker()

    def _open_marker(self) -> psycopg.Connection[Any]:
        with translate_errors():
            return _marker_session(self.dsn, f"{RUN_MARKER}{self.name}")

    def close(self) -> None:
        if self._marker is not None:
            self._marker.close()
            self._marker = None


#: How long a claim waits for an earlier holder's session that is ending to leave pg_stat_activity.
_ENDING_SESSION_GRACE = 1.0
# The earliest other session with this session's mark, if any (see DatabaseClaim.acquire).
_EARLIER_CLAIM: LiteralString = """
                    SELECT other.pid FROM pg_catalog.pg_stat_activity AS other,
                         (SELECT backend_start, application_name FROM pg_catalog.pg_stat_activity
                          WHERE pid = pg_backend_pid()) AS me
                    WHERE other.application_name = me.application_name
                      AND other.pid <> pg_backend_pid()
                      AND (other.backend_start IS NULL
                           OR (other.backend_start, other.pid) < (me.backend_start, pg_backend_pid()))
                    ORDER BY other.backend_start NULLS FIRST, other.pid
                    LIMIT 1"""


class DatabaseClaim:
    """A session that marks ``database`` as in use by one run of ``purpose`` (the demo), so that a
    second run does not drop and recreate it under the first.

    The mark is the session's ``application_name`` (``pgqueue-<purpose>:<database>``), visible to
    every role in ``pg_stat_activity`` on the whole server, whichever database a run connects to;
    it ends with its process however that ends (a SIGKILL too), so no stale mark outlives a run.
    Not a session advisory lock: those are scoped to one database, and two runs may connect to
    the server through different ones.
    """

    def __init__(self, dsn: str, database: str, purpose: str) -> None:
        self.dsn = dsn
        self.database = database
        self.purpose = purpose
        self._marker: psycopg.Connection[Any] | None = None

    def acquire(self) -> int | None:
        """Mark the database; return None when this run holds it, else the server pid of the run
        that got there first (then nothing is held)."""
        with translate_errors():
            marker = _marker_session(self.dsn, f"pgqueue-{self.purpose}:{self.database}")
            try:
                # Two runs starting together both see both marks: the session that started first
                # wins. Another role's session shows no backend_start: it counts as first (both
                # may then refuse, and a rerun settles it; neither drops the other's database).
                # The name as the server shows it (cut to 63 bytes, non-ASCII replaced), not as set.
                # A run that just ended can stay listed for a moment while its backend exits: a
                # demo started right after another (a script) waits that out before refusing.
                deadline = time.monotonic() + _ENDING_SESSION_GRACE
                row = marker.execute(_EARLIER_CLAIM).fetchone()
                while row is not None and time.monotonic() < deadline:
                    time.sleep(0.05)
                    row = marker.execute(_EARLIER_CLAIM).fetchone()
            except BaseException:
                marker.close()
                raise
        if row is not None:
            marker.close()
            return int(row[0])
        self._marker = marker
        return None

    def close(self) -> None:
        if self._marker is not None:
            self._marker.close()
            self._marker = None


def drop_abandoned_runs(dsn: str, family: str) -> list[str]:
    """Drop the databases of the ``family``'s scratch runs (:class:`ScratchRun`) whose marker
    session is gone; return their names."""
    with translate_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        # Databases first, markers second: a live run opened its marker before creating any
        # database, so each database listed here has its run's marker visible below.
        names = [str(row[0]) for row in conn.execute(
            "SELECT datname FROM pg_catalog.pg_database WHERE starts_with(datname, %s) AND NOT datistemplate",
            [family]).fetchall()]
        live = {str(row[0])[len(RUN_MARKER):] for row in conn.execute(
            "SELECT application_name FROM pg_catalog.pg_stat_activity WHERE starts_with(application_name, %s)",
            [RUN_MARKER]).fetchall()}
        abandoned = [name for name in names if family + name[len(family):].split("_")[0] not in live]
        for name in abandoned:
            conn.execute(_drop(name))
    return abandoned


def _run(dsn: str, statements: Sequence[sql.Composed], refused: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction block: an autocommit session of its own.
    with translate_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        try:
            for statement in statements:
                conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigurationError(f"{refused}: {exc.diag.message_primary}") from exc


def _drop(database: str) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))


def recreate_database(dsn: str, database: str) -> str:
    """Drop (if present) and create ``database`` on ``dsn``'s server; return its DSN.

    Raises:
        ConfigurationError: the role may not create databases.
    """
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
    _run(dsn, [_drop(database), create], f"cannot create database {database!r}")
    return with_database(dsn, database)


def create_database(dsn: str, database: str, *, template: str | None = None, refused: str | None = None) -> str:
    """Create ``database`` on ``dsn``'s server, as a copy of ``template`` when given (a file copy,
    far quicker than migrating again); return its DSN.

    Raises:
        ConfigurationError: the role may not create databases; the message starts with ``refused``.
    """
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
    if template is not None:
        statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
    _run(dsn, [statement], refused or f"cannot create database {database!r}")
    return with_database(dsn, database)


def drop_database(dsn: str, database: str) -> None:
    """Drop ``database`` if it exists, ending its sessions."""
    _run(dsn, [_drop(database)], f"cannot drop database {database!r}")


def ensure_template(dsn: str, name: str, build: Callable[[str], None], *, lock_key: int) -> None:
    """Make sure the template database ``name`` exists on ``dsn``'s server, calling ``build`` with
    the DSN of a new database to fill it if not.

    One process builds while the others wait on a session advisory lock (``lock_key``), then reuse
    it. It is built under a temporary name and renamed when complete, so an interrupted build never
    leaves a half-built template; a template accepts no connections, so ``CREATE DATABASE ...
    TEMPLATE`` never finds one in use.
    """
    building = f"{name}_building"
    with translate_errors(), psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", [lock_key])
        try:
            if admin.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", [name]).fetchone():
                return
            if admin.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", [building]).fetchone():
                admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(building)))
                admin.execute(_drop(building))
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(building)))
            build(with_database(dsn, building))
            admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                sql.Identifier(building)))
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(building), sql.Identifier(name)))
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", [lock_key])
