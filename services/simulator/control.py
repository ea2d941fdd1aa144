"""The control API under /sim/: what was sent (long-poll), inbound messages to Parley, knobs, reset, stats.

Every refusal is `{"error": "<field> <problem>", "field": "<field>"}`, as Parley's own API answers.
"""

from __future__ import annotations

import secrets
from typing import Final, Literal
from urllib.parse import urlencode

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services import badinput
from services.simulator import callbacks, keys
from services.simulator.config import KnobsUpdate, knobs_json
from services.simulator.state import e164

WAIT_MAX_S: Final = 60.0


def routes() -> list[web.RouteDef]:
    return [
        web.get("/sim/messages", messages),
        web.post("/sim/inbound", inbound),
        web.get("/sim/config", get_config),
        web.post("/sim/config", set_config),
        web.post("/sim/reset", reset),
        web.get("/sim/stats", stats),
    ]


def refused(exc: badinput.BadInput) -> web.Response:
    return web.json_response({"error": exc.message, "field": exc.field}, status=exc.status)


def _number(name: str, value: str, *, default: float, high: float) -> float:
    try:
        number = float(value) if value != "" else default
    except ValueError:
        raise badinput.BadInput(name, "must be a number") from None
    if not 0 <= number <= high:
        raise badinput.BadInput(name, f"must be between 0 and {high:g}")
    return number


async def messages(request: web.Request) -> web.Response:
    """`?to=+1...&after=<seq>&wait=<s>`: accepted messages after `after`, in order; with `wait`, held
    open until the first arrives or `wait` runs out (then an empty list)."""
    store = request.app[keys.STORE]
    try:
        after = int(_number("after", request.query.get("after", ""), default=0, high=1e12))
        wait = _number("wait", request.query.get("wait", ""), default=0, high=WAIT_MAX_S)
        to = request.query.get("to")
        if to is not None and not (e164(to) or "x")[1:].isdigit():
            raise badinput.BadInput("to", "must be a phone number")
    except badinput.BadInput as exc:
        return refused(exc)
    found = await store.wait_for(after, e164(to) if to else None, wait)
    return web.json_response({"messages": [m.as_json() for m in found],
                              "last": found[-1].seq if found else max(after, 0)})


class Inbound(BaseModel):
    """`{"channel": "sms" | "whatsapp" | "twilio_whatsapp", "from": "+1...", "to": ..., "body": ...}`:
    `whatsapp` is the Cloud API (`to` a phone_number_id), the others Twilio (`to` our E.164 number).
    `to` may be left out when one number of that kind is configured."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    channel: Literal["sms", "whatsapp", "twilio_whatsapp"]
    from_: str = Field(alias="from", min_length=2, max_length=32)
    to: str | None = Field(None, max_length=64)
    body: str = Field(max_length=4096)
    profile_name: str | None = Field(None, max_length=256)


def _parse_inbound(raw: bytes) -> Inbound:
    try:
        return Inbound.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise badinput.BadInput(field, first["msg"].lower()) from None


async def inbound(request: web.Request) -> web.Response:
    """Post a correctly signed inbound webhook to Parley; answers with what Parley answered."""
    store = request.app[keys.STORE]
    config = store.config
    try:
        given = _parse_inbound(await request.read())
        sender = e164(given.from_)
        if sender is None or not sender[1:].isdigit():
            raise badinput.BadInput("from", "must be a phone number in E.164 form")
        public = config.public_url
        if public is None:
            raise badinput.BadInput("parley_url", "is not configured (parley simulate --parley-url)", status=409)
        if given.channel == "whatsapp":
            url, body, headers = _meta(request, given, sender, public)
        else:
            url, body, headers = _twilio(request, given, sender, public)
    except badinput.BadInput as exc:
        return refused(exc)
    store.stats["inbound"] += 1
    status, answer = await callbacks.post(request.app[keys.SESSION], store, url, body, headers, "inbound")
    return web.json_response({"status": status, "answer": answer[:2000]}, status=200 if status else 502)


def _twilio(request: web.Request, given: Inbound, sender: str, public: str) -> tuple[str, bytes, dict[str, str]]:
    config = request.app[keys.STORE].config
    to = e164(given.to) if given.to else None
    if to is None:
        if len(config.twilio_numbers) != 1:
            raise badinput.BadInput("to", "is required unless exactly one Twilio number is configured")
        to = next(iter(config.twilio_numbers))
    account_sid = config.twilio_numbers.get(to)
    if account_sid is None and len(config.twilio_accounts) == 1:
        account_sid = next(iter(config.twilio_accounts))
    token = config.twilio_accounts.get(account_sid or "")
    if account_sid is None or token is None:
        raise badinput.BadInput("to", f"{to} is not a number of a configured Twilio account")
    form = callbacks.twilio_inbound_form(account_sid, sender, to, given.body, given.channel == "twilio_whatsapp",
                                         given.profile_name)
    url = public + "/webhooks/twilio"
    headers = {"Content-Type": callbacks.FORM, callbacks.TWILIO_SIGNATURE: callbacks.twilio_signature(token, url, form),
               "I-Twilio-Idempotency-Token": secrets.token_hex(16)}
    return url, urlencode(form).encode(), headers


def _meta(request: web.Request, given: Inbound, sender: str, public: str) -> tuple[str, bytes, dict[str, str]]:
    numbers = request.app[keys.STORE].config.meta_numbers
    if given.to is None:
        if len(numbers) != 1:
            raise badinput.BadInput("to", "is required unless exactly one WhatsApp number is configured")
        number = next(iter(numbers.values()))
    else:
        found = numbers.get(given.to) or next(
            (n for n in numbers.values() if n.display_phone_number == given.to.lstrip("+")), None)
        if found is None:
            raise badinput.BadInput("to", f"{given.to} is not a configured phone_number_id")
        number = found
    body = orjson.dumps(callbacks.meta_inbound_payload(number, sender, given.body, given.profile_name))
    headers = {"Content-Type": "application/json",
               callbacks.META_SIGNATURE: callbacks.meta_signature(number.app_secret, body)}
    return public + "/webhooks/whatsapp", body, headers


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(knobs_json(request.app[keys.STORE].knobs))


async def set_config(request: web.Request) -> web.Response:
    store = request.app[keys.STORE]
    try:
        try:
            update = KnobsUpdate.model_validate_json(await request.read())
        except ValidationError as exc:
            first = exc.errors()[0]
            raise badinput.BadInput(".".join(str(p) for p in first["loc"]) or "body", first["msg"].lower()) from None
        knobs = store.knobs
        staged = type(knobs)(**{name: getattr(knobs, name) for name in knobs.__slots__})
        update.apply(staged)  # all or nothing: a refused rate leaves the knobs as they were
    except badinput.BadInput as exc:
        return refused(exc)
    store.knobs = staged
    return web.json_response(knobs_json(staged))


async def reset(request: web.Request) -> web.Response:
    request.app[keys.STORE].reset()
    return web.json_response({"reset": True})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[keys.STORE].stats_json())
