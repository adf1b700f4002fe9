"""The reaper: forgets workers dead for a while (kept ``keep_seconds`` past their lease, so an
operator can still see who died)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgqueue._db.workers import WorkerStore

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection


class Reaper:
    def __init__(self, keep_seconds: float) -> None:
        self.keep_seconds = keep_seconds

    def run(self, conn: PsycopgConnection) -> None:
        WorkerStore(conn).delete_expired_workers(keep_seconds=self.keep_seconds)
