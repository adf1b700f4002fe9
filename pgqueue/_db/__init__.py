"""The data layer: the only package that imports psycopg, psycopg_pool or SQLAlchemy (alembic is
``pgqueue._migrate``'s). An import-linter contract in ``pyproject.toml`` keeps it that way.

Cut by subject, one module per table or concern, each with its ``queries/<subject>.sql`` of named
blocks that it loads itself (see ``queries.py``)::

    jobs.py         pgqueue.jobs: enqueue, claim, ack, progress, an operator's actions on jobs
    workers.py      the fleet: heartbeats, the leader lease, staging, rescue, forgetting dead workers
    queues.py       pgqueue.queues: pause/resume, per-queue figures
    audit.py        pgqueue.job_events and audit_seals: a job's trail, the seal chain
    retention.py    deleting finished work by age, vacuuming pgqueue.jobs
    keys.py         re-encrypting ciphertexts under the newest key
    server.py       the server, not pgqueue's tables: diagnostics, session limits, the clock
    notifications.py  the NOTIFY channel (one constant, ``%(channel)s`` in every .sql) and LISTEN
    schedules.py       pgqueue.schedules and schedule_runs

Staging and rescue change pgqueue.jobs but live in ``workers``: they are what the maintenance
leader does for the fleet, alongside the leases they depend on. What the CLI reads about the
server (``pgqueue health``) and what the worker probes before it starts share ``server``.

Stores are twins where both flavours are needed (``JobStore``/``AsyncJobStore``: the same method
name runs the same statements, sync or async); a method exists only in the flavour its callers
need. Stores never commit the caller's transaction (``JobStore._atomically`` and
``KeyStore.transaction`` are explicit about the transactions they open).

Around the stores:

    sessions.py     pgqueue's own sessions: options, bounded and reconnecting sessions, backoff
    connections.py  the application's connections (psycopg or SQLAlchemy) -> one psycopg connection
    errors.py       the one error policy (``translate``), and the error tuples other layers catch
    types.py        connection types for annotations elsewhere (``pgqueue.typing`` re-exports them)
    pools.py        pooled sessions of transactional handlers
    databases.py    whole databases: the scratch databases of the demo, bench and soak
    bench.py, soak.py  the measuring tools' own SQL (bench.sql, ceiling.sql, soak.sql)
"""
