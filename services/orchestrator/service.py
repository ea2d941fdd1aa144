"""Running the dispatchers: `parley dispatcher` (any number of processes, on any machines sharing the
database) and PARLEY_DISPATCHERS loops inside `parley serve`.

Each process opens its own aiohttp session and provider senders, one throughput limiter (Redis-backed
when REDIS_URL is set, so every process shares each sender's bucket) and one reconciler beside its
dispatchers. On stop (SIGTERM) the dispatchers stop claiming, finish the provider calls in flight,
record them, and only then is the session closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from services import appkeys
from services.orchestrator import clock as clock_mod
from services.orchestrator import dispatcher as dispatcher_mod
from services.orchestrator import reconcile
from services.orchestrator import throughput as throughput_mod
from services.settings import Settings

log = logging.getLogger("parley.orchestrator")


async def run_dispatchers(settings: Settings, pool: asyncpg.Pool, dsn: str, redis: Any | None, stop: asyncio.Event,
                          *, count: int | None = None, clock: clock_mod.Clock = clock_mod.SYSTEM) -> None:
    """`count` (default PARLEY_DISPATCHERS, at least 1 here) dispatchers and one reconciler in this
    process until `stop` is set; sends in flight finish and are recorded first."""
    # Imported here: the provider modules (and the twilio package) load only where something sends.
    from services.channels import senders as senders_mod

    n = max(1, count if count is not None else settings.dispatchers)
    # Each provider call has its own, shorter deadline (PARLEY_SEND_TIMEOUT_S); this only bounds a stuck one.
    timeout = aiohttp.ClientTimeout(total=settings.send_timeout_s + 5)
    connector = aiohttp.TCPConnector(limit=max(100, settings.dispatch_concurrency * n))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        senders = senders_mod.Senders(settings, session)
        try:
            throughput = throughput_mod.Throughput(redis)
            dispatchers = [dispatcher_mod.Dispatcher(pool, settings, senders.for_kind, throughput, dsn=dsn,
                                                     clock=clock) for _ in range(n)]
            reconciler = reconcile.Reconciler(pool, settings, senders.for_kind, clock=clock)
            log.info("dispatchers started", extra={"dispatchers": n,
                                                   "ids": [d.dispatcher_id for d in dispatchers]})
            await asyncio.gather(*(d.run(stop) for d in dispatchers), reconciler.run(stop))
        finally:
            await senders.close()


def background(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx for `parley serve`: PARLEY_DISPATCHERS loops beside the HTTP server, stopped (their
    in-flight sends recorded) before the pool closes."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runtime = app[appkeys.RUNTIME]
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_dispatchers(settings, runtime.pool, runtime.dsn, runtime.redis, stop, count=settings.dispatchers),
            name="dispatchers")
        yield
        stop.set()
        await task

    return ctx
