"""Run it from examples/fastapi with `PGQUEUE_DSN=postgresql://... uvicorn --factory fastapishop.main:create_api`.

- The pgqueue worker runs inside the web process, started and stopped by the app's lifespan (a
  separate `pgqueue worker --app fastapishop.main:queue` process is the other way).
- An order and its confirmation job are written in the request's SQLAlchemy session, in one
  transaction: a request that fails after enqueueing leaves neither behind.
- `GET /healthz` is the readiness probe: 503, with the reason, once the in-process worker has
  ended while the app still serves (a crash is also logged the moment it happens). Without it a
  dead worker shows only at shutdown, and jobs pile up meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Integer, String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import pgqueue

queue = pgqueue.App()  # PGQUEUE_DSN (tests bind it to their own database)
log = logging.getLogger("fastapishop")


@queue.task(name="send-confirmation", queue="emails")
async def send_confirmation(job: pgqueue.Job, order_id: int, email: str) -> dict[str, object]:
    await asyncio.sleep(0)  # ... send the e-mail ...
    return {"order_id": order_id, "sent_to": email}


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    total_cents: Mapped[int] = mapped_column(Integer)


class OrderIn(BaseModel):
    email: str
    total_cents: int


MAX_ORDER_CENTS = 100_000


class WorkerMonitor:
    """The in-process worker's task, watched: its end is logged the moment it happens unless the
    app asked for it, and :meth:`problem` says why it is not running (for the readiness probe)."""

    def __init__(self) -> None:
        self.task: asyncio.Task[int] | None = None
        self.stopping = False

    def start(self, worker: pgqueue.Worker) -> asyncio.Task[int]:
        self.task = asyncio.create_task(worker.run_async(), name="pgqueue-worker")
        self.task.add_done_callback(self._ended)
        return self.task

    def problem(self) -> str | None:
        """Why the worker is not running, or None while it runs."""
        if self.task is None:
            return "the worker has not started"
        if not self.task.done():
            return None
        if self.task.cancelled():
            return "the worker task was cancelled"
        error = self.task.exception()
        if error is not None:
            # The first line only: enough to act on, and a probe's answer is no place for a traceback.
            detail = str(error).splitlines()[0][:300] if str(error) else ""
            return f"the worker crashed: {type(error).__name__}" + (f": {detail}" if detail else "")
        return "the worker stopped" + (" (the app is shutting down)" if self.stopping else "")

    def _ended(self, task: asyncio.Task[int]) -> None:
        error = None if task.cancelled() else task.exception()
        if self.stopping and not task.cancelled() and error is None:
            return  # the lifespan stopped it
        # Logged now, not at shutdown (which may be days later): alert on this line.
        log.error("pgqueue worker ended unexpectedly: %s", self.problem(), exc_info=error)


def create_api() -> FastAPI:
    # One database for the shop and its jobs: the engine uses the App's DSN, on the psycopg driver.
    engine = create_async_engine(queue.dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    monitor = WorkerMonitor()

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        worker = pgqueue.Worker(queue, concurrency=5)
        running = monitor.start(worker)
        try:
            yield
        finally:
            monitor.stopping = True
            worker.stop()  # stop claiming; running jobs get the shutdown grace period
            # Waited for, not awaited: a crash was logged when it happened and is not raised again
            # here, where it would only turn a clean shutdown into a failed one.
            await asyncio.wait([running])
            await engine.dispose()

    async def session() -> AsyncIterator[AsyncSession]:
        async with sessions() as db:
            yield db  # not committed unless the endpoint commits: an error rolls everything back

    api = FastAPI(lifespan=lifespan)
    api.state.worker = monitor  # for tests and other probes

    @api.get("/healthz")
    async def health() -> JSONResponse:
        # Readiness: a web process whose worker is dead still serves requests, and its jobs wait
        # for ever; 503 takes it out of rotation (or gets it restarted) and says why.
        problem = monitor.problem()
        if problem is not None:
            return JSONResponse({"status": "unavailable", "worker": "dead", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok", "worker": "running"})

    @api.post("/orders", status_code=201)
    async def place_order(body: OrderIn, db: AsyncSession = Depends(session)) -> dict[str, int]:  # noqa: B008
        order = Order(email=body.email, total_cents=body.total_cents)
        db.add(order)
        await db.flush()
        job_id = await send_confirmation.enqueue_async(db, order_id=order.id, email=order.email)
        if body.total_cents > MAX_ORDER_CENTS:
            raise HTTPException(status_code=402, detail="over the order limit")  # order and job roll back
        await db.commit()
        return {"order_id": order.id, "job_id": job_id}

    @api.get("/jobs/{job_id}/result")
    async def job_result(job_id: int, db: AsyncSession = Depends(session)) -> object:  # noqa: B008
        try:
            return await queue.result_async(db, job_id, timeout=10)
        except pgqueue.errors.JobUnsuccessful as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None

    return api
