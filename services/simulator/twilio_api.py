"""Twilio's Messages API: create, fetch and list, in Twilio's JSON shapes, Basic auth checked.

https://www.twilio.com/docs/messaging/api/message-resource. Errors are Twilio's
`{"code", "message", "more_info", "status"}`; a body that is not a form reads as an empty one, as on
Twilio (a JSON body is answered 21604 "'To' phone number is required").
"""

from __future__ import annotations

import asyncio
import binascii
import math
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import orjson
from aiohttp import BasicAuth, web

from services.channels import segments
from services.simulator import callbacks, keys
from services.simulator.config import TIMEOUT, TWILIO
from services.simulator.state import SimMessage, Store, now, twilio_sid

API: Final = "/2010-04-01/Accounts/{account_sid}"
BODY_MAX: Final = 1600
PAGE_SIZE_MAX: Final = 1000

# HTTP status of the codes the simulator can be asked to answer with (400 otherwise).
_HTTP_STATUS: Final = {20003: 401, 20404: 404, 20429: 429, 20500: 500, 20503: 503}
_TITLES: Final = {
    20003: "Authenticate", 20404: "The requested resource was not found", 20429: "Too Many Requests",
    20500: "Internal Server Error", 20503: "Service Unavailable",
    21211: "Invalid 'To' Phone Number", 21408: "Permission to send an SMS has not been enabled for the region",
    21603: "A 'From' phone number is required.", 21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number.",
    21610: "Attempt to send to unsubscribed recipient", 21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21619: "A text message body or media urls must be specified.", 21609: "Invalid StatusCallback url",
    21656: "The ContentVariables Parameter is invalid.",
    21910: "Invalid From and To pair. From and To should be of the same channel.",
    63016: "Failed to send freeform message because you are outside the allowed window.",
    63018: "Rate limit exceeded for Channel",
}


def routes() -> list[web.RouteDef]:
    return [
        web.post(API + "/Messages.json", create),
        web.get(API + "/Messages.json", list_messages),
        web.get(API + "/Messages/{sid}.json", fetch),
    ]


def twilio_error(code: int, message: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    http_status = status or _HTTP_STATUS.get(code, 400)
    body = {"code": code, "message": message or _TITLES.get(code, f"Error {code}"),
            "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": http_status}
    return web.json_response(body, status=http_status, headers=headers)


def _authorised(request: web.Request, store: Store) -> str | web.Response:
    """The account in the URL, if the Basic credentials are its own or one of its API keys'."""
    account_sid = request.match_info["account_sid"]
    refused = twilio_error(20003, headers={"WWW-Authenticate": 'Basic realm="Twilio API"'})
    header = request.headers.get("Authorization")
    if not header:
        return refused
    try:
        credentials = BasicAuth.decode(header)
    except (ValueError, binascii.Error):
        return refused
    config = store.config
    token = config.twilio_accounts.get(account_sid)
    if credentials.login == account_sid and token is not None and credentials.password == token:
        return account_sid
    key = config.twilio_api_keys.get(credentials.login)
    if key is not None and key == (account_sid, credentials.password):
        return account_sid
    return refused


def _date(value: datetime | None) -> str | None:
    return format_datetime(value, usegmt=True).replace("GMT", "+0000") if value else None


def resource(message: SimMessage) -> dict[str, Any]:
    uri = f"/2010-04-01/Accounts/{message.account_sid}/Messages/{message.sid}"
    return {
        "account_sid": message.account_sid, "api_version": "2010-04-01", "body": message.body,
        "date_created": _date(message.created_at), "date_sent": _date(message.sent_at),
        "date_updated": _date(message.updated_at or message.created_at), "direction": "outbound-api",
        "error_code": message.error_code, "error_message": message.error_message, "from": message.from_,
        "messaging_service_sid": message.messaging_service_sid, "num_media": "0",
        "num_segments": str(message.num_segments), "price": None, "price_unit": "USD", "sid": message.sid,
        "status": message.status,
        "subresource_uris": {"media": uri + "/Media.json", "feedback": uri + "/Feedback.json"},
        "to": message.to, "uri": uri + ".json",
    }


async def create(request: web.Request) -> web.Response:
    store = request.app[keys.STORE]
    account_sid = _authorised(request, store)
    if isinstance(account_sid, web.Response):
        return account_sid
    await store.latency()
    try:
        form = await request.post() if request.content_type == callbacks.FORM else {}
    except ValueError:  # undecodable bytes: as good as no form
        form = {}
    refusal, message = _validated(store, account_sid, form)
    if refusal is not None:
        store.errors[f"twilio:{refusal.status}"] += 1
        return refusal
    assert message is not None
    sender = message.messaging_service_sid or message.from_ or ""
    wait = store.take(sender)
    if wait > 0:
        store.errors["twilio:20429"] += 1
        return twilio_error(20429, "Too Many Requests: over this sender's simulated throughput",
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})
    injected = store.roll(store.knobs.error_rates, TWILIO)
    if injected is not None and injected != TIMEOUT:
        store.errors[f"twilio:{injected}"] += 1
        return twilio_error(int(injected))
    await store.add(message)
    failure = store.roll(store.knobs.failure_rates, TWILIO)
    store.spawn(callbacks.progress(request.app[keys.SESSION], store, message,
                                   int(failure) if failure and failure.isdigit() else None))
    if injected == TIMEOUT:
        # Created, but the answer comes too late for the caller: a send whose outcome it cannot know.
        store.errors["twilio:timeout"] += 1
        await asyncio.sleep(store.knobs.hang_s)
    return web.json_response(resource(message), status=201)


def _validated(store: Store, account_sid: str, form: Any) -> tuple[web.Response | None, SimMessage | None]:
    to = form.get("To")
    if not to:
        return twilio_error(21604), None
    from_, service = form.get("From"), form.get("MessagingServiceSid")
    if not from_ and not service:
        return twilio_error(21603), None
    body, content_sid = form.get("Body"), form.get("ContentSid")
    if not body and not content_sid and not form.get("MediaUrl"):
        return twilio_error(21619), None
    if body and len(body) > BODY_MAX:
        return twilio_error(21617), None
    whatsapp = to.startswith("whatsapp:")
    if from_ and from_.startswith("whatsapp:") != whatsapp:
        return twilio_error(21910), None
    number = to.removeprefix("whatsapp:")
    if not (number.startswith("+") and number[1:].isdigit() and 8 <= len(number) <= 16):
        return twilio_error(21211, f"The 'To' number {to} is not a valid phone number."), None
    variables = form.get("ContentVariables")
    if variables is not None:
        try:
            if not isinstance(orjson.loads(variables), dict):
                raise ValueError(variables)
        except ValueError:
            return twilio_error(21656), None
    callback = form.get("StatusCallback")
    if callback is not None:
        parts = urlsplit(callback)
        if parts.scheme not in ("http", "https") or not parts.hostname or "_" in parts.hostname:
            return twilio_error(21609), None
    created = now()
    return None, SimMessage(
        seq=store.next_seq(), provider=TWILIO, channel="whatsapp" if whatsapp else "sms", sid=twilio_sid(),
        to=to, from_=from_ or _service_number(store, account_sid, whatsapp), body=body,
        # With a Messaging Service a message is "accepted" until a sender is picked, else "queued".
        status="accepted" if service else "queued", created_at=created, updated_at=created,
        account_sid=account_sid, messaging_service_sid=service, content_sid=content_sid,
        content_variables=variables, status_callback=callback,
        num_segments=segments.count(body).segments if body and not whatsapp else 1)


def _service_number(store: Store, account_sid: str, whatsapp: bool) -> str | None:
    """The number a Messaging Service picks: the account's first known one."""
    for number, owner in store.config.twilio_numbers.items():
        if owner == account_sid:
            return ("whatsapp:" if whatsapp else "") + number
    return None


async def fetch(request: web.Request) -> web.Response:
    store = request.app[keys.STORE]
    account_sid = _authorised(request, store)
    if isinstance(account_sid, web.Response):
        return account_sid
    await store.latency()
    message = store.by_sid.get(request.match_info["sid"])
    if message is None or message.account_sid != account_sid:
        return twilio_error(20404, f"The requested resource {request.path} was not found")
    return web.json_response(resource(message))


def _date_filter(value: str) -> datetime | None:
    """DateSent values: YYYY-MM-DD, or the SDK's YYYY-MM-DDTHH:MM:SSZ."""
    for pattern in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


async def list_messages(request: web.Request) -> web.Response:
    """Newest first, paged like Twilio (PageSize, Page, PageToken, next_page_uri). DateSent filters
    match only messages that have a date_sent, by day when given a day."""
    store = request.app[keys.STORE]
    account_sid = _authorised(request, store)
    if isinstance(account_sid, web.Response):
        return account_sid
    await store.latency()
    query = request.query
    try:
        page_size = min(int(query.get("PageSize", "50")), PAGE_SIZE_MAX)
        page = int(query.get("Page", "0"))
        if page_size < 1 or page < 0:
            raise ValueError(page_size)
    except ValueError:
        return twilio_error(20001, "Invalid paging parameters")
    filters: list[tuple[str, datetime, bool]] = []
    for name in ("DateSent", "DateSent<", "DateSent>"):
        if name in query:
            when = _date_filter(query[name])
            if when is None:
                return twilio_error(20001, f"Invalid {name}: {query[name]}")
            filters.append((name, when, len(query[name]) == 10))
    to, from_ = query.get("To"), query.get("From")
    matched = [m for m in reversed(store.messages) if m.provider == TWILIO and m.account_sid == account_sid
               and (to is None or m.to == to) and (from_ is None or m.from_ == from_)
               and all(_matches(m, *f) for f in filters)]
    records = matched[page * page_size:(page + 1) * page_size]
    base = API.format(account_sid=account_sid) + "/Messages.json"
    params = {k: v for k, v in query.items() if k not in ("Page", "PageToken")}

    def uri(n: int) -> str:
        return base + "?" + urlencode({**params, "PageSize": page_size, "Page": n, "PageToken": f"PA{n}"})

    more = (page + 1) * page_size < len(matched)
    return web.json_response({
        "messages": [resource(m) for m in records], "end": page * page_size + max(len(records) - 1, 0),
        "first_page_uri": uri(0), "next_page_uri": uri(page + 1) if more else None, "page": page,
        "page_size": page_size, "previous_page_uri": uri(page - 1) if page else None,
        "start": page * page_size, "uri": uri(page),
    })


def _matches(message: SimMessage, name: str, when: datetime, by_day: bool) -> bool:
    sent = message.sent_at
    if sent is None:
        return False
    if by_day:
        day, target = sent.date(), when.date()
        return {"DateSent": day == target, "DateSent<": day <= target, "DateSent>": day >= target}[name]
    return {"DateSent": sent == when, "DateSent<": sent <= when, "DateSent>": sent >= when}[name]
