"""Provider webhooks: route, verify the signature with that channel's secret, parse, commit, acknowledge.

Contract (every handler): forged or unsigned, or signed with any secret but that of the channel the
request lands in → 403 and nothing stored; malformed → 400 naming the field; unknown receiving number
→ 404; well-formed but irrelevant → 200 so the provider stops retrying.
"""

from __future__ import annotations

import dataclasses
import logging

import orjson
from aiohttp import web

from db import errors as db_errors
from services import appkeys, phone
from services.channels import twilio, whatsapp_cloud
from services.channels.base import ChannelKind, InboundMessage, PayloadError, Provider, StatusUpdate, queue_id_from
from services.httperrors import OVERLOADED_RETRY_AFTER_S, json_error, retry_later
from services.inbound import batcher, store
from services.inbound.directory import Channel
from services.inbound.public_url import external_url
from services.orchestrator import reconcile

log = logging.getLogger("parley.inbound")

FORM = "application/x-www-form-urlencoded"
_EMPTY_FORM = twilio.Fields()


def routes() -> list[web.RouteDef]:
    return [
        web.post("/webhooks/twilio", twilio_inbound),
        web.post("/webhooks/twilio/status", twilio_status),
        web.get("/webhooks/whatsapp", whatsapp_handshake),
        web.post("/webhooks/whatsapp", whatsapp_inbound),
    ]


def _bad_request(exc: PayloadError) -> web.Response:
    # The one shape of every refused input (httperrors.bad_input), without another import here.
    return json_error(exc.status, exc.message, exc.field)


async def _twilio_form(request: web.Request) -> tuple[twilio.Fields, web.Response | None]:
    """The form as received (not yet verified); otherwise the refusal to send."""
    if request.content_type != FORM:
        # Checked before reading: Twilio always posts a form, and request.post() would read other
        # content types as an empty form.
        return _EMPTY_FORM, json_error(400, f"Content-Type must be {FORM}", "Content-Type")
    # Parsed as request.post() would (the same yarl parser, charset and field limit), straight into the
    # form we check and parse: post()'s MultiDict would only be copied again.
    body = await request.read()
    max_fields = request.client_max_fields
    if 0 < max_fields <= body.count(b"&"):  # the test yarl makes, before anything is decoded
        return _EMPTY_FORM, json_error(413, f"more than {max_fields} form fields", "body")
    try:
        form = twilio.form_fields(body.rstrip().decode(request.charset or "utf-8"))
    except LookupError:
        return _EMPTY_FORM, json_error(415, f"unsupported charset {request.charset}", "Content-Type")
    except PayloadError as exc:  # before ValueError, which it is
        return _EMPTY_FORM, _bad_request(exc)
    except ValueError:  # UnicodeDecodeError
        return _EMPTY_FORM, json_error(400, "body is not a valid urlencoded form", "body")
    return form, None


def _account_sid(form: twilio.Fields) -> str | web.Response:
    """The AccountSid a request claims. Without one there is no telling whose token should have signed
    it, so it is refused before any HMAC is spent on it."""
    account_sid = form.get("AccountSid")
    if not account_sid:
        return _bad_request(PayloadError("AccountSid", "is required"))
    return account_sid


def _our_number(form: twilio.Fields, name: str) -> tuple[ChannelKind, str | None]:
    """(channel kind, E.164) of the business number a form names, as the parsers read it; for a form
    they refuse, so that it can still be routed, verified and only then answered 400."""
    value = form.get(name) or ""
    kind = ChannelKind.TWILIO_WHATSAPP if value.startswith("whatsapp:") else ChannelKind.TWILIO_SMS
    return kind, phone.to_e164(value)


async def _verified_channel(request: web.Request, form: twilio.Fields, kind: ChannelKind, address: str | None,
                            messaging_service_sid: str | None,
                            account_sid: str) -> tuple[Channel | None, web.Response | None]:
    """Route first, then check the signature with the routed channel's own token: a request signed with
    any other token is refused, whatever it claims. When nothing routes, the claimed account's token
    (if any channel holds it) decides between 403 and the caller's answer for an unknown number."""
    directory = request.app[appkeys.DIRECTORY]
    channel = await directory.twilio_channel(kind, address, messaging_service_sid, account_sid)
    verifier = channel if channel is not None else await directory.twilio_account(account_sid)
    url = external_url(request, request.app[appkeys.RUNTIME].settings)
    signature = request.headers.get(twilio.SIGNATURE_HEADER)
    if verifier is None or not twilio.verify_signature(verifier.secret, url, form, signature):
        log.warning("twilio signature refused", extra={
            "path": request.path, "channel_id": verifier.id if verifier else None})
        return None, json_error(403, "invalid or missing X-Twilio-Signature", twilio.SIGNATURE_HEADER)
    return channel, None


async def twilio_inbound(request: web.Request) -> web.Response:
    form, refusal = await _twilio_form(request)
    if refusal is not None:
        return refusal
    account_sid = _account_sid(form)
    if isinstance(account_sid, web.Response):
        return account_sid
    # Parsed before the signature is checked, so that routing reads the number exactly as it is stored;
    # a parse error is only answered once the request has proven whose it is.
    msg: InboundMessage | None = None
    problem: PayloadError | None = None
    try:
        msg = twilio.parse_inbound(form)
    except PayloadError as exc:
        problem = exc
    to: str | None
    if msg is not None:
        kind, to, service = msg.channel_kind, msg.channel_address, msg.messaging_service_sid
    else:
        (kind, to), service = _our_number(form, "To"), form.get("MessagingServiceSid")
    channel, refusal = await _verified_channel(request, form, kind, to, service, account_sid)
    if refusal is not None:
        return refusal
    if problem is not None or msg is None:
        return _bad_request(problem or PayloadError("form", "is not a message"))
    if channel is not None and channel.is_catch_all:
        # Only now, verified, may the request create a row.
        channel = await request.app[appkeys.DIRECTORY].materialise(channel, msg.channel_address)
    if channel is None:
        return json_error(404, "unknown receiving number", "To")
    await _store(request, channel, msg)
    return web.Response(text=twilio.EMPTY_TWIML, content_type="text/xml")


async def twilio_status(request: web.Request) -> web.Response:
    form, refusal = await _twilio_form(request)
    if refusal is not None:
        return refusal
    account_sid = _account_sid(form)
    if isinstance(account_sid, web.Response):
        return account_sid
    update: StatusUpdate | None = None
    problem: PayloadError | None = None
    try:
        update = twilio.parse_status(form)
    except PayloadError as exc:
        problem = exc
    # A callback's From is our number: its channel names the tenant whose messages it may touch.
    kind, ours = _our_number(form, "From")
    channel, refusal = await _verified_channel(request, form, kind, ours, form.get("MessagingServiceSid"),
                                               account_sid)
    if refusal is not None:
        return refusal
    if problem is not None:
        return _bad_request(problem)
    if update is None:
        return web.Response(status=200)
    if channel is None:
        # Verified with the account's token, but no channel of ours sent from that number: there is no
        # tenant to record it for. 200, or Twilio would keep calling about it.
        log.info("status callback for a number no channel routes ignored", extra={"path": request.path})
        return web.Response(status=200)
    # Our queue id rides on the StatusCallback URL we sent (?q=<id>), which the signature covers.
    update = dataclasses.replace(update, queue_id=queue_id_from(request.query.get("q")))
    await reconcile.record_status(request.app[appkeys.RUNTIME].pool, channel.tenant_id, update)
    return web.Response(status=200)


async def whatsapp_handshake(request: web.Request) -> web.Response:
    for token in await request.app[appkeys.DIRECTORY].whatsapp_verify_tokens():
        challenge = whatsapp_cloud.verify_handshake(request.query, token)
        if challenge is not None:
            return web.Response(text=challenge, content_type="text/plain")
    return json_error(403, "verification failed", "hub.verify_token")


def _phone_number_ids(body: bytes) -> set[str]:
    """The business numbers a delivery's `messages` changes name, read before the signature is checked
    (to know whose secret must have signed it); the full parse comes after. Unreadable: none."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return set()
    ids: set[str] = set()
    entries = data.get("entry") if isinstance(data, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            if not isinstance(change, dict) or change.get("field") != whatsapp_cloud.MESSAGES_FIELD:
                continue
            value = change.get("value")
            metadata = value.get("metadata") if isinstance(value, dict) else None
            number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if isinstance(number, str):
                ids.add(number)
    return ids


async def whatsapp_inbound(request: web.Request) -> web.Response:
    body = await request.read()
    header = request.headers.get(whatsapp_cloud.SIGNATURE_HEADER)
    directory = request.app[appkeys.DIRECTORY]
    channels: dict[str, Channel] = {}
    for phone_number_id in _phone_number_ids(body):
        channel = await directory.whatsapp(phone_number_id)
        if channel is not None:
            channels[phone_number_id] = channel
    # One HMAC per distinct secret at most: the secrets of the numbers the delivery names or, when it
    # names none of ours, every app's (so that a genuine delivery still gets its 400, 404 or 200).
    candidates = {c.secret for c in channels.values() if c.secret} if channels else set(
        await directory.whatsapp_app_secrets())
    signer = next((s for s in candidates if whatsapp_cloud.verify_signature(s, body, header)), None)
    if signer is None:
        log.warning("whatsapp signature refused", extra={"path": request.path})
        return json_error(403, "invalid or missing X-Hub-Signature-256", "X-Hub-Signature-256")
    try:
        batch = whatsapp_cloud.parse_webhook(body)
    except PayloadError as exc:
        return _bad_request(exc)

    # A change is accepted only when the app that signed the delivery owns its number, or one tenant
    # could write into another's. The rest is logged and acknowledged: Meta would retry the whole
    # delivery, and finally drop the messages we did accept.
    accepted = {n: c for n, c in channels.items() if c.signed_with(signer)}
    for phone_number_id in sorted(batch.phone_number_ids - accepted.keys()):
        log.warning("whatsapp change ignored: " + ("signed by another app" if phone_number_id in channels
                                                   else "unknown phone_number_id"),
                    extra={"phone_number_id": phone_number_id})
    if batch.phone_number_ids and not accepted:
        unknown = min(batch.phone_number_ids)
        return json_error(404, f"unknown phone_number_id {unknown}", "metadata.phone_number_id")

    messages = [m for m in batch.messages if m.channel_address in accepted]
    updates = [u for u in batch.statuses if (u.channel_address or "") in accepted]
    for msg in messages:
        await _store(request, accepted[msg.channel_address], msg)
    pool = request.app[appkeys.RUNTIME].pool
    for update in updates:
        await reconcile.record_status(pool, accepted[update.channel_address or ""].tenant_id, update)
    return web.json_response({"received": len(messages), "statuses": len(updates),
                              "ignored": len(batch.messages) + len(batch.statuses) - len(messages) - len(updates)})


async def _store(request: web.Request, channel: Channel, msg: InboundMessage) -> None:
    """Commit the message; or, for Twilio when the database is out of reach, spool it (answered 200).

    Twilio does not redeliver a messaging webhook that failed, so a 503 would lose the SMS. Meta
    redelivers for hours, so a WhatsApp Cloud delivery gets the 503 and comes back. A full batcher is
    a 503 with Retry-After for both: memory stays bounded."""
    runtime = request.app[appkeys.RUNTIME]
    spool = request.app[appkeys.SPOOL]
    spoolable = msg.provider is Provider.TWILIO
    if spoolable and spool.pending:
        # Behind what is already spooled, so that a sender's messages are stored in arrival order.
        await spool.append(channel, msg)  # Full is Unavailable: the middleware answers 503
        return
    try:
        await store.ingest(runtime.pool, request.app[appkeys.BATCHER], channel, msg,
                           runtime.settings.task_max_attempts)
    except batcher.Overloaded:
        raise retry_later("ingest is saturated; retry", OVERLOADED_RETRY_AFTER_S) from None
    except Exception as exc:
        if not (spoolable and db_errors.unavailable(exc)):
            raise
        await spool.append(channel, msg)
