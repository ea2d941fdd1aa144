"""Operator API for outbound messages (issue 11, section 6): send, look up, list, cancel and retry queue
rows; a tenant's quiet hours, zone and budget; a user's zone, quiet-hours flag, limits and budget status.

Every route works on one tenant: `?tenant_id=` (default: the settings' default tenant). Another
tenant's message or user is answered 404, as one that does not exist. Reads are this module's
(messages_api.sql); writes go through their owners: the outbox (message_queue), services/tenants.py
(tenants), services/inbound/store.py (users, user_message_budget limits).
"""

from __future__ import annotations

import functools
import json
import zoneinfo
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, RootModel, StringConstraints

from db import errors as db_errors
from db import queries
from services import appkeys, badinput, phone, tenants
from services import profile as profile_mod
from services.badinput import BadInput
from services.channels.outbound import Template
from services.httperrors import json_error, parse_body
from services.inbound import store
from services.ops import pagination
from services.ops.api import dumps, int_path, pager, positive_id
from services.orchestrator import budget, outbox, policy
from services.orchestrator import quiet_hours as qh
from services.orchestrator.policy import MessageClass

Q = queries.load(__file__, "messages_api.sql")

# Operator keys live in a namespace of their own: an agent's keys ("help:<message id>") can never
# collide with what an operator sends.
KEY_PREFIX = "api:"
# Priorities operators may give; the agents' replies and confirmations sit at 80-100.
DEFAULT_PRIORITY = {MessageClass.REPLY: 70, MessageClass.TRANSACTIONAL: 50, MessageClass.MARKETING: 10}
STATUSES = frozenset(s.value for s in outbox.Status)
CLASSES = frozenset(c.value for c in MessageClass)
MAX_LIMIT = 100_000  # budget limits (the settings' own bound)


def routes() -> list[web.RouteDef]:
    return [
        web.post("/messages", send),
        web.get("/messages/{id}", get_message),
        web.post("/messages/{id}/cancel", cancel),
        web.post("/messages/{id}/retry", retry),
        web.get("/queue", list_queue),
        web.get("/tenant", get_tenant),
        web.patch("/tenant", patch_tenant),
        web.get("/tenant/faq", get_faq),
        web.put("/tenant/faq", put_faq),
        web.patch("/users/{id}", patch_user),
        web.get("/users/{id}/budget", user_budget),
    ]


# --- bodies ---------------------------------------------------------------------------------------

HHMM = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
Limit = Annotated[int, Field(ge=0, le=MAX_LIMIT)]


class TemplateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=512)
    language: str = Field(pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$")
    variables: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=50)


class SendRequest(BaseModel):
    """Body of POST /api/messages."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)
    to: str = Field(max_length=64)
    channel: outbox.ChannelFamily
    channel_id: int | None = Field(None, ge=1, le=2**63 - 1)
    body: str | None = Field(None, min_length=1, max_length=4096)
    template: TemplateBody | None = None
    klass: MessageClass = Field(alias="class")
    priority: int | None = Field(None, ge=-1000, le=1000)
    send_after: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)


class QuietHoursBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: HHMM
    end: HHMM


class BudgetBody(BaseModel):
    """Limits; a key left out keeps its value, null falls back (user: the tenant's; tenant: the settings')."""

    model_config = ConfigDict(extra="forbid")
    hourly_limit: Limit | None = None
    daily_limit: Limit | None = None


Text200 = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ProfileBody(BaseModel):
    """PATCH /api/tenant's `profile`: a key left out keeps its value, null resets it to its default."""

    model_config = ConfigDict(extra="forbid")
    business_name: Text200 | None = None
    industry: Text200 | None = None
    primary_service: Text200 | None = None
    booking_link: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = None
    tagline: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    tone: profile_mod.Tone | None = None
    language: Literal["en", "fr", "es"] | None = None
    followup_speed: profile_mod.FollowupSpeed | None = None
    ai_personalized_reply: bool | None = None
    opening_hours: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    handoff_message: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = None


class FaqBody(BaseModel):
    """One entry of PUT /api/tenant/faq."""

    model_config = ConfigDict(extra="forbid")
    question: Annotated[str, StringConstraints(min_length=1, max_length=profile_mod.MAX_QUESTION)]
    answer: Annotated[str, StringConstraints(min_length=1, max_length=profile_mod.MAX_ANSWER)]
    keywords: list[Annotated[str, StringConstraints(min_length=1, max_length=profile_mod.MAX_KEYWORD)]] = Field(
        default_factory=list, max_length=profile_mod.MAX_KEYWORDS)


class FaqList(RootModel[list[FaqBody]]):
    root: list[FaqBody] = Field(max_length=profile_mod.MAX_FAQ_ENTRIES)


class TenantPatch(BaseModel):
    """Body of PATCH /api/tenant. quiet_hours null: none; time_zone or budget null: the settings' default."""

    model_config = ConfigDict(extra="forbid")
    profile: ProfileBody | None = None
    quiet_hours: QuietHoursBody | None = None
    time_zone: str | None = Field(None, max_length=64)
    budget: BudgetBody | None = None


class UserPatch(BaseModel):
    """Body of PATCH /api/users/{id}. time_zone null: the number's zone, else the tenant's; budget null:
    the tenant's limits."""

    model_config = ConfigDict(extra="forbid")
    time_zone: str | None = Field(None, max_length=64)
    quiet_hours_enabled: bool = True
    budget: BudgetBody | None = None


# --- helpers --------------------------------------------------------------------------------------


async def _tenant(request: web.Request, conn: asyncpg.Connection) -> asyncpg.Record:
    raw = request.query.get("tenant_id")
    tenant_id = (request.config_dict[appkeys.RUNTIME].default_tenant_id if raw is None
                 else positive_id("tenant_id", raw))
    row = await conn.fetchrow(Q.tenant, tenant_id)
    if row is None:
        raise BadInput("tenant_id", "is not a tenant", 404)
    return row


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _zone_name(field: str, value: str | None) -> str | None:
    if value is not None and value not in _zones():
        raise BadInput(field, "is not an IANA time zone (e.g. America/New_York)", 422)
    return value


def _utc(field: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        # In UTC now: asyncpg converts on the way out, and 0001-01-01T00:00+01:00 has no UTC year.
        return value.astimezone(UTC)
    except OverflowError:
        raise BadInput(field, "is outside the years 1 to 9999 in UTC") from None


def _storable(field: str, value: str | None) -> str | None:
    return None if value is None else badinput.storable(field, value)


def _canonical(raw: bytes) -> str:
    """The request an idempotency key stands for: the body as JSON, keys sorted, the key itself left out."""
    document = json.loads(raw)
    document.pop("idempotency_key", None)
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _message(row: asyncpg.Record) -> dict[str, Any]:
    item = dict(row)
    name, language, variables = (item.pop("template_name"), item.pop("template_language"),
                                 item.pop("template_variables"))
    item["template"] = None if name is None else {"name": name, "language": language, "variables": variables}
    key = item.get("idempotency_key")
    if item["reason"] == outbox.Reason.OPERATOR and key and key.startswith(KEY_PREFIX):
        item["idempotency_key"] = key[len(KEY_PREFIX):]
    return item


async def _message_or_404(conn: asyncpg.Connection, tenant_id: int, queue_id: int) -> dict[str, Any]:
    row = await conn.fetchrow(Q.message, tenant_id, queue_id)
    if row is None:
        raise BadInput("id", "is not a message of this tenant", 404)
    return _message(row)


def _refused(exc: outbox.OutboxError) -> web.Response:
    status = {outbox.IdempotencyConflict: 409, outbox.WrongStatus: 409, outbox.NotFound: 404,
              outbox.NoSender: 422}.get(type(exc), 422)
    return json_error(status, f"{exc.field} {exc.problem}", exc.field)


def _opted_out(field: str) -> web.Response:
    return json_error(409, f"{field}: the recipient opted out; only their opt-out confirmation may be sent",
                      field)


def _json(value: object, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=dumps)


# --- messages -------------------------------------------------------------------------------------


async def send(request: web.Request) -> web.Response:
    """Queue a message: 202 with its row (the first row again for a repeated idempotency key)."""
    raw = await request.read()
    body = parse_body(SendRequest, raw)
    if body.klass is MessageClass.COMPLIANCE:
        raise BadInput("class", "compliance is for the consent confirmations Parley sends itself; "
                                "use transactional, marketing or reply", 422)
    if body.body is None and body.template is None:
        raise BadInput("body", "or template is required", 422)
    to = _storable("to", body.to)
    text = _storable("body", body.body)
    template = None
    if body.template is not None:
        for k, v in body.template.variables.items():
            badinput.storable("template.variables", k)
            badinput.storable(f"template.variables.{k}", v)
        template = Template(badinput.storable("template.name", body.template.name), body.template.language,
                            dict(body.template.variables))
    key = _storable("idempotency_key", body.idempotency_key)
    send_after, expires_at = _utc("send_after", body.send_after), _utc("expires_at", body.expires_at)
    now = datetime.now(UTC)
    if expires_at is not None and expires_at <= max(now, send_after or now):
        raise BadInput("expires_at", "must be in the future and after send_after", 422)
    pool = request.config_dict[appkeys.RUNTIME].pool
    try:
        async with pool.acquire() as conn, conn.transaction():
            tenant = await _tenant(request, conn)
            assert to is not None
            recipient = await outbox.resolve_recipient(conn, tenant["id"], to, body.channel, body.channel_id)
            queued = await outbox.enqueue(conn, outbox.Item(
                tenant_id=tenant["id"], user_id=recipient.user_id, conversation_id=recipient.conversation_id,
                channel_id=recipient.channel_id, klass=body.klass, reason=outbox.Reason.OPERATOR,
                priority=body.priority if body.priority is not None else DEFAULT_PRIORITY[body.klass],
                body=text, template=template, scheduled_for=send_after, expires_at=expires_at,
                idempotency_key=None if key is None else KEY_PREFIX + key, request=_canonical(raw)))
            row = await _message_or_404(conn, tenant["id"], queued.id)
    except outbox.OutboxError as exc:
        return _refused(exc)
    except db_errors.OptedOut:
        return _opted_out("to")
    if queued.created:
        outbox.wake(pool)
    return _json({**row, "created": queued.created}, 202)


async def get_message(request: web.Request) -> web.Response:
    queue_id = int_path(request, "id")
    async with request.config_dict[appkeys.RUNTIME].pool.acquire() as conn:
        tenant = await _tenant(request, conn)
        row = await _message_or_404(conn, tenant["id"], queue_id)
        verdicts = await conn.fetch(Q.verdicts, tenant["id"], queue_id)
    return _json({**row, "verdicts": [dict(v) for v in verdicts]})


async def cancel(request: web.Request) -> web.Response:
    return await _move(request, outbox.cancel)


async def retry(request: web.Request) -> web.Response:
    return await _move(request, outbox.requeue)


Move = Callable[[asyncpg.Connection, int, int], Awaitable[outbox.Moved]]


async def _move(request: web.Request, move: Move) -> web.Response:
    queue_id = int_path(request, "id")
    pool = request.config_dict[appkeys.RUNTIME].pool
    try:
        async with pool.acquire() as conn:
            tenant = await _tenant(request, conn)
            moved = await move(conn, tenant["id"], queue_id)
            row = await _message_or_404(conn, tenant["id"], queue_id)
    except outbox.OutboxError as exc:
        return _refused(exc)
    except db_errors.OptedOut:
        return _opted_out("id")
    if moved.status is outbox.Status.QUEUED:
        outbox.wake(pool)
    return _json({**row, "previous_status": moved.previous.value})


async def list_queue(request: web.Request) -> web.Response:
    """The tenant's queue, newest first; filters: phone, status, class."""
    raw_phone = request.query.get("phone")
    e164 = None
    if raw_phone is not None:
        e164 = phone.to_e164(raw_phone)
        if e164 is None:
            raise BadInput("phone", "is not a valid phone number")
    status = _choice(request, "status", STATUSES)
    klass = _choice(request, "class", CLASSES)
    async with request.config_dict[appkeys.RUNTIME].pool.acquire() as conn:
        tenant = await _tenant(request, conn)
        # Each tenant's queue is its own list: a cursor of another tenant's is refused.
        pages = pager(request, f"queue/{tenant['id']}")
        before, size = pages.position(request.query.get("cursor")), pagination.limit(request.query)
        rows = await conn.fetch(Q.queue, tenant["id"], before, size + 1, e164, status, klass)
    return _json(pages.page(rows, size))


def _choice(request: web.Request, name: str, allowed: frozenset[str]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        raise BadInput(name, f"must be one of {', '.join(sorted(allowed))}")
    return value


# --- tenant ---------------------------------------------------------------------------------------


def _tenant_view(row: asyncpg.Record, settings: policy.OutboundSettings) -> dict[str, Any]:
    effective = policy.tenant_policy(settings, row)
    hours = effective.quiet_hours
    return {
        "id": row["id"], "slug": row["slug"], "name": row["name"],
        "quiet_hours": None if hours is None else {"start": f"{hours.start:%H:%M}", "end": f"{hours.end:%H:%M}"},
        "time_zone": effective.time_zone,
        "budget": {"hourly_limit": effective.hourly_limit, "daily_limit": effective.daily_limit},
        # What the tenant sets itself; null: the settings' default (quiet_hours "": none at all).
        "overrides": {"quiet_hours": row["quiet_hours"], "time_zone": row["time_zone"],
                      "hourly_limit": row["budget_hourly"], "daily_limit": row["budget_daily"]},
        "default_senders": {"sms": row["default_sms_channel_id"], "whatsapp": row["default_whatsapp_channel_id"]},
        "updated_at": row["updated_at"],
    }


async def _with_profile(conn: asyncpg.Connection, view: dict[str, Any]) -> dict[str, Any]:
    found = await profile_mod.load(conn, view["id"])
    assert found is not None
    return {**view, "profile": found.as_json(), "faq": profile_mod.faq_json(found.faq)}


async def get_tenant(request: web.Request) -> web.Response:
    async with request.config_dict[appkeys.RUNTIME].pool.acquire() as conn:
        row = await _tenant(request, conn)
        view = await _with_profile(conn, _tenant_view(row, request.config_dict[appkeys.RUNTIME].settings))
    return _json(view)


def _profile_changes(body: ProfileBody) -> dict[str, object]:
    changes: dict[str, object] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        changes[name] = _storable(f"profile.{name}", value) if isinstance(value, str) else value
    return profile_mod.check_changes(changes)


async def get_faq(request: web.Request) -> web.Response:
    async with request.config_dict[appkeys.RUNTIME].pool.acquire() as conn:
        tenant = await _tenant(request, conn)
        found = await profile_mod.load(conn, tenant["id"])
    assert found is not None
    return _json(profile_mod.faq_json(found.faq))


async def put_faq(request: web.Request) -> web.Response:
    """Replace the tenant's FAQ with the body's list, in order."""
    body = parse_body(FaqList, await request.read())
    entries = [profile_mod.NewFaqEntry(badinput.storable(f"faq[{i}].question", e.question),
                                       badinput.storable(f"faq[{i}].answer", e.answer),
                                       tuple(badinput.storable(f"faq[{i}].keywords", k) for k in e.keywords))
               for i, e in enumerate(body.root)]
    profile_mod.check_faq(entries)
    async with request.config_dict[appkeys.RUNTIME].pool.acquire() as conn, conn.transaction():
        tenant = await _tenant(request, conn)
        await profile_mod.replace_faq(conn, tenant["id"], entries)
        found = await profile_mod.load(conn, tenant["id"])
    assert found is not None
    return _json(profile_mod.faq_json(found.faq))


async def patch_tenant(request: web.Request) -> web.Response:
    body = parse_body(TenantPatch, await request.read())
    changes: dict[str, object] = {}
    if "quiet_hours" in body.model_fields_set:
        window = body.quiet_hours
        if window is None:
            changes["quiet_hours"] = ""
        else:
            text = f"{window.start}-{window.end}"
            qh.parse(text)  # BadInput("quiet_hours") for a window that starts where it ends
            changes["quiet_hours"] = text
    if "time_zone" in body.model_fields_set:
        changes["time_zone"] = _zone_name("time_zone", body.time_zone)
    if "budget" in body.model_fields_set:
        limits = body.budget
        if limits is None:
            changes["budget_hourly"] = changes["budget_daily"] = None
        else:
            if "hourly_limit" in limits.model_fields_set:
                changes["budget_hourly"] = limits.hourly_limit
            if "daily_limit" in limits.model_fields_set:
                changes["budget_daily"] = limits.daily_limit
    profile_changes = _profile_changes(body.profile) if body.profile is not None else {}
    runtime = request.config_dict[appkeys.RUNTIME]
    async with runtime.pool.acquire() as conn, conn.transaction():
        tenant = await _tenant(request, conn)
        if changes:
            await tenants.set_policy(conn, tenant["id"], changes)
        if profile_changes:
            await profile_mod.set_profile(conn, tenant["id"], profile_changes)
        row = await conn.fetchrow(Q.tenant, tenant["id"])
        view = await _with_profile(conn, _tenant_view(row, runtime.settings))
    return _json(view)


# --- users ----------------------------------------------------------------------------------------


async def _user_or_404(conn: asyncpg.Connection, tenant_id: int, user_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(Q.user, tenant_id, user_id)
    if row is None:
        raise BadInput("id", "is not a user of this tenant", 404)
    return row


def _user_view(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "phone": row["phone"], "time_zone": row["time_zone"],
            "quiet_hours_enabled": row["quiet_hours_enabled"], "consent_state": row["consent_state"],
            # null: the tenant's
            "budget": {"hourly_limit": row["hourly_limit"], "daily_limit": row["daily_limit"]}}


async def patch_user(request: web.Request) -> web.Response:
    user_id = int_path(request, "id")
    body = parse_body(UserPatch, await request.read())
    fields = body.model_fields_set
    preferences: dict[str, Any] = {}
    if "time_zone" in fields:
        preferences["time_zone"] = _zone_name("time_zone", body.time_zone)
    if "quiet_hours_enabled" in fields:
        preferences["quiet_hours_enabled"] = body.quiet_hours_enabled
    async with request.config_dict[appkeys.RUNTIME].pool.acquire() as conn, conn.transaction():
        tenant = await _tenant(request, conn)
        current = await _user_or_404(conn, tenant["id"], user_id)
        if preferences:
            await store.set_preferences(conn, tenant["id"], user_id, **preferences)
        if "budget" in fields:
            limits = body.budget
            hourly, daily = current["hourly_limit"], current["daily_limit"]
            if limits is None:
                hourly = daily = None
            else:
                if "hourly_limit" in limits.model_fields_set:
                    hourly = limits.hourly_limit
                if "daily_limit" in limits.model_fields_set:
                    daily = limits.daily_limit
            await store.set_budget_limits(conn, tenant["id"], user_id, hourly, daily)
        row = await _user_or_404(conn, tenant["id"], user_id)
    return _json(_user_view(row))


def _at(request: web.Request) -> datetime:
    raw = request.query.get("at")
    if raw is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadInput("at", "must be an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        raise BadInput("at", "must carry a time zone offset (e.g. Z or +00:00)")
    at = _utc("at", value)
    assert at is not None
    return at


async def user_budget(request: web.Request) -> web.Response:
    """Where a user stands at `?at=` (default now): limits, used this local hour and day, and when the
    next proactive message (and the next reply) may go, budget, spacing and quiet hours considered."""
    user_id = int_path(request, "id")
    at = _at(request)
    runtime = request.config_dict[appkeys.RUNTIME]
    async with runtime.pool.acquire() as conn:
        tenant = await _tenant(request, conn)
        row = await _user_or_404(conn, tenant["id"], user_id)
    effective = policy.tenant_policy(runtime.settings, tenant)
    zone = policy.recipient_zone(row["time_zone"], row["phone"], effective)
    counters = budget.Counters.from_row(row)
    hours = effective.quiet_hours if row["quiet_hours_enabled"] else None
    try:
        status = budget.status(counters, effective, zone, at)
        quiet_until = None if hours is None else qh.quiet_until(hours, at, zone)
        next_message_at = _next_message_at(counters, effective, hours, zone, at)
    except OverflowError:
        # The windows around the calendar's first and last days have bounds datetime cannot hold.
        raise BadInput("at", "is too close to the years 1 or 9999") from None
    return _json({
        "user_id": row["id"], "at": at, "time_zone": zone.key,
        "hourly_limit": status.hourly_limit, "daily_limit": status.daily_limit,
        "limits_from": {"hourly": "user" if row["hourly_limit"] is not None else "tenant",
                        "daily": "user" if row["daily_limit"] is not None else "tenant"},
        "used_this_hour": status.used_hour, "used_today": status.used_day,
        "hour_start": status.hour_start, "day_start": status.day_start,
        "next_hour_at": status.next_hour_at, "next_day_at": status.next_day_at,
        "replies_this_hour": status.reply_used_hour, "reply_limit_hourly": status.reply_limit_hourly,
        "spacing_until": status.spacing_until, "budget_until": status.budget_until,
        "quiet_until": quiet_until,
        # When the next marketing or transactional message may go (`at` itself: at once).
        "next_message_at": next_message_at,
        "next_reply_at": status.next_reply_allowed_at or at,
    })


def _next_message_at(counters: budget.Counters, effective: policy.Policy, hours: qh.QuietHours | None,
                     zone: zoneinfo.ZoneInfo, at: datetime) -> datetime:
    """The first instant from `at` at which budget, spacing and quiet hours all let a proactive message
    go: each wait can end inside another (a budget that frees at 22:00 inside quiet hours), so step
    from one end to the next until none holds."""
    moment = at
    for _ in range(8):
        waits = [budget.status(counters, effective, zone, moment).next_allowed_at]
        if hours is not None:
            waits.append(qh.quiet_until(hours, moment, zone))
        later = [w for w in waits if w is not None and w > moment]
        if not later:
            return moment
        moment = max(later)
    return moment
