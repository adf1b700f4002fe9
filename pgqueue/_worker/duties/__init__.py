"""What the maintenance leader does for the whole fleet, one :class:`Duty` each.

:class:`~pgqueue._worker.maintenance.Maintenance` runs its duties in order on every tick it holds
the leader lease: the stager, the rescuer, the reaper and the audit sealer always, the pruner in a
worker (it needs the retention settings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pgqueue._worker.duties.audit_sealer import AuditSealer
from pgqueue._worker.duties.reaper import Reaper
from pgqueue._worker.duties.rescuer import Rescuer
from pgqueue._worker.duties.stager import Stager

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection


class Duty(Protocol):
    """One of the leader's duties, run on the leader's own autocommit session.

    A duty that raises ends the tick: the maintenance thread logs it, replaces the session if it
    died, and tries again after a backoff. A duty whose failure must not hold the others back
    (sealing, pruning: a role may lack the rights for them) catches its own statement errors.
    """

    def run(self, conn: PsycopgConnection) -> None: ...


def leader_duties(lease_seconds: float, *extra: Duty) -> list[Duty]:
    """The duties every maintenance leader has, in the order they run, then ``extra``."""
    ttl = max(lease_seconds, 5.0)
    return [Stager(), Rescuer(), Reaper(keep_seconds=max(ttl * 10, 300.0)), AuditSealer(), *extra]


__all__ = ["AuditSealer", "Duty", "Reaper", "Rescuer", "Stager", "leader_duties"]
