"""JSON error answers, and the middleware that guarantees no request ends in an unexplained 500."""

from __future__ import annotations

import json
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


# Seconds a client is told to wait when the database is out of reach (a restart takes a few) or
# ingest is saturated (a group commit takes milliseconds: the queue drains within a second).
UNAVAILABLE_RETRY_AFTER_S = 5
OVERLOADED_RETRY_AFTER_S = 1


def retry_later(message: str, retry_after_s: int) -> web.HTTPServiceUnavailable:
    """A 503 with Retry-After and the JSON error body, to raise from a handler."""
    return web.HTTPServiceUnavailable(text=json.dumps({"error": message}), content_type="application/json",
                                      headers={"Retry-After": str(retry_after_s)})


def _unavailable(request: web.Request) -> web.Response:
    log.error("database unavailable", extra={"path": request.path})
    response = json_error(503, "storage temporarily unavailable; retry")
    response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_S)
    return response


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
        return _unavailable(request)
    except Exception as exc:  # noqa: BLE001 - the last line of defence, logged as a bug
        if db_errors.unavailable(exc):
            return _unavailable(request)
        log.exception("unhandled error", extra={"path": request.path})
        return json_error(500, "internal error")
