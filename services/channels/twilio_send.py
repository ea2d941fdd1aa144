"""Sending SMS and WhatsApp messages through Twilio's Messages API, with the twilio package's async client.

`POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (form: To, From or MessagingServiceSid, Body or
ContentSid + ContentVariables, StatusCallback), through `Client(http_client=AsyncTwilioHttpClient)` and
`messages.create_async`. The package's traps, and what is done about each
(../shared/reference/provider-outbound.md §§1.5-1.6):

- its async client applies no timeout of its own: every call runs under `asyncio.timeout(timeout_s)`
  (PARLEY_SEND_TIMEOUT_S), and a call that runs out is `maybe_sent`;
- `max_retries` would re-POST a create after a 5xx Twilio may already have acted on: it is never set, and
  the dispatcher, which can look the message up first, decides every retry;
- it logs each request's URL and query (recipients' numbers) at INFO: its logging is switched off;
- it reads TWILIO_EDGE / TWILIO_REGION from the environment when not told otherwise: it is told.

`TWILIO_API_BASE_URL` points the client at any server speaking Twilio's wire format (the simulator, a
proxy): the client builds `https://api.twilio.com/...` URLs, and its HTTP client rewrites their origin.

Docs: https://www.twilio.com/docs/messaging/api/message-resource,
https://www.twilio.com/docs/api/errors (codes).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from services.channels import retry_after, segments, twilio
from services.channels.base import ChannelKind, MessageStatus
from services.channels.outbound import ErrorKind, Found, OutboundRequest, SenderChannel, SendError, SendResult

log = logging.getLogger("parley.channels.twilio")

TWILIO_API: Final = "https://api.twilio.com"
BODY_MAX: Final = 1600  # characters; Twilio refuses longer bodies with 21617
WHATSAPP_PREFIX: Final = "whatsapp:"

# Twilio error codes -> our kinds (provider-outbound.md §2.2). Twilio keeps splitting codes; anything
# not listed is `rejected`: not retried, and visible to an operator with its code.
THROTTLED_CODES: Final = frozenset({
    20429,  # too many concurrent requests: never processed, always safe to retry
    21611,  # the From number's queue is full (over 10 hours of messages)
    63018,  # the channel's (WhatsApp sender's) rate or messaging limit
})
OPTED_OUT_CODES: Final = frozenset({21610})  # the recipient replied STOP to this sender
INVALID_RECIPIENT_CODES: Final = frozenset({
    21211,  # invalid 'To' number
    21612,  # this To cannot be reached from this From (per recipient: a landline, a foreign network)
    21614,  # 'To' is not a mobile number
    21635,  # 'To' is a landline (split out of 21614 in 2024)
    63024,  # not a valid WhatsApp recipient
})
WINDOW_CLOSED_CODES: Final = frozenset({63016})  # WhatsApp free-form outside the 24-hour window
CONFIG_CODES: Final = frozenset({
    20003,  # authentication failed
    20005, 10001,  # account not active
    20008,  # test credentials cannot send
    20404,  # the account (in the URL) does not exist
    21212, 21606, 21659,  # From is not a (message-capable) number of this account
    21408,  # geo permissions: the destination's country is not enabled
    21608,  # trial account: the recipient is not verified
    21703, 21704, 21705,  # Messaging Service missing, empty or invalid
    30034,  # unregistered US A2P 10DLC number
    63007,  # no WhatsApp sender with this From
})
TRANSIENT_CODES: Final = frozenset({20500, 20503, 30500})  # Twilio internal errors

# A lookup reads this many of the recipient's latest messages: enough for any one recipient's traffic
# since an unknown send (budgets allow a handful a day), bounded so that it stays a few requests.
LOOKUP_LIMIT: Final = 200
LOOKUP_PAGE: Final = 50
# Twilio's date_created has whole seconds and Twilio's clock is not ours: a message created this long
# before `since` still counts.
LOOKUP_SKEW: Final = timedelta(seconds=5)

# Credentials are always passed explicitly; this keeps the client off TWILIO_EDGE / TWILIO_REGION (an
# empty mapping would make it fall back to os.environ).
_NO_ENVIRONMENT: Final = {"PARLEY": "credentials and region come from settings"}


@dataclass(frozen=True, slots=True)
class Credentials:
    """The default account, for channels that carry none of their own (the default tenant's)."""

    account_sid: str
    username: str  # the account SID, or an API key SID (SK...)
    password: str  # the auth token, or the API key secret


@dataclass(slots=True)
class _Exchange:
    headers: Mapping[str, str] | None = None


# The response headers of the call in flight in this task (Retry-After): the SDK's exceptions drop them.
_EXCHANGE: contextvars.ContextVar[_Exchange] = contextvars.ContextVar("twilio_exchange")


class _RebasedHttpClient(AsyncTwilioHttpClient):
    """The SDK's async client, sending to `base_url` instead of Twilio's hosts, silent, no retries."""

    def __init__(self, base_url: str) -> None:
        super().__init__(pool_connections=True, max_retries=None)
        parts = urlsplit(base_url.rstrip("/"))
        self._origin = (parts.scheme, parts.netloc, parts.path)

    def _rebase(self, url: str) -> str:
        parts = urlsplit(url)
        if not (parts.hostname or "").endswith("twilio.com"):
            return url
        scheme, netloc, prefix = self._origin
        return urlunsplit((scheme, netloc, prefix + parts.path, parts.query, parts.fragment))

    async def request(self, method: str, url: str, params: dict[str, object] | None = None,
                      data: dict[str, object] | None = None, headers: dict[str, str] | None = None,
                      auth: tuple[str, str] | None = None,
                      timeout: float | None = None,  # noqa: ASYNC109 - the SDK's signature
                      allow_redirects: bool = False) -> Response:
        if auth is not None:
            # As a header: aiohttp 3.14 deprecates the BasicAuth the SDK would build from the tuple.
            headers = {**(headers or {}), "Authorization": aiohttp.encode_basic_auth(*auth)}
        response = await super().request(method, self._rebase(url), params=params, data=data, headers=headers,
                                         timeout=timeout, allow_redirects=allow_redirects)
        exchange = _EXCHANGE.get(None)
        if exchange is not None:
            exchange.headers = response.headers
        return response

    def log_request(self, kwargs: dict[str, Any]) -> None:
        pass  # the SDK's line carries the URL with To=+1..., at INFO

    def log_response(self, status_code: int, response: Any) -> None:
        pass


class TwilioSender:
    """`Sender` for `twilio_sms` and `twilio_whatsapp` channels. Call `close()` when done."""

    can_lookup = True

    def __init__(self, *, timeout_s: float, api_base_url: str = TWILIO_API, defaults: Credentials | None = None,
                 ) -> None:
        self._timeout_s = timeout_s
        self._defaults = defaults
        self._http = _RebasedHttpClient(api_base_url)
        self._clients: dict[tuple[str, str, str], Client] = {}

    async def close(self) -> None:
        await self._http.close()

    async def send(self, request: OutboundRequest) -> SendResult:
        client = self._client(request.channel)
        params = _create_params(request)
        message = await self._call(client.messages.create_async(**params), "create")
        sid = getattr(message, "sid", None)
        if not sid:
            # A 2xx whose body names no message: it was probably created, so it is settled, not resent.
            raise SendError(ErrorKind.TRANSIENT, "Twilio accepted the request but named no message",
                            maybe_sent=True)
        status = twilio.STATUS_MAP.get(message.status or "", MessageStatus.QUEUED)
        return SendResult(provider_message_id=sid, status=status, segments=_segments(request, message))

    async def lookup(self, request: OutboundRequest, since: datetime) -> Found | None:
        """Our message among the recipient's latest: same sender, created since `since`, same body.

        Filtered by To alone, not also by DateSent: a message still queued at Twilio has no date_sent,
        and whether a DateSent filter matches it is not documented; a false "none" here would send the
        message twice. Twilio's Message resource does not show the StatusCallback, so the queue id
        cannot be matched; the body can (a template's rendered body is not known to us: any message
        from the same sender in the window is taken as ours)."""
        client = self._client(request.channel)
        messages = await self._call(
            client.messages.list_async(to=_to(request), limit=LOOKUP_LIMIT, page_size=LOOKUP_PAGE), "list")
        sender = _sender_params(request.channel)
        earliest = since - LOOKUP_SKEW
        found = [m for m in messages if _is_ours(m, request, sender, earliest)]
        if not found:
            return None
        first = min(found, key=lambda m: m.date_created)
        return Found(provider_message_id=first.sid,
                     status=twilio.STATUS_MAP.get(first.status or "", MessageStatus.QUEUED),
                     error_code=str(first.error_code) if first.error_code else None)

    async def _call(self, call: Any, what: str) -> Any:
        """Await one SDK call under our deadline, every failure as a SendError."""
        exchange = _Exchange()
        token = _EXCHANGE.set(exchange)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except (TwilioRestException, TwilioServiceException) as exc:
            raise error_from(exc.status, exc.code, _message(exc), exchange.headers) from None
        except TimeoutError:
            raise SendError(ErrorKind.TRANSIENT, f"no answer to {what} within {self._timeout_s:g} s",
                            maybe_sent=True) from None
        except aiohttp.ClientConnectorError as exc:
            # Refused, unreachable, DNS, TLS: nothing was written, so a plain retry is safe.
            raise SendError(ErrorKind.TRANSIENT, f"could not connect to Twilio: {type(exc).__name__}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SendError(ErrorKind.TRANSIENT, f"connection lost during {what}: {type(exc).__name__}",
                            maybe_sent=True) from None
        except ValueError:  # a 2xx whose body is not JSON (json.JSONDecodeError)
            raise SendError(ErrorKind.TRANSIENT, f"unreadable answer to {what}", maybe_sent=True) from None
        except Exception as exc:
            # An SDK defect must not take the dispatcher down; the request may have gone out.
            log.exception("twilio call failed unexpectedly", extra={"call": what})
            raise SendError(ErrorKind.TRANSIENT, f"unexpected {type(exc).__name__} during {what}",
                            maybe_sent=True) from None
        finally:
            _EXCHANGE.reset(token)

    def _client(self, channel: SenderChannel) -> Client:
        account_sid, username, password = self._credentials(channel)
        key = (account_sid, username, password)
        client = self._clients.get(key)
        if client is None:
            client = Client(username, password, account_sid, http_client=self._http, environment=_NO_ENVIRONMENT)
            self._clients[key] = client
        return client

    def _credentials(self, channel: SenderChannel) -> tuple[str, str, str]:
        defaults = self._defaults
        account_sid = channel.account_sid or (defaults.account_sid if defaults else None)
        if account_sid and channel.auth_token:
            return account_sid, channel.api_key_sid or account_sid, channel.auth_token
        if defaults is not None and account_sid == defaults.account_sid:
            return defaults.account_sid, defaults.username, defaults.password
        raise SendError(ErrorKind.CONFIG, f"channel {channel.id} has no Twilio credentials")


def error_from(status: int, code: int | None, message: str, headers: Mapping[str, str] | None) -> SendError:
    """Twilio's refusal (HTTP status, Twilio code) as one of our kinds."""
    code_text = str(code) if code is not None and code != status else None
    known = code if code_text else None

    def error(kind: ErrorKind, **extra: Any) -> SendError:
        return SendError(kind, message, code=code_text, http_status=status, **extra)

    if status == 429 or known in THROTTLED_CODES:
        return error(ErrorKind.THROTTLED, retry_after_s=retry_after.seconds((headers or {}).get("Retry-After")))
    if known in OPTED_OUT_CODES:
        return error(ErrorKind.OPTED_OUT)
    if known in INVALID_RECIPIENT_CODES:
        return error(ErrorKind.INVALID_RECIPIENT)
    if known in WINDOW_CLOSED_CODES:
        return error(ErrorKind.WINDOW_CLOSED)
    if known in CONFIG_CODES or (known is None and status in (401, 403)):
        return error(ErrorKind.CONFIG)
    if status >= 500 or known in TRANSIENT_CODES:
        # Twilio answered, so the request arrived; only a 429 is documented as never processed.
        return error(ErrorKind.TRANSIENT, maybe_sent=True)
    return error(ErrorKind.REJECTED)


def _message(exc: TwilioRestException | TwilioServiceException) -> str:
    if isinstance(exc, TwilioServiceException):
        return exc.detail or exc.title
    # The SDK prefixes "Unable to create record: "; Twilio's own words are what an operator needs.
    return exc.msg.split(": ", 1)[-1] if exc.msg else f"HTTP {exc.status}"


def _to(request: OutboundRequest) -> str:
    if request.channel.kind == ChannelKind.TWILIO_WHATSAPP:
        return WHATSAPP_PREFIX + request.to
    return request.to


def _sender_params(channel: SenderChannel) -> dict[str, str]:
    """From the channel's own number when it has one (a reply goes from the number the user wrote to);
    through its Messaging Service when it is a catch-all ('*')."""
    address = channel.address
    if address and address != "*":
        prefix = WHATSAPP_PREFIX if channel.kind == ChannelKind.TWILIO_WHATSAPP else ""
        return {"from_": prefix + address}
    if channel.messaging_service_sid:
        return {"messaging_service_sid": channel.messaging_service_sid}
    raise SendError(ErrorKind.CONFIG, f"channel {channel.id} has neither a number nor a Messaging Service")


def _create_params(request: OutboundRequest) -> dict[str, Any]:
    params: dict[str, Any] = {"to": _to(request), **_sender_params(request.channel)}
    if request.template is not None:
        # Twilio's Content API: the template's language is part of the Content SID itself.
        params["content_sid"] = request.template.name
        if request.template.variables:
            params["content_variables"] = json.dumps(request.template.variables, ensure_ascii=False)
    elif request.body:
        if len(request.body) > BODY_MAX:
            raise SendError(ErrorKind.REJECTED, f"body is {len(request.body)} characters; Twilio takes {BODY_MAX}")
        params["body"] = request.body
    else:
        raise SendError(ErrorKind.REJECTED, "nothing to send: neither a body nor a template")
    if request.status_callback_url:
        params["status_callback"] = request.status_callback_url
    return params


def _segments(request: OutboundRequest, message: Any) -> int | None:
    if request.template is None and request.body and request.channel.kind == ChannelKind.TWILIO_SMS:
        return segments.count(request.body).segments
    try:
        reported = int(message.num_segments or 0)
    except (TypeError, ValueError):
        return None
    return reported or None  # "0" until a Messaging Service has picked a sender


def _is_ours(message: Any, request: OutboundRequest, sender: dict[str, str], earliest: datetime) -> bool:
    created = message.date_created
    if not isinstance(created, datetime) or created < earliest:
        return False
    if "from_" in sender and message.from_ != sender["from_"]:
        return False
    if "messaging_service_sid" in sender and message.messaging_service_sid != sender["messaging_service_sid"]:
        return False
    if request.template is None and message.body != request.body:
        return False
    return bool(message.sid) and str(message.direction or "").startswith("outbound")
