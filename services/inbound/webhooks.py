"""Provider webhooks: verify the signature first, parse, route, commit, then acknowledge.

Contract (every handler): forged or unsigned → 403 and nothing stored; malformed → 400 naming the
field; unknown receiving number → 404; well-formed but irrelevant → 200 so the provider stops retrying.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from db import errors as db_errors
from services import appkeys
from services.channels import twilio, whatsapp_cloud
from services.channels.base import ChannelKind, InboundMessage, PayloadError, Provider
from services.httperrors import OVERLOADED_RETRY_AFTER_S, json_error, retry_later
from services.inbound import batcher, store
from services.inbound.directory import Channel
from services.inbound.public_url import external_url

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
    return json_error(400, f"malformed payload: {exc.field} {exc.problem}", exc.field)


async def _twilio_form(request: web.Request) -> tuple[twilio.Fields, web.Response | None]:
    """The form, once its signature is proven; otherwise the refusal to send."""
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
    signature = request.headers.get(twilio.SIGNATURE_HEADER)
    url = external_url(request, request.app[appkeys.RUNTIME].settings)
    account_sid = form.get("AccountSid")
    tokens = await request.app[appkeys.DIRECTORY].twilio_tokens(account_sid if isinstance(account_sid, str) else None)
    if not signature or not any(twilio.verify_signature(t, url, form, signature) for t in tokens):
        log.warning("twilio signature refused", extra={"path": request.path})
        return _EMPTY_FORM, json_error(403, "invalid or missing X-Twilio-Signature")
    return form, None


def _text(form: twilio.Fields, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def twilio_inbound(request: web.Request) -> web.Response:
    form, refusal = await _twilio_form(request)
    if refusal is not None:
        return refusal
    try:
        msg = twilio.parse_inbound(form)
    except PayloadError as exc:
        return _bad_request(exc)
    channel = await request.app[appkeys.DIRECTORY].route_twilio(msg.channel_kind, msg.channel_address,
                                                                msg.messaging_service_sid, msg.account_sid)
    if channel is None:
        return json_error(404, "unknown receiving number", "To")
    await _store(request, channel, msg)
    return web.Response(text=twilio.EMPTY_TWIML, content_type="text/xml")


async def twilio_status(request: web.Request) -> web.Response:
    form, refusal = await _twilio_form(request)
    if refusal is not None:
        return refusal
    try:
        update = twilio.parse_status(form)
    except PayloadError as exc:
        return _bad_request(exc)
    if update is None:
        return web.Response(status=200)
    # The callback's From is our number: it names the tenant the history row belongs to.
    channel = None
    if update.channel_address:
        kind = (ChannelKind.TWILIO_WHATSAPP if (_text(form, "From") or "").startswith("whatsapp:")
                else ChannelKind.TWILIO_SMS)
        channel = await request.app[appkeys.DIRECTORY].route_twilio(
            kind, update.channel_address, _text(form, "MessagingServiceSid"), _text(form, "AccountSid"))
    await store.record_status(request.app[appkeys.RUNTIME].pool, channel.tenant_id if channel else None, update)
    return web.Response(status=200)


async def whatsapp_handshake(request: web.Request) -> web.Response:
    for token in await request.app[appkeys.DIRECTORY].whatsapp_verify_tokens():
        challenge = whatsapp_cloud.verify_handshake(request.query, token)
        if challenge is not None:
            return web.Response(text=challenge, content_type="text/plain")
    return json_error(403, "verification failed")


async def whatsapp_inbound(request: web.Request) -> web.Response:
    body = await request.read()
    header = request.headers.get("X-Hub-Signature-256")
    secret = next((s for s in await request.app[appkeys.DIRECTORY].whatsapp_app_secrets()
                   if whatsapp_cloud.verify_signature(s, body, header)), None)
    if secret is None:
        log.warning("whatsapp signature refused", extra={"path": request.path})
        return json_error(403, "invalid or missing X-Hub-Signature-256")
    try:
        batch = whatsapp_cloud.parse_webhook(body)
    except PayloadError as exc:
        return _bad_request(exc)

    # Route everything before storing anything: a batch is accepted or refused whole.
    channels: dict[str, Channel] = {}
    for phone_number_id in batch.phone_number_ids:
        channel = await request.app[appkeys.DIRECTORY].whatsapp(phone_number_id)
        # The app that signed the delivery must own the number, or one tenant could write into another's.
        if channel is None or not hmac.compare_digest(channel.credentials.get("app_secret", ""), secret):
            return json_error(404, f"unknown phone_number_id {phone_number_id}", "metadata.phone_number_id")
        channels[phone_number_id] = channel

    for msg in batch.messages:
        await _store(request, channels[msg.channel_address], msg)
    pool = request.app[appkeys.RUNTIME].pool
    for update in batch.statuses:
        channel = channels.get(update.channel_address or "")
        await store.record_status(pool, channel.tenant_id if channel else None, update)
    return web.json_response({"received": len(batch.messages), "statuses": len(batch.statuses)})


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
