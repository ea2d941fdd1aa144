"""Operator API for the agents: the decision log, leads and their tags, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agents import decision_log, leads, worker
from db import queries
from services import appkeys, badinput
from services.badinput import BadInput
from services.httperrors import json_error, parse_body
from services.ops import pagination
from services.ops.api import dumps, int_path, pager, phone_param, positive_id

Q = queries.load(__file__, "queries.sql")

LOG_STATUSES = frozenset(s.value for s in decision_log.Status)
DEAD_LETTER_STATUSES = frozenset({"dead", "requeued"})
_MAX_TEXT_PARAM = 200


def routes() -> list[web.RouteDef]:
    return [
        web.get("/agent-logs", agent_logs),
        web.get("/leads", list_leads),
        web.get("/leads/{id}", get_lead),
        web.post("/leads/{id}/tag", tag_lead),
        web.get("/dead-letters", dead_letters),
        web.post("/dead-letters/{id}/requeue", requeue),
    ]


class TagRequest(BaseModel):
    """Body of POST /api/leads/{id}/tag."""

    model_config = ConfigDict(extra="forbid")
    tag: leads.Tag
    reason: str | None = Field(None, max_length=1000)
    actor: str = Field("operator", min_length=1, max_length=200)


def _time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadInput(name, "must be an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        raise BadInput(name, "must carry a time zone offset (e.g. Z or +00:00)")
    try:
        # In UTC now: asyncpg converts on the way out, and 0001-01-01T00:00+01:00 has no UTC year.
        return value.astimezone(UTC)
    except OverflowError:
        raise BadInput(name, "is outside the years 1 to 9999 in UTC") from None


def _optional_id(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    return None if raw is None else positive_id(name, raw)


def _choice(request: web.Request, name: str, allowed: frozenset[str]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        raise BadInput(name, f"must be one of {', '.join(sorted(allowed))}")
    return value


def _text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None:
        return None
    if len(value) > _MAX_TEXT_PARAM:
        raise BadInput(name, f"must be at most {_MAX_TEXT_PARAM} characters")
    return badinput.storable(name, value)


async def agent_logs(request: web.Request) -> web.Response:
    """Decision log, newest first; filters: agent, conversation_id, status, since, until, tenant_id."""
    status = _choice(request, "status", LOG_STATUSES)
    pages = pager(request, "agent-logs")
    before, size = pages.position(request.query.get("cursor")), pagination.limit(request.query)
    async with request.config_dict[appkeys.RUNTIME].pool.acquire() as conn:
        rows = await conn.fetch(Q.agent_logs, before, size + 1, _text(request, "agent"),
                                _optional_id(request, "conversation_id"), status, _time(request, "since"),
                                _time(request, "until"), _optional_id(request, "tenant_id"))
    return web.json_response(pages.page(rows, size), dumps=dumps)


async def list_leads(request: web.Request) -> web.Response:
    phone = phone_param(request)
    pages = pager(request, "leads")
    after, size = pages.position(request.query.get("cursor")), pagination.limit(request.query)
    rows = await leads.by_phone(request.config_dict[appkeys.RUNTIME].pool, phone, after, size + 1)
    return web.json_response(pages.page(rows, size), dumps=dumps)


async def get_lead(request: web.Request) -> web.Response:
    lead = await leads.get(request.config_dict[appkeys.RUNTIME].pool, int_path(request, "id"))
    if lead is None:
        return json_error(404, "no such lead", "id")
    return web.json_response(lead, dumps=dumps)


async def tag_lead(request: web.Request) -> web.Response:
    lead_id = int_path(request, "id")
    body = parse_body(TagRequest, await request.read())
    lead = await leads.set_tag(request.config_dict[appkeys.RUNTIME].pool, lead_id, body.tag, body.actor, body.reason)
    if lead is None:
        return json_error(404, "no such lead", "id")
    return web.json_response(lead, dumps=dumps)


async def dead_letters(request: web.Request) -> web.Response:
    status = _choice(request, "status", DEAD_LETTER_STATUSES)
    pages = pager(request, "dead-letters")
    after, size = pages.position(request.query.get("cursor")), pagination.limit(request.query)
    async with request.config_dict[appkeys.RUNTIME].pool.acquire() as conn:
        rows = await conn.fetch(Q.dead_letters, after, size + 1, status)
    return web.json_response(pages.page(rows, size), dumps=dumps)


async def requeue(request: web.Request) -> web.Response:
    letter_id = int_path(request, "id")
    task_id = await worker.requeue_dead_letter(request.config_dict[appkeys.RUNTIME].pool, letter_id, "operator")
    if task_id is None:
        return json_error(404, "no such dead letter, or already requeued", "id")
    return web.json_response({"dead_letter_id": letter_id, "agent_task_id": task_id, "status": "requeued"})
