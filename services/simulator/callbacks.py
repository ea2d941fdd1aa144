"""Signed webhooks to Parley: status callbacks of accepted messages, and inbound messages.

Twilio's `X-Twilio-Signature` is computed by the twilio package's own RequestValidator (base64
HMAC-SHA1 of the URL followed by every POST field, names sorted), with the account's auth token;
Meta's `X-Hub-Signature-256` is `sha256=` + hex HMAC-SHA256 of the body bytes with the app secret.
A webhook is signed for the URL as the provider knows it (the StatusCallback as given, or Parley's
public URL) and posted to Parley's own address when they differ (a proxy's job in production).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import orjson
from twilio.request_validator import RequestValidator

from services.simulator.config import MetaNumber, SimConfig
from services.simulator.state import SimMessage, Store, e164, now, twilio_sid, wamid

log = logging.getLogger("parley.simulator")

TWILIO_SIGNATURE: Final = "X-Twilio-Signature"
META_SIGNATURE: Final = "X-Hub-Signature-256"
FORM: Final = "application/x-www-form-urlencoded"
# Retries of a webhook Parley answered 5xx or could not be reached for (Meta retries for hours;
# these are enough for a restart or a moment of overload in tests and the sandbox).
ATTEMPTS: Final = 3
BACKOFF_S: Final = (0.2, 1.0)

# Twilio reports carrier-side delivery errors as "undelivered", the rest as "failed".
_UNDELIVERED: Final = frozenset({30003, 30004, 30005, 30006, 30007, 30008})


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    return str(RequestValidator(auth_token).compute_signature(url, params))


def meta_signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_url(config: SimConfig, url: str) -> str:
    """Where a webhook for `url` is posted: Parley's own address for its public one."""
    public, own = config.public_url, (config.parley_url or "").rstrip("/")
    if public and own and public != own and url.startswith(public):
        return own + url[len(public):]
    return url


async def post(session: aiohttp.ClientSession, store: Store, url: str, body: bytes, headers: dict[str, str],
               what: str) -> tuple[int, str]:
    """POST a webhook, retried on 5xx and connection failures; (status, body) of the last answer,
    (0, reason) when Parley could not be reached."""
    target = delivery_url(store.config, url)
    status, text = 0, ""
    for attempt in range(ATTEMPTS):
        try:
            async with session.post(target, data=body, headers=headers, allow_redirects=False) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status, text = 0, f"{type(exc).__name__}: {exc}"
        if 0 < status < 500:
            break
        if attempt < len(BACKOFF_S):
            await asyncio.sleep(BACKOFF_S[attempt])
    outcome = "delivered" if 200 <= status < 300 else "refused"
    store.stats[f"{what}_{outcome}"] += 1
    if outcome == "refused":
        log.warning("webhook not accepted", extra={"what": what, "status": status, "answer": text[:200]})
    return status, text


# --- status callbacks ---------------------------------------------------------------------------------


async def progress(session: aiohttp.ClientSession, store: Store, message: SimMessage, failure: int | None) -> None:
    """queued -> sent -> delivered, or -> failed/undelivered with `failure`, each as a signed callback."""
    steps: list[tuple[str, int | None]] = [("sent", None)]
    if failure is None:
        steps.append(("delivered", None))
    elif message.provider == "twilio":
        steps = [("sent", None), ("undelivered" if failure in _UNDELIVERED else "failed", failure)]
    else:
        steps = [("failed", failure)]
    for status, code in steps:
        await asyncio.sleep(store.knobs.callback_delay_ms / 1000)
        message.status, message.updated_at = status, now()
        if status == "sent":
            message.sent_at = message.updated_at
        if code is not None:
            message.error_code, message.error_message = code, f"simulated error {code}"
        if store.knobs.callbacks:
            if message.provider == "twilio":
                await _twilio_status(session, store, message)
            else:
                await _meta_status(session, store, message)


async def _twilio_status(session: aiohttp.ClientSession, store: Store, message: SimMessage) -> None:
    url = message.status_callback
    token = store.config.twilio_accounts.get(message.account_sid or "")
    if not url or token is None:
        return
    form = {"MessageSid": message.sid, "SmsSid": message.sid, "AccountSid": message.account_sid or "",
            "MessageStatus": message.status, "SmsStatus": message.status, "To": message.to,
            "ApiVersion": "2010-04-01"}
    if message.from_:
        form["From"] = message.from_
    if message.messaging_service_sid:
        form["MessagingServiceSid"] = message.messaging_service_sid
    if message.channel == "whatsapp":
        form["ChannelPrefix"] = "whatsapp"
    if message.error_code is not None and message.status in ("failed", "undelivered"):
        form["ErrorCode"] = str(message.error_code)
    headers = {"Content-Type": FORM, TWILIO_SIGNATURE: twilio_signature(token, url, form),
               "I-Twilio-Idempotency-Token": f"{message.sid}-{message.status}"}
    await post(session, store, url, urlencode(form).encode(), headers, "twilio_status")


def meta_envelope(number: MetaNumber, value: dict[str, Any]) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": number.waba_id, "changes": [{
        "field": "messages",
        "value": {"messaging_product": "whatsapp",
                  "metadata": {"display_phone_number": number.display_phone_number,
                               "phone_number_id": number.phone_number_id},
                  **value}}]}]}


def meta_status_payload(number: MetaNumber, message: SimMessage) -> dict[str, Any]:
    """Shaped as Meta's `statuses` webhook (provider-payloads.md §2.3 c), with our callback data echoed."""
    recipient = (e164(message.to) or "").lstrip("+")
    status: dict[str, Any] = {"id": message.sid, "status": message.status,
                              "timestamp": str(int(time.time())), "recipient_id": recipient}
    if message.callback_data is not None:
        status["biz_opaque_callback_data"] = message.callback_data
    if message.status in ("sent", "delivered"):
        category = "marketing" if message.template else "service"
        status["conversation"] = {"id": "CONVERSATION_" + message.sid[-12:], "origin": {"type": category}}
        status["pricing"] = {"billable": category != "service", "pricing_model": "PMP", "type": "regular",
                             "category": category}
    if message.status == "failed" and message.error_code is not None:
        status["errors"] = [{"code": message.error_code, "title": message.error_message,
                             "message": message.error_message,
                             "error_data": {"details": message.error_message}}]
    return meta_envelope(number, {"statuses": [status]})


async def _meta_status(session: aiohttp.ClientSession, store: Store, message: SimMessage) -> None:
    number = store.config.meta_numbers.get(message.phone_number_id or "")
    public = store.config.public_url
    if number is None or public is None:
        return
    body = orjson.dumps(meta_status_payload(number, message))
    headers = {"Content-Type": "application/json", META_SIGNATURE: meta_signature(number.app_secret, body)}
    await post(session, store, public + "/webhooks/whatsapp", body, headers, "meta_status")


# --- inbound ------------------------------------------------------------------------------------------


def twilio_inbound_form(account_sid: str, sender: str, to: str, body: str, whatsapp: bool,
                        profile_name: str | None) -> dict[str, str]:
    """An incoming-message webhook as Twilio posts it
    (https://www.twilio.com/docs/messaging/guides/webhook-request)."""
    sid = twilio_sid()
    prefix = "whatsapp:" if whatsapp else ""
    form = {"ToCountry": "US", "SmsMessageSid": sid, "NumMedia": "0", "SmsSid": sid, "SmsStatus": "received",
            "Body": body, "To": prefix + to, "NumSegments": "1", "MessageSid": sid, "AccountSid": account_sid,
            "From": prefix + sender, "ApiVersion": "2010-04-01", "FromCountry": "US"}
    if whatsapp:
        form["WaId"] = sender.lstrip("+")
        form["MessageType"] = "text"
        if profile_name:
            form["ProfileName"] = profile_name
    return form


def meta_inbound_payload(number: MetaNumber, sender: str, body: str, profile_name: str | None) -> dict[str, Any]:
    wa_id = sender.lstrip("+")
    return meta_envelope(number, {
        "contacts": [{"profile": {"name": profile_name or "Simulated User"}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": wamid(), "timestamp": str(int(time.time())), "type": "text",
                      "text": {"body": body}}],
    })
