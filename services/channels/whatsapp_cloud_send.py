"""Sending WhatsApp messages through Meta's Cloud API, over the runtime's aiohttp session.

`POST {WHATSAPP_GRAPH_BASE_URL}/{WHATSAPP_GRAPH_VERSION}/{phone_number_id}/messages` with the channel's
Bearer token; a text or a template payload, each carrying `biz_opaque_callback_data = "q:<queue id>"`,
which Meta echoes in the message's status webhooks, so that a status can settle the queue row even
when the send's answer was lost (../shared/reference/provider-outbound.md §3.2).

Meta has no way to list or look up a sent message: `can_lookup` is False, and a send whose outcome is
unknown waits for its status webhook (or its timeout), never a second send.

Errors are classified by Graph's `error.code`, not by HTTP status, except 429 and 5xx: Meta answers
throttling with 400s as often as with 429s (provider-outbound.md §§3.5-3.6).

Docs: https://developers.facebook.com/documentation/business-messaging/whatsapp/messages/send-messages,
https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes/.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Final

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from services.channels import retry_after
from services.channels.base import MessageStatus
from services.channels.outbound import ErrorKind, Found, OutboundRequest, SendError, SendResult, Template

BODY_MAX: Final = 4096  # characters of a text message

THROTTLED_CODES: Final = frozenset({
    4,  # the app's Graph call rate
    80007,  # the WhatsApp Business Account's rate
    130429,  # the phone number's throughput (80 messages/s by default)
    131048,  # spam rate limit: too many of this number's messages were blocked
    131056,  # pair rate: too many messages to this one recipient
    133016,  # registration attempts
})
# Retrying sooner only fails again: 131049 is a per-user marketing limit that lifts after a day.
DAY_THROTTLED_CODES: Final = frozenset({131049})
OPTED_OUT_CODES: Final = frozenset({131050})  # the user stopped marketing messages from this business
INVALID_RECIPIENT_CODES: Final = frozenset({131026, 131021})  # not on WhatsApp / is the sender itself
WINDOW_CLOSED_CODES: Final = frozenset({131047})  # free-form outside the 24-hour window
CONFIG_CODES: Final = frozenset({
    0, 190,  # the access token is invalid or expired
    3, 10, 131005,  # permission or capability missing
    368,  # temporarily blocked for policy violations
    131031, 131042, 131045, 133010,  # account locked, billing, certificate, number not registered
    *range(200, 300),  # Graph's permission errors
})
TRANSIENT_CODES: Final = frozenset({1, 2, 131000, 131016, 131053, 133004})

SENT_STATUSES: Final = {"accepted", "held_for_quality_assessment", "paused"}  # all "accepted" to us


class _GraphError(BaseModel):
    """Graph's error object.

    ```
    {"error": {"message": "(#131047) Re-engagement message", "type": "OAuthException", "code": 131047,
               "error_data": {"messaging_product": "whatsapp", "details": "..."}, "fbtrace_id": "AbC"}}
    ```
    """

    model_config = ConfigDict(extra="ignore")

    code: int | None = None
    message: str | None = None
    error_subcode: int | None = None
    error_data: dict[str, Any] | None = None


class _SentMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    message_status: str | None = None


class _SendResponse(BaseModel):
    """```
    {"messaging_product": "whatsapp", "contacts": [{"input": "+16505551234", "wa_id": "16505551234"}],
     "messages": [{"id": "wamid.HBgL...", "message_status": "accepted"}]}
    ```
    """

    model_config = ConfigDict(extra="ignore")

    messages: list[_SentMessage]


def callback_data(queue_id: int) -> str:
    """What Meta echoes in this message's status webhooks as `biz_opaque_callback_data`."""
    return f"q:{queue_id}"


def payload(request: OutboundRequest) -> dict[str, Any]:
    """The JSON body of the send: a template when the request has one, else a text message."""
    message: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": request.to,
        "biz_opaque_callback_data": callback_data(request.queue_id),
    }
    if request.template is not None:
        message["type"] = "template"
        message["template"] = _template(request.template)
    elif request.body:
        if len(request.body) > BODY_MAX:
            raise SendError(ErrorKind.REJECTED,
                            f"body is {len(request.body)} characters; WhatsApp takes {BODY_MAX}")
        message["type"] = "text"
        message["text"] = {"preview_url": False, "body": request.body}
    else:
        raise SendError(ErrorKind.REJECTED, "nothing to send: neither a body nor a template")
    return message


def _template(template: Template) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": template.name,
        "language": {"policy": "deterministic", "code": template.language},
    }
    if template.variables:
        keys = list(template.variables)
        if all(k.isdigit() for k in keys):
            # {{1}}, {{2}}, ... {{10}}: positional, so in numeric order ("10" after "9", not after "1").
            parameters = [{"type": "text", "text": template.variables[k]} for k in sorted(keys, key=int)]
        else:
            # Named parameters ({{first_name}}) name themselves, in the order given.
            parameters = [{"type": "text", "parameter_name": k, "text": v} for k, v in template.variables.items()]
        body["components"] = [{"type": "body", "parameters": parameters}]
    return body


class WhatsAppCloudSender:
    """`Sender` for `whatsapp_cloud` channels. The session is the caller's (closed by its owner)."""

    can_lookup = False

    def __init__(self, session: aiohttp.ClientSession, *, timeout_s: float, base_url: str, version: str,
                 default_access_token: str | None = None) -> None:
        self._session = session
        self._timeout_s = timeout_s
        self._base = base_url.rstrip("/") + "/" + version.strip("/")
        self._default_token = default_access_token

    def url(self, phone_number_id: str) -> str:
        return f"{self._base}/{phone_number_id}/messages"

    async def send(self, request: OutboundRequest) -> SendResult:
        token = request.channel.access_token or self._default_token
        if not token:
            raise SendError(ErrorKind.CONFIG, f"channel {request.channel.id} has no WhatsApp access token")
        phone_number_id = request.channel.address
        if not phone_number_id.isdigit():
            raise SendError(ErrorKind.CONFIG, f"channel {request.channel.id} has no phone_number_id")
        body = orjson.dumps(payload(request))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._session.post(self.url(phone_number_id), data=body, headers=headers,
                                              allow_redirects=False) as response:
                    status = response.status
                    text = await response.read()
                    response_headers = response.headers
        except TimeoutError:
            raise SendError(ErrorKind.TRANSIENT, f"no answer within {self._timeout_s:g} s", maybe_sent=True) from None
        except aiohttp.ClientConnectorError as exc:
            # Nothing was written: a plain retry is safe.
            raise SendError(ErrorKind.TRANSIENT, f"could not connect to Meta: {type(exc).__name__}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SendError(ErrorKind.TRANSIENT, f"connection lost: {type(exc).__name__}", maybe_sent=True) from None
        if 200 <= status < 300:
            return _accepted(text)
        raise error_from(status, text, response_headers.get("Retry-After"))

    async def lookup(self, request: OutboundRequest, since: datetime) -> Found | None:
        """Meta has no message lookup: callers check `can_lookup` first. A "none" here would read as
        "never sent" and send the message twice, so this refuses instead."""
        raise SendError(ErrorKind.REJECTED, "the WhatsApp Cloud API cannot look messages up")


def _accepted(text: bytes) -> SendResult:
    try:
        answer = _SendResponse.model_validate_json(text)
    except ValidationError:
        answer = None
    if answer is None or not answer.messages or not answer.messages[0].id:
        # A 2xx: Meta most likely created it. Its status webhook (carrying our queue id) settles the row.
        raise SendError(ErrorKind.TRANSIENT, "Meta accepted the request but named no message", maybe_sent=True)
    return SendResult(provider_message_id=answer.messages[0].id, status=MessageStatus.ACCEPTED)


def error_from(status: int, text: bytes, retry_after_header: str | None = None) -> SendError:
    """Graph's refusal (HTTP status and `error.code`) as one of our kinds."""
    error = _graph_error(text)
    code = error.code if error is not None else None
    detail = _detail(error, status)
    code_text = str(code) if code is not None else None

    def make(kind: ErrorKind, **extra: Any) -> SendError:
        return SendError(kind, detail, code=code_text, http_status=status, **extra)

    if status >= 500:
        # Meta answered: the request arrived and may have been acted on.
        return make(ErrorKind.TRANSIENT, maybe_sent=True)
    if code in DAY_THROTTLED_CODES:
        return make(ErrorKind.THROTTLED, retry_after_s=retry_after.MAX_S)
    if status == 429 or code in THROTTLED_CODES:
        return make(ErrorKind.THROTTLED, retry_after_s=retry_after.seconds(retry_after_header))
    if code in OPTED_OUT_CODES:
        return make(ErrorKind.OPTED_OUT)
    if code in INVALID_RECIPIENT_CODES:
        return make(ErrorKind.INVALID_RECIPIENT)
    if code in WINDOW_CLOSED_CODES:
        return make(ErrorKind.WINDOW_CLOSED)
    if code in CONFIG_CODES or (code is None and status in (401, 403)):
        return make(ErrorKind.CONFIG)
    if code in TRANSIENT_CODES:
        # Meta's own "try again" codes, answered as 4xx: the message was not created.
        return make(ErrorKind.TRANSIENT)
    return make(ErrorKind.REJECTED)


def _graph_error(text: bytes) -> _GraphError | None:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    inner = data.get("error") if isinstance(data, dict) else None
    if not isinstance(inner, dict):
        return None
    try:
        return _GraphError.model_validate(inner)
    except ValidationError:
        return None


def _detail(error: _GraphError | None, status: int) -> str:
    if error is None:
        return f"HTTP {status}"
    details = (error.error_data or {}).get("details")
    if isinstance(details, str) and details:
        return details  # Meta: base logic and messages on details, titles are being deprecated
    return error.message or f"HTTP {status}"
