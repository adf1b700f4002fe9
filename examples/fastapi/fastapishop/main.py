"""Run it from examples/fastapi with `PGQUEUE_DSN=postgresql://... uvicorn --factory fastapishop.main:create_api`.

- The pgqueue worker runs inside the web process, started and stopped by the app's lifespan (a
  separate `pgqueue worker --app fastapishop.main:queue` process is the other way).
- An order and its confirmation job are written in the request's SQLAlchemy session, in one
  transaction: a request that fails after enqueueing leaves neither behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import Integer, String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import pgqueue

queue = pgqueue.App()  # PGQUEUE_DSN (tests bind it to their own database)


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


def create_api() -> FastAPI:
    # One database for the shop and its jobs: the engine uses the App's DSN, on the psycopg driver.
    engine = create_async_engine(queue.dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        worker = pgqueue.Worker(queue, concurrency=5)
        running = asyncio.create_task(worker.run_async())
        try:
            yield
        finally:
            worker.stop()  # stop claiming; running jobs get the shutdown grace period
            await running
            await engine.dispose()

    async def session() -> AsyncIterator[AsyncSession]:
        async with sessions() as db:
            yield db  # not committed unless the endpoint commits: an error rolls everything back

    api = FastAPI(lifespan=lifespan)

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
