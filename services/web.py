"""The aiohttp application: webhooks, operator API, and (in `parley serve`) the agent workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from services import appkeys
from services import runtime as runtime_mod
from services.channels.base import InboundMessage
from services.httperrors import error_middleware
from services.inbound import spool as spool_mod
from services.inbound import store, webhooks
from services.inbound.batcher import Batcher
from services.inbound.directory import Channel, Directory
from services.ops import agents_api, api, messages_api
from services.settings import Settings

BackgroundFactory = Callable[[web.Application], AsyncIterator[None]]


def create_app(settings: Settings, *, background: tuple[BackgroundFactory, ...] = ()) -> web.Application:
    """Build the app; no I/O happens until it starts (every resource opens in a cleanup_ctx)."""
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[error_middleware])
    app[appkeys.SETTINGS] = settings
    app.add_routes(webhooks.routes())
    app.add_routes(api.routes())
    app.add_subapp("/api", api.create_app(api.api_routes(), agents_api.routes(), messages_api.routes()))

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with runtime_mod.open_runtime(settings) as runtime:
            app[appkeys.RUNTIME] = runtime
            app[appkeys.DIRECTORY] = Directory(runtime.pool)
            batcher = Batcher(runtime.pool, writers=min(settings.ingest_writers, settings.db_pool_size - 1),
                              queue_max=settings.ingest_queue_max)
            app[appkeys.BATCHER] = batcher
            batcher.start()
            spool = spool_mod.Spool(Path(settings.parley_home) / "spool", settings.spool_max_bytes)
            app[appkeys.SPOOL] = spool
            spool.adopt_orphans()

            async def replay(channel: Channel, msg: InboundMessage) -> None:
                await store.ingest(runtime.pool, batcher, channel, msg, settings.task_max_attempts)

            replayer = asyncio.create_task(spool.run(replay), name="inbound-spool-replay")
            try:
                yield
            finally:
                replayer.cancel()
                await asyncio.gather(replayer, return_exceptions=True)
                spool.close()
                await batcher.stop()

    app.cleanup_ctx.append(runtime_ctx)
    for factory in background:
        app.cleanup_ctx.append(factory)
    return app


def default_background(settings: Settings) -> tuple[BackgroundFactory, ...]:
    """What `parley serve` runs beside the HTTP server: the agent workers (PARLEY_WORKERS, default 1)
    and the outbound dispatchers (PARLEY_DISPATCHERS, default 1)."""
    from agents import service
    from services.orchestrator import service as orchestrator

    background: tuple[BackgroundFactory, ...] = (service.background(settings),) if settings.workers > 0 else ()
    if settings.dispatchers > 0:
        background += (orchestrator.background(settings),)
    return background
