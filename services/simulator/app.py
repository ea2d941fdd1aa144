"""The simulator's aiohttp application: both providers' APIs, the control API, and one client session
for the webhooks it posts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from services import badinput, httperrors
from services.simulator import control, keys, meta_api, twilio_api
from services.simulator.config import SimConfig
from services.simulator.state import Store

log = logging.getLogger("parley.simulator")

# Parley may take a while under a benchmark; a webhook still gives up rather than pile up forever.
WEBHOOK_TIMEOUT_S = 30.0


@web.middleware
async def _no_500(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, 413) and a defect of ours, as JSON; never a bare 500 page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason, "field": "path"}, status=exc.status)
    except badinput.BadInput as exc:  # routes mounted beside it (the sandbox's) refuse input the usual way
        return httperrors.bad_input(exc)
    except Exception:
        log.exception("simulator handler failed", extra={"path": request.path})
        return web.json_response({"error": "simulator defect; see its log"}, status=500)


def create_app(config: SimConfig) -> web.Application:
    """No I/O here: the client session opens with the application and closes with it."""
    app = web.Application(middlewares=[_no_500], client_max_size=1024 * 1024)
    app[keys.STORE] = Store(config)
    app.add_routes(twilio_api.routes())
    app.add_routes(meta_api.routes())
    app.add_routes(control.routes())
    app.cleanup_ctx.append(_session)
    return app


async def _session(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
    app[keys.SESSION] = session
    yield
    store = app[keys.STORE]
    for task in list(store.tasks):
        task.cancel()
    await asyncio.gather(*store.tasks, return_exceptions=True)
    await session.close()


@asynccontextmanager
async def serving(config: SimConfig, host: str = "127.0.0.1", port: int = 0,
                  shutdown_timeout: float = 5.0) -> AsyncIterator[tuple[str, web.Application]]:
    """Run the simulator inside the caller's event loop (the sandbox in `parley serve`, tests):
    (its base URL, its application) until the block ends. Port 0 picks a free one."""
    app = create_app(config)
    # A handler holding an answer back (the `timeout` error) must not hold the shutdown long.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}", app
    finally:
        await runner.cleanup()
