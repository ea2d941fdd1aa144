"""The WhatsApp Cloud API's send endpoint, `POST /{version}/{phone_number_id}/messages`, Bearer checked.

https://developers.facebook.com/documentation/business-messaging/whatsapp/messages/send-messages.
Answers `{"messaging_product", "contacts", "messages": [{"id": "wamid..."}]}`; errors are Graph's
`{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Final

import orjson
from aiohttp import web

from services.simulator import callbacks, keys
from services.simulator.config import META, TIMEOUT
from services.simulator.state import SimMessage, Store, now, wamid

BODY_MAX: Final = 4096
_HTTP_STATUS: Final = {0: 401, 190: 401, 10: 403, 4: 429, 1: 500, 2: 503, 131000: 500, 131016: 503, 133004: 503}
_TITLES: Final = {
    4: "Application request limit reached", 10: "Permission denied", 100: "Invalid parameter",
    190: "Invalid OAuth access token", 80007: "Rate limit issues", 130429: "Rate limit hit",
    131000: "Something went wrong", 131026: "Message undeliverable", 131047: "Re-engagement message",
    131048: "Spam rate limit hit", 131049: "Meta chose not to deliver", 131050: "User stopped marketing messages",
    131056: "(Business Account, Consumer Account) pair rate limit hit", 132000: "Number of parameters mismatch",
    132001: "Template does not exist",
}
TYPES: Final = ("text", "template")


def routes() -> list[web.RouteDef]:
    return [web.post(r"/{version:v[0-9]+\.[0-9]+}/{phone_number_id}/messages", send)]


def graph_error(code: int, message: str | None = None, *, status: int | None = None, subcode: int | None = None,
                error_type: str = "OAuthException", details: str | None = None) -> web.Response:
    title = _TITLES.get(code, f"Error {code}")
    error: dict[str, Any] = {"message": message or f"(#{code}) {title}", "type": error_type, "code": code,
                             "fbtrace_id": "A" + secrets.token_urlsafe(16)}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None or code >= 130000:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details or title}
    return web.json_response({"error": error}, status=status or _HTTP_STATUS.get(code, 400))


async def send(request: web.Request) -> web.Response:
    store = request.app[keys.STORE]
    phone_number_id = request.match_info["phone_number_id"]
    number = store.config.meta_numbers.get(phone_number_id)
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not token or number is None or not secrets.compare_digest(token, number.access_token):
        if number is None and token and any(n.access_token == token for n in store.config.meta_numbers.values()):
            return graph_error(100, (f"Unsupported post request. Object with ID '{phone_number_id}' does not exist, "
                                     "cannot be loaded due to missing permissions, or does not support this operation"),
                               subcode=33, error_type="GraphMethodException")
        store.errors["meta:190"] += 1
        return graph_error(190, "Invalid OAuth access token - Cannot parse access token")
    await store.latency()
    refusal, message = _validated(store, phone_number_id, await request.read())
    if refusal is not None:
        store.errors["meta:100"] += 1
        return refusal
    assert message is not None
    if store.take(phone_number_id) > 0:
        store.errors["meta:130429"] += 1
        return graph_error(130429, details="Cloud API message throughput has been reached.")
    injected = store.roll(store.knobs.error_rates, META)
    if injected is not None and injected != TIMEOUT:
        store.errors[f"meta:{injected}"] += 1
        return graph_error(int(injected))
    await store.add(message)
    failure = store.roll(store.knobs.failure_rates, META)
    store.spawn(callbacks.progress(request.app[keys.SESSION], store, message,
                                   int(failure) if failure and failure.isdigit() else None))
    if injected == TIMEOUT:
        store.errors["meta:timeout"] += 1
        await asyncio.sleep(store.knobs.hang_s)
    sent: dict[str, Any] = {"id": message.sid}
    if message.template is not None:
        sent["message_status"] = "accepted"
    to = message.to
    return web.json_response({"messaging_product": "whatsapp",
                              "contacts": [{"input": to, "wa_id": to.lstrip("+")}], "messages": [sent]})


def _param(name: str) -> web.Response:
    return graph_error(100, f"(#100) The parameter {name} is required.")


def _validated(store: Store, phone_number_id: str, raw: bytes) -> tuple[web.Response | None, SimMessage | None]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return graph_error(100, "(#100) Invalid parameter: the request body is not JSON"), None
    if not isinstance(data, dict):
        return graph_error(100, "(#100) Invalid parameter: the request body is not an object"), None
    if data.get("messaging_product") != "whatsapp":
        return _param("messaging_product"), None
    to = data.get("to")
    if not isinstance(to, str) or not to.lstrip("+").isdigit():
        return _param("to"), None
    kind = data.get("type", "text")
    body: str | None = None
    template: dict[str, Any] | None = None
    if kind == "text":
        text = data.get("text")
        body = text.get("body") if isinstance(text, dict) else None
        if not isinstance(body, str) or not body:
            return _param("text['body']"), None
        if len(body) > BODY_MAX:
            return graph_error(100, f"(#100) Param text['body'] must be at most {BODY_MAX} characters long."), None
    elif kind == "template":
        given = data.get("template")
        if not isinstance(given, dict) or not isinstance(given.get("name"), str) or not given["name"]:
            return _param("template['name']"), None
        language = given.get("language")
        if not isinstance(language, dict) or not isinstance(language.get("code"), str):
            return _param("template['language']['code']"), None
        template = given
    else:
        return graph_error(100, f"(#100) Param type must be one of {{{', '.join(TYPES).upper()}}}"), None
    callback_data = data.get("biz_opaque_callback_data")
    if callback_data is not None and (not isinstance(callback_data, str) or len(callback_data.encode()) > 512):
        return graph_error(100, "(#100) Param biz_opaque_callback_data must be at most 512 characters long."), None
    created = now()
    return None, SimMessage(
        seq=store.next_seq(), provider=META, channel="whatsapp", sid=wamid(), to=to, from_=None, body=body,
        status="accepted", created_at=created, updated_at=created, template=template,
        phone_number_id=phone_number_id, callback_data=callback_data)
