"""Retention: deletes done agent tasks and status callbacks older than PARLEY_RETENTION_DAYS.

Both tables gain rows with every message and are read only while those rows are fresh (a task until it
is done, a status callback when it arrives). `parley serve` (its first process) and every `parley worker`
run this job: first a minute after start, then every PARLEY_RETENTION_INTERVAL_S (hourly). Rows go in
batches of BATCH, each batch its own short transaction that skips locked rows and gives up on a lock
wait, so the job never holds many locks, never waits behind a worker, and several processes running it
at once share the work instead of colliding. This module owns these deletes and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from db import queries
from services import appkeys
from services.settings import Settings

Q = queries.load(__file__, "retention.sql")
log = logging.getLogger("parley.retention")

BATCH = 1000  # rows per statement: a few milliseconds of locks and WAL
FIRST_RUN_S = 60.0  # after start: out of the way of start-up, soon enough to be seen working


@dataclass(frozen=True, slots=True)
class Purged:
    agent_tasks: int
    message_statuses: int
    batches: int  # statements (and transactions) it took


async def purge(pool: asyncpg.Pool, days: int, *, batch: int = BATCH, pause_s: float = 0.01,
                stop: asyncio.Event | None = None) -> Purged:
    """Delete everything past retention now, batch by batch; `pause_s` between batches leaves the pool
    and the disk to the real work. Once `stop` is set, no further batch starts."""
    stop = stop or asyncio.Event()
    tasks, task_batches = await _purge(pool, Q.delete_done_tasks, days, batch, pause_s, stop)
    statuses, status_batches = await _purge(pool, Q.delete_statuses, days, batch, pause_s, stop)
    return Purged(tasks, statuses, task_batches + status_batches)


async def _purge(pool: asyncpg.Pool, sql: str, days: int, batch: int, pause_s: float,
                 stop: asyncio.Event) -> tuple[int, int]:
    total = batches = 0
    while not stop.is_set():
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(Q.lock_timeout)
            deleted: int = await conn.fetchval(sql, days, batch)
        total += deleted
        batches += 1
        if deleted < batch:
            break
        await asyncio.sleep(pause_s)
    return total, batches


async def run(pool: asyncpg.Pool, days: int, interval_s: float, stop: asyncio.Event,
              first_run_s: float = FIRST_RUN_S) -> None:
    """Purge periodically until `stop` is set; `days` = 0 keeps everything (the job does not run)."""
    if days <= 0:
        return
    wait = min(first_run_s, interval_s)
    while not await _stopped_within(stop, wait):
        wait = interval_s
        try:
            purged = await purge(pool, days, stop=stop)
        except Exception:  # noqa: BLE001 - a busy or unreachable database: try again next time
            log.warning("retention run failed", exc_info=True)
            continue
        if purged.agent_tasks or purged.message_statuses:
            log.info("retention deleted old rows", extra={"agent_tasks": purged.agent_tasks,
                                                          "message_statuses": purged.message_statuses,
                                                          "batches": purged.batches, "days": days})


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def background(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx for `parley serve`: the job runs beside the HTTP server and stops before the pool."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(run(app[appkeys.RUNTIME].pool, settings.retention_days,
                                       settings.retention_interval_s, stop), name="retention")
        yield
        stop.set()
        await task

    return ctx
