"""The rescuer: running jobs whose worker stopped heartbeating go back to the queue (or to failed
when they have no attempts left); the lost worker's late outcome is then refused."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pgqueue._db.workers import WorkerStore
from pgqueue._log import get_logger

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection


class Rescuer:
    def __init__(self) -> None:
        #: When (server clock) the leader's session came back from an outage, set by Maintenance:
        #: leases hold for their full length after it (see rescue_jobs in workers.sql).
        self.recovered_at: datetime | None = None

    def run(self, conn: PsycopgConnection) -> None:
        rescued = WorkerStore(conn).rescue_jobs(limit=1000, recovered_at=self.recovered_at)
        if rescued:
            log = get_logger("pgqueue.maintenance")
            for job_id, state in rescued:
                log.warning("job.rescued", job_id=job_id, to_state=state)
