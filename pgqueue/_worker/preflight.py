"""The worker's start-up check: refuse to start where it could never work, learn how to connect."""

from __future__ import annotations

from dataclasses import dataclass

from pgqueue._db.errors import DATABASE_ERRORS
from pgqueue._db.server import AsyncServerStore
from pgqueue._db.sessions import open_async
from pgqueue.errors import ConfigurationError
from pgqueue.settings import Settings

# Sessions a worker process holds whatever its concurrency: claim, ack, listen, heartbeat and
# maintenance. Transactional tasks add a pool of up to `concurrency` more, opened on demand.
WORKER_SESSIONS = 5


@dataclass(frozen=True)
class SessionFacts:
    """What the check learned: the most sessions this login may hold here (None: unknown or
    unlimited), and whether a connection pooler sits between the worker and PostgreSQL."""

    connection_limit: int | None = None
    pooled: bool = False


async def check_connection(dsn: str, settings: Settings, *, transactional: bool) -> SessionFacts:
    """Refuse to start when the role or database can never grant the sessions a worker needs
    (otherwise one of them keeps failing: jobs run but stay 'running', or LISTEN never works),
    or when ``dsn`` goes through a connection pooler and nothing says how to be woken.

    Only a static CONNECTION LIMIT is checked, and only if the database answers now: one that
    is down or full is retried by the loops like any other outage.

    Raises:
        ConfigurationError: the worker could not work with this database and settings.
    """
    try:
        async with await open_async(dsn, "worker-check") as conn:
            server = AsyncServerStore(conn)
            role, limit, source = await server.connection_limit()
            pooled = await server.behind_pooler()
    except DATABASE_ERRORS:
        return SessionFacts()
    if pooled and not settings.poll_only and settings.listen_dsn is None:
        raise ConfigurationError(
            "the worker's DSN goes through a connection pooler (PgBouncer?), where LISTEN does not work in "
            "transaction pooling: set PGQUEUE_LISTEN_DSN (--listen-dsn) to a direct PostgreSQL DSN, "
            "or PGQUEUE_POLL_ONLY=1 (--poll-only) to find jobs by polling alone")
    needed = WORKER_SESSIONS + (1 if transactional else 0)
    if limit is not None and limit < needed:
        what = (f"role {role!r} has CONNECTION LIMIT {limit}" if source == "role"
                else f"the database has CONNECTION LIMIT {limit}")
        raise ConfigurationError(
            f"{what}, but a pgqueue worker process needs {needed} connections (claim, ack, listen, heartbeat, "
            f"maintenance{', and at least one for transactional tasks' if transactional else ''}); "
            f"raise the limit to at least {needed} per worker process")
    return SessionFacts(limit, pooled)
