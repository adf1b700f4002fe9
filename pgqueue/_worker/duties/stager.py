"""The stager: scheduled jobs whose time has come become available."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgqueue._db.workers import WorkerStore

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection

_BATCH = 1000


class Stager:
    def run(self, conn: PsycopgConnection) -> None:
        store = WorkerStore(conn)
        while store.stage_jobs(limit=_BATCH) == _BATCH:
            pass
