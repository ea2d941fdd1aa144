"""JSON error answers, and the middleware that guarantees no request ends in an unexplained 500."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from db import errors as db_errors
from services import appkeys

log = logging.getLogger("parley.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"body larger than {request.app[appkeys.SETTINGS].max_body_bytes} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_error(exc.status, exc.reason)
        raise
    except db_errors.Unavailable:
        log.error("database unavailable", extra={"path": request.path})
        return json_error(503, "storage temporarily unavailable; retry")
    except Exception as exc:  # noqa: BLE001 - the last line of defence, logged as a bug
        translated = db_errors.translate(exc)
        if isinstance(translated, db_errors.Unavailable):
            log.error("database unavailable", extra={"path": request.path})
            return json_error(503, "storage temporarily unavailable; retry")
        log.exception("unhandled error", extra={"path": request.path})
        return json_error(500, "internal error")
