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
    expected = request.config_dict[appkeys.RUNTIME].api_key
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        response = json_error(401, "missing or invalid bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="parley"'
        return response
    try:
        return await handler(request)
    except pagination.BadParameter as exc:
        return json_error(400, f"{exc.field} {exc.problem}", exc.field)


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
    return web.json_response({"status": "ready" if ready else "not ready", "checks": checks},
                             status=200 if ready else 503)


def phone_param(request: web.Request) -> str:
    raw = request.query.get("phone")
    if not raw:
        raise pagination.BadParameter("phone", "is required (E.164, e.g. +14155550123)")
    e164 = phone.to_e164(raw)
    if e164 is None:
        raise pagination.BadParameter("phone", "is not a valid phone number")
    return e164


async def list_users(request: web.Request) -> web.Response:
    e164 = phone_param(request)
    after, size = pagination.decode(request.query.get("cursor")), pagination.limit(request.query)
    async with _runtime(request).pool.acquire() as conn:
        rows = await conn.fetch(Q.users_by_phone, e164, after, size + 1)
    result = pagination.page(rows, size)
    for item in result["items"]:
        item["opted_out"] = item["consent_state"] == "opted_out"
    return web.json_response(result, dumps=dumps)


async def list_conversations(request: web.Request) -> web.Response:
    e164 = phone_param(request)
    after, size = pagination.decode(request.query.get("cursor")), pagination.limit(request.query)
    async with _runtime(request).pool.acquire() as conn:
        rows = await conn.fetch(Q.conversations_by_phone, e164, after, size + 1)
    return web.json_response(pagination.page(rows, size), dumps=dumps)


async def conversation_messages(request: web.Request) -> web.Response:
    conversation_id = int_path(request, "id")
    after, size = pagination.decode(request.query.get("cursor")), pagination.limit(request.query)
    async with _runtime(request).pool.acquire() as conn:
        if not await conn.fetchval(Q.conversation_exists, conversation_id):
            return json_error(404, "no such conversation", "id")
        rows = await conn.fetch(Q.conversation_messages, conversation_id, after, size + 1)
    return web.json_response(pagination.page(rows, size), dumps=dumps)


def int_path(request: web.Request, name: str) -> int:
    try:
        value = int(request.match_info[name])
    except ValueError:
        raise pagination.BadParameter(name, "must be an integer id") from None
    if not 0 < value < 2**63:
        raise pagination.BadParameter(name, "must be a positive integer id")
    return value


def _default(o: object) -> object:
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, Decimal):
        return float(o)
    raise TypeError(type(o).__name__)


def dumps(value: object) -> str:
    """JSON for API answers: timestamps in ISO 8601, numerics as numbers."""
    return json.dumps(value, default=_default, ensure_ascii=False)
