"""Operator API for the agents: the decision log, leads and their tags, dead letters."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents import leads, worker
from db import queries
from services import appkeys
from services.httperrors import json_error
from services.ops import pagination
from services.ops.api import dumps, int_path, phone_param

Q = queries.load(__file__, "queries.sql")

LOG_STATUSES = {"ok", "fallback", "possible_opt_out", "skipped", "error"}


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
        raise pagination.BadParameter(name, "must be an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        raise pagination.BadParameter(name, "must carry a time zone offset (e.g. Z or +00:00)")
    return value


def _optional_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise pagination.BadParameter(name, "must be an integer") from None
    if not 0 < value < 2**63:
        raise pagination.BadParameter(name, "must be a positive integer")
    return value


async def agent_logs(request: web.Request) -> web.Response:
    """Decision log, newest first; filters: agent, conversation_id, status, since, until, tenant_id."""
    status = request.query.get("status")
    if status is not None and status not in LOG_STATUSES:
        raise pagination.BadParameter("status", f"must be one of {', '.join(sorted(LOG_STATUSES))}")
    before, size = pagination.decode(request.query.get("cursor")), pagination.limit(request.query)
    async with request.config_dict[appkeys.RUNTIME].pool.acquire() as conn:
        rows = await conn.fetch(Q.agent_logs, before, size + 1, request.query.get("agent"),
                                _optional_int(request, "conversation_id"), status, _time(request, "since"),
                                _time(request, "until"), _optional_int(request, "tenant_id"))
    return web.json_response(pagination.page(rows, size), dumps=dumps)


async def list_leads(request: web.Request) -> web.Response:
    phone = phone_param(request)
    after, size = pagination.decode(request.query.get("cursor")), pagination.limit(request.query)
    rows = await leads.by_phone(request.config_dict[appkeys.RUNTIME].pool, phone, after, size + 1)
    return web.json_response(pagination.page(rows, size), dumps=dumps)


async def get_lead(request: web.Request) -> web.Response:
    lead = await leads.get(request.config_dict[appkeys.RUNTIME].pool, int_path(request, "id"))
    if lead is None:
        return json_error(404, "no such lead", "id")
    return web.json_response(lead, dumps=dumps)


async def tag_lead(request: web.Request) -> web.Response:
    lead_id = int_path(request, "id")
    try:
        body = TagRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        return json_error(400, f"{field}: {first['msg']}", field)
    try:
        pool = request.config_dict[appkeys.RUNTIME].pool
        lead = await leads.set_tag(pool, lead_id, body.tag, body.actor, body.reason)
    except leads.TagError as exc:
        return json_error(400, f"{exc.field} {exc.problem}", exc.field)
    if lead is None:
        return json_error(404, "no such lead", "id")
    return web.json_response(lead, dumps=dumps)


async def dead_letters(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status is not None and status not in {"dead", "requeued"}:
        raise pagination.BadParameter("status", "must be dead or requeued")
    after, size = pagination.decode(request.query.get("cursor")), pagination.limit(request.query)
    async with request.config_dict[appkeys.RUNTIME].pool.acquire() as conn:
        rows = await conn.fetch(Q.dead_letters, after, size + 1, status)
    return web.json_response(pagination.page(rows, size), dumps=dumps)


async def requeue(request: web.Request) -> web.Response:
    letter_id = int_path(request, "id")
    task_id = await worker.requeue_dead_letter(request.config_dict[appkeys.RUNTIME].pool, letter_id, "operator")
    if task_id is None:
        return json_error(404, "no such dead letter, or already requeued", "id")
    return web.json_response({"dead_letter_id": letter_id, "agent_task_id": task_id, "status": "requeued"})
