"""JSON error answers, and the middleware that guarantees no request ends in an unexplained 500."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from db import errors as db_errors
from services import appkeys, badinput

log = logging.getLogger("parley.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Model = TypeVar("Model", bound=BaseModel)

# What aiohttp's own refusals are about, so they name a field like every other 4xx.
_HTTP_FIELDS = {404: "path", 405: "method", 413: "body", 414: "path", 431: "headers"}


def json_error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def bad_input(exc: badinput.BadInput) -> web.Response:
    """The answer to every refused input, webhooks and operator API alike."""
    return json_error(exc.status, exc.message, exc.field)


def parse_body(model: type[Model], raw: bytes) -> Model:
    """A JSON request body as `model`, or BadInput naming the first field pydantic refused."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise badinput.BadInput("body", "is not valid JSON") from None
        field = ".".join(str(p) for p in first["loc"]) or "body"
        problems = {"missing": "is required", "extra_forbidden": "is not a field of this body"}
        raise badinput.BadInput(field, problems.get(first["type"], f"is invalid: {first['msg']}")) from None


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
    except badinput.BadInput as exc:
        return bad_input(exc)
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"body larger than {request.app[appkeys.SETTINGS].max_body_bytes} bytes", "body")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_error(exc.status, exc.reason, _HTTP_FIELDS.get(exc.status, "request"))
        raise
    except db_errors.Unavailable:
        return _unavailable(request)
    except Exception as exc:  # noqa: BLE001 - the last line of defence, logged as a bug
        if db_errors.unavailable(exc):
            return _unavailable(request)
        log.exception("unhandled error", extra={"path": request.path})
        return json_error(500, "internal error")
