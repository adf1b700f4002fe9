"""Scratch databases for the benchmark, and what it reads about the machine.

One database, ``pgqueue_bench_<random>``, is created and migrated once; it then serves as the
template every scenario's fresh database is cloned from (``CREATE DATABASE ... TEMPLATE`` is a
file copy, far quicker than running the migrations again). All of them are dropped
``WITH (FORCE)`` at the end, whatever happened. A run killed outright (SIGKILL, a lost machine)
cannot drop them: the next run on the server does, since the run's marker session is gone.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from pgqueue import _migrate
from pgqueue._db.databases import ScratchRun, create_database, drop_database, with_database

_REFUSED = "pgqueue bench needs a role that may create databases"
FAMILY = "pgqueue_bench_"


class ScratchDatabases:
    """The migrated template and the per-run clones made from it."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self._run = ScratchRun(server_dsn, FAMILY)
        self.prefix = self._run.name
        self._clones = 0
        self._created: list[str] = []

    @property
    def swept(self) -> list[str]:
        """Databases of earlier runs that were killed, dropped by create_template."""
        return self._run.swept

    def create_template(self) -> None:
        # The run's marker first: a run sweeping meanwhile must see it before any database of ours.
        self._run.start()
        # Listed before it exists: an interrupt (Ctrl-C) can land after the server created it but
        # before the call returned, and drop_all's DROP ... IF EXISTS is harmless when it does not.
        self._created.append(self.prefix)
        create_database(self.server_dsn, self.prefix, refused=_REFUSED)
        _migrate.upgrade(with_database(self.server_dsn, self.prefix))

    @contextmanager
    def fresh(self) -> Iterator[str]:
        """A clone of the migrated template: the pgqueue schema at head and no rows."""
        self._clones += 1
        name = f"{self.prefix}_{self._clones}"
        try:  # created inside: an interrupted CREATE may still have made it (see create_template)
            yield create_database(self.server_dsn, name, template=self.prefix, refused=_REFUSED)
        finally:
            drop_database(self.server_dsn, name)

    def drop_all(self) -> None:
        try:
            for name in reversed(self._created):
                drop_database(self.server_dsn, name)
            self._created.clear()
        finally:
            # Last: until then, another run's sweep leaves our databases alone.
            self._run.close()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """The machine the benchmark client ran on (the server's, when it is local)."""
    memory = _memory_bytes()
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(memory / 2**30, 1) if memory else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
