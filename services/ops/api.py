"""Operator API: JSON behind `Authorization: Bearer $PARLEY_API_KEY`."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal

from aiohttp import web

from db import migrate, queries
from services import appkeys, phone
from services.badinput import BadInput
from services.httperrors import json_error
from services.ops import pagination
from services.runtime import Runtime

Q = queries.load(__file__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes() -> list[web.RouteDef]:
    """Probes, open to the orchestrator that runs us."""
    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


def api_routes() -> list[web.RouteDef]:
    """Routes of the operator sub-application, mounted at /api (see `create_app`)."""
    return [
        web.get("/users", list_users),
        web.get("/conversations", list_conversations),
        web.get("/conversations/{id}/messages", conversation_messages),
    ]


def create_app(*route_tables: list[web.RouteDef]) -> web.Application:
    """The operator API, mounted at /api: everything under it, unknown paths included, needs the
    bearer token. A sub-application of its own, so webhooks never pass through this middleware.
    Its handlers read shared state through `request.config_dict`, which sees the parent's keys."""
    app = web.Application(middlewares=[auth_middleware])
    for routes_ in route_tables:
        app.add_routes(routes_)
    return app


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 unless `Authorization: Bearer <operator key>`. Refused input (BadInput) is rendered by the
    application's error middleware, like the webhooks'."""
    expected = request.config_dict[appkeys.RUNTIME].api_key.encode()
    # aiohttp decodes header bytes that are not UTF-8 to lone surrogates: compare bytes, as received.
    header = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), expected):
        response = json_error(401, "missing or invalid bearer token", "Authorization")
        response.headers["WWW-Authenticate"] = 'Bearer realm="parley"'
        return response
    return await handler(request)


def pager(request: web.Request, listing: str) -> pagination.Pager:
    """Cursors of the list `listing`, keyed from the operator key."""
    return pagination.Pager(pagination.cursor_key(_runtime(request).api_key), listing)


def _runtime(request: web.Request) -> Runtime:
    return request.config_dict[appkeys.RUNTIME]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    checks: dict[str, str] = {}
    try:
        async with runtime.pool.acquire(timeout=2) as conn:
            pending = await migrate.pending(conn)
        checks["database"] = "ok"
        checks["migrations"] = "ok" if not pending else f"pending: {', '.join(pending)}"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"unreachable ({type(exc).__name__})"
    if runtime.redis is not None:
        try:
            await runtime.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"unreachable ({type(exc).__name__})"
    ready = all(v == "ok" for v in checks.values())
    # Whether messages reach real phones or the embedded simulator (services/sandbox.py).
    return web.json_response({"status": "ready" if ready else "not ready", "checks": checks,
                              "sandbox": runtime.settings.sandbox is True},
                             status=200 if ready else 503)


def phone_param(request: web.Request) -> str:
    raw = request.query.get("phone")
    if not raw:
        raise BadInput("phone", "is required (E.164, e.g. +14155550123)")
    e164 = phone.to_e164(raw)
    if e164 is None:
        raise BadInput("phone", "is not a valid phone number")
    return e164


async def list_users(request: web.Request) -> web.Response:
    e164 = phone_param(request)
    pages = pager(request, "users")
    after, size = pages.position(request.query.get("cursor")), pagination.limit(request.query)
    async with _runtime(request).pool.acquire() as conn:
        rows = await conn.fetch(Q.users_by_phone, e164, after, size + 1)
    result = pages.page(rows, size)
    for item in result["items"]:
        item["opted_out"] = item["consent_state"] == "opted_out"
    return web.json_response(result, dumps=dumps)


async def list_conversations(request: web.Request) -> web.Response:
    e164 = phone_param(request)
    pages = pager(request, "conversations")
    after, size = pages.position(request.query.get("cursor")), pagination.limit(request.query)
    async with _runtime(request).pool.acquire() as conn:
        rows = await conn.fetch(Q.conversations_by_phone, e164, after, size + 1)
    return web.json_response(pages.page(rows, size), dumps=dumps)


async def conversation_messages(request: web.Request) -> web.Response:
    conversation_id = int_path(request, "id")
    # One conversation's messages are their own list: a cursor of another conversation is refused.
    pages = pager(request, f"conversations/{conversation_id}/messages")
    after, size = pages.position(request.query.get("cursor")), pagination.limit(request.query)
    async with _runtime(request).pool.acquire() as conn:
        if not await conn.fetchval(Q.conversation_exists, conversation_id):
            return json_error(404, "no such conversation", "id")
        rows = await conn.fetch(Q.conversation_messages, conversation_id, after, size + 1)
    return web.json_response(pages.page(rows, size), dumps=dumps)


def positive_id(name: str, raw: str) -> int:
    """A bigint id (1 to 2^63 - 1) written in ASCII digits, or BadInput naming `name`."""
    # Length first: int() of thousands of digits is slow, then refused anyway.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 0 < int(raw) < 2**63:
        raise BadInput(name, "must be a positive integer id (at most 2^63 - 1)")
    return int(raw)


def int_path(request: web.Request, name: str) -> int:
    return positive_id(name, request.match_info[name])


def _default(o: object) -> object:
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, Decimal):
        return float(o)
    raise TypeError(type(o).__name__)


def dumps(value: object) -> str:
    """JSON for API answers: timestamps in ISO 8601, numerics as numbers."""
    return json.dumps(value, default=_default, ensure_ascii=False)
