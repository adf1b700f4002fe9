"""Transactional tasks: the handler gets ``job.connection``, and its writes commit together with the
job's completion, or not at all (exactly-once effects for those writes).

The completion is written in the handler's own transaction under the claim's lease token: if the
claim was rescued meanwhile, nothing commits and the attempt ends as :class:`LeaseLost`.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from contextvars import copy_context
from typing import TYPE_CHECKING, Any

from pgqueue._db.jobs import AsyncJobStore, JobStore, Outcome
from pgqueue._payload import encode_result
from pgqueue._worker.executor import LeaseLost
from pgqueue._worker.payloads import PayloadSealer
from pgqueue._worker.preflight import WORKER_SESSIONS
from pgqueue._worker.progress import ProgressBook
from pgqueue.jobs import Job

if TYPE_CHECKING:
    # psycopg_pool is imported by the first transactional job: most workers never run one.
    from pgqueue._db.pools import AsyncTransactionPool, TransactionPool
    from pgqueue.app import App
    from pgqueue.tasks import Task


class TransactionalRunner:
    """Runs transactional handlers on pools opened on first use.

    Args:
        concurrency: the worker's slots, the most connections the pools take.
        connection_limit: the login's CONNECTION LIMIT (None: unknown or unlimited).
        pooled: a connection pooler sits in between (no server-side prepared statements then).
    """

    def __init__(self, app: App, sealer: PayloadSealer, progress: ProgressBook, *, concurrency: int) -> None:
        self.app = app
        self.sealer = sealer
        self.progress = progress
        self.concurrency = concurrency
        self.connection_limit: int | None = None
        self.pooled = False
        self._pool: TransactionPool | None = None
        self._async_pool: AsyncTransactionPool | None = None

    async def run(self, task: Task[..., Any], job: Job, threads: Executor) -> None:
        """Run ``task``'s handler for ``job``; a sync one in ``threads``, the worker's job threads.

        Not in asyncio's default executor (``asyncio.to_thread``): the event loop's shutdown waits
        for that executor's threads, so a handler still running after the grace period kept the
        worker from exiting until it returned, and the default executor's few threads (cores + 4)
        capped how many sync transactional jobs ran at once below the worker's concurrency.
        """
        if task.is_async:
            pool = await self._get_async_pool()
            async with pool.transaction() as conn:
                job.connection = conn
                result = await task.fn(job, **job.args)
                if job.id not in await AsyncJobStore(conn).complete_jobs([self._outcome(job, result)]):
                    raise LeaseLost(f"job {job.id} was rescued before it finished")
            return
        sync_pool = self._get_pool()  # here, on the event loop's thread: never two pools

        def run_in_thread() -> None:
            with sync_pool.transaction() as conn:
                job.connection = conn
                result = task.fn(job, **job.args)
                if job.id not in JobStore(conn).complete_jobs([self._outcome(job, result)]):
                    raise LeaseLost(f"job {job.id} was rescued before it finished")

        await asyncio.get_running_loop().run_in_executor(threads, copy_context().run, run_in_thread)

    def _outcome(self, job: Job, result: Any) -> Outcome:
        progress = self.progress.take(job.id)
        result_text = encode_result(result, self.app.settings.max_result_bytes)
        outcome = Outcome(job_id=job.id, token=job.lease_token, state="completed", result=result_text,
                          progress=progress.percent if progress else None,
                          progress_note=progress.note if progress else None,
                          progress_note_encrypted=progress.note_encrypted if progress else None)
        return self.sealer.seal(job, self.app.tasks.get(job.task), outcome)

    def _pool_size(self) -> int:
        # Within a CONNECTION LIMIT, the pool takes what the worker's own sessions leave (jobs wait
        # for a pooled connection) rather than failing connection attempts it knows will fail.
        if self.connection_limit is None:
            return self.concurrency
        return max(1, min(self.concurrency, self.connection_limit - WORKER_SESSIONS))

    def _get_pool(self) -> TransactionPool:
        if self._pool is None:
            from pgqueue._db.pools import TransactionPool

            self._pool = TransactionPool(self.app.dsn, max_size=self._pool_size(), prepare=not self.pooled)
        return self._pool

    async def _get_async_pool(self) -> AsyncTransactionPool:
        if self._async_pool is None:
            from pgqueue._db.pools import AsyncTransactionPool

            self._async_pool = await AsyncTransactionPool.open(self.app.dsn, max_size=self._pool_size(),
                                                               prepare=not self.pooled)
        return self._async_pool

    async def close(self) -> None:
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close, 5)
        if self._async_pool is not None:
            await self._async_pool.close(5)
