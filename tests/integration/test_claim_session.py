"""The worker's claim session commits without waiting for the WAL flush, and keeps doing so
after it reconnects (see docs/design.md: a lost claim leaves the job as it was)."""

from __future__ import annotations

import asyncio

from pgqueue._db.sessions import AsyncReconnectingSession
from pgqueue._log import get_logger
from pgqueue._worker.loop import _skip_commit_flush_wait


async def _synchronous_commit(session: AsyncReconnectingSession) -> str:
    cur = await (await session.get()).execute("SHOW synchronous_commit")
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


def test_the_claim_session_skips_the_flush_wait_on_every_connection_it_opens(dsn: str) -> None:
    async def check() -> list[str]:
        claim = AsyncReconnectingSession(dsn, "claim", log=get_logger("test"), prepare=True,
                                         on_connect=_skip_commit_flush_wait)
        other = AsyncReconnectingSession(dsn, "ack", log=get_logger("test"), prepare=True)
        try:
            first = await _synchronous_commit(claim)
            await claim.close()  # as after a lost connection: the next use reconnects
            again = await _synchronous_commit(claim)
            return [first, again, await _synchronous_commit(other)]
        finally:
            await claim.close()
            await other.close()

    assert asyncio.run(check()) == ["off", "off", "on"]
