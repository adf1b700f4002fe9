"""pgqueue migrate: create or upgrade the schema, check it, or print its DDL."""

from __future__ import annotations

from typing import Annotated

import typer

from pgqueue.cli._context import DsnOption, fail, resolve
from pgqueue.errors import PgqueueError


def migrate(
    dsn: DsnOption = None,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 and list pending revisions if any.")
    ] = False,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the DDL for a DBA to review instead of running it.")
    ] = False,
) -> None:
    """Create or upgrade the pgqueue schema (safe to run from several deploys at once)."""
    # Imported here: alembic and SQLAlchemy cost ~0.2 s, which every other command would pay.
    from pgqueue import _migrate

    if check and sql:
        fail("--check and --sql cannot be combined")
    try:
        if sql:
            # Never resolves the DSN: that could start the embedded server, and --sql touches no database.
            print(_migrate.sql(dsn), end="")
            return
        target = resolve(dsn)
        if check:
            pending = _migrate.check(target)
            if pending:
                print(f"pgqueue schema is out of date; pending revisions: {' '.join(pending)}")
                raise typer.Exit(1)
            print(f"pgqueue schema is up to date ({_migrate.current(target)})")
            return
        pending = _migrate.check(target)
        _migrate.upgrade(target)
        head = _migrate.current(target)
        if pending:
            print(f"pgqueue schema upgraded to {head}")
        else:
            print(f"pgqueue schema is already up to date ({head})")
    except PgqueueError as exc:
        fail(str(exc))
