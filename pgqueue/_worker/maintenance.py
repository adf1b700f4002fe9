"""Maintenance: every worker runs this thread; one of them, elected with a lease row (not an
advisory lock, which breaks behind PgBouncer's transaction pooling), does the fleet's duties."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pgqueue._db.server import ServerStore
from pgqueue._db.workers import WorkerStore
from pgqueue._log import get_logger
from pgqueue._worker.background import SessionThread
from pgqueue._worker.duties import Duty, leader_duties
from pgqueue._worker.duties.rescuer import Rescuer

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection


class Maintenance(SessionThread):
    """Takes or renews the leader lease every ``interval`` seconds and, while it holds it, runs
    ``duties`` in order (default: :func:`pgqueue._worker.duties.leader_duties`)."""

    LEADER = "maintenance"

    def __init__(self, dsn: str, holder: str, lease_seconds: float, interval: float = 0.5,
                 duties: Sequence[Duty] | None = None) -> None:
        super().__init__("maintenance", dsn, interval=interval)
        self.holder = holder
        self.ttl = max(lease_seconds, 5.0)
        self.is_leader = False
        self.duties = list(duties) if duties is not None else leader_duties(lease_seconds)

    def tick(self, conn: PsycopgConnection) -> None:
        if self.outage:
            # Back from an outage (a restart, a failover to a standby, a network cut): the other
            # workers may still be reconnecting, so their leases hold for a full length from now.
            recovered_at = ServerStore(conn).now()
            for duty in self.duties:
                if isinstance(duty, Rescuer):
                    duty.recovered_at = recovered_at
            self.outage = False
        store = WorkerStore(conn)
        was_leader = self.is_leader
        self.is_leader = store.acquire_leadership(self.LEADER, self.holder, self.ttl)
        if self.is_leader != was_leader:
            get_logger("pgqueue.maintenance").info(
                "maintenance.leader_elected" if self.is_leader else "maintenance.leadership_lost", holder=self.holder)
        if not self.is_leader:
            return
        for duty in self.duties:
            duty.run(conn)

    def on_stop(self, conn: PsycopgConnection) -> None:
        if self.is_leader:
            WorkerStore(conn).resign_leadership(self.LEADER, self.holder)
