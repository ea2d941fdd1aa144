"""What the dispatcher hands a provider module, what comes back, and the closed set of send errors.

The dispatcher decides from `SendError.kind`, `.retryable` and `.maybe_sent` alone, never by matching
provider codes or strings: each provider module maps its own codes here (see
../shared/reference/provider-outbound.md, sections 2.2 and 3.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from services.channels.base import ChannelKind, MessageStatus


class ErrorKind(StrEnum):
    THROTTLED = "throttled"  # 429, 20429, 63018, 130429, 131056...: retry after retry_after_s
    TRANSIENT = "transient"  # 5xx, timeouts, connection failures: retry with backoff
    OPTED_OUT = "opted_out"  # 21610, 131050: the user is marked opted out, with a consent change
    INVALID_RECIPIENT = "invalid_recipient"  # 21211, 21614, 131026...
    WINDOW_CLOSED = "window_closed"  # 63016, 131047: free-form outside WhatsApp's 24-hour window
    CONFIG = "config"  # credentials, permissions, sender setup: not retried, alerts an operator
    REJECTED = "rejected"  # anything else the provider refused: not retried


RETRYABLE = frozenset({ErrorKind.THROTTLED, ErrorKind.TRANSIENT})


class SendError(Exception):
    """A provider call that did not end in an accepted message.

    maybe_sent: the request may have reached the provider and created the message (a timeout or a
    connection lost after the request was written, a 5xx). Such a send is never simply retried: the
    row becomes 'unknown' and is settled by a status callback or a lookup first."""

    def __init__(self, kind: ErrorKind, detail: str, *, code: str | None = None, http_status: int | None = None,
                 retry_after_s: float | None = None, maybe_sent: bool = False) -> None:
        super().__init__(f"{kind.value}: {detail}" + (f" (code {code})" if code else ""))
        self.kind = kind
        self.detail = detail
        self.code = code
        self.http_status = http_status
        self.retry_after_s = retry_after_s
        self.maybe_sent = maybe_sent

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


@dataclass(frozen=True, slots=True)
class Template:
    """A WhatsApp template: Twilio's Content SID (HX...) or Meta's template name, with its variables
    ({"1": "Ana"}: Twilio's ContentVariables as they are, Meta's body parameters in key order)."""

    name: str
    language: str
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SenderChannel:
    """The channel a message goes out from, with what the provider needs to accept it."""

    id: int
    tenant_id: int
    kind: ChannelKind
    address: str  # E.164 (Twilio number), '*' (a catch-all sending through its Messaging Service), phone_number_id
    account_sid: str | None = None
    messaging_service_sid: str | None = None
    auth_token: str | None = None  # Twilio: the account's token (or the API key secret with api_key_sid)
    api_key_sid: str | None = None
    access_token: str | None = None  # Meta


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    queue_id: int
    channel: SenderChannel
    to: str  # E.164; Twilio WhatsApp adds its "whatsapp:" prefix itself
    body: str | None = None
    template: Template | None = None  # sent instead of the body when set
    # Twilio: our status callback URL carrying the queue id; Meta carries it in biz_opaque_callback_data.
    status_callback_url: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    provider_message_id: str  # Twilio SM.../MM..., Meta wamid
    status: MessageStatus  # accepted or queued, as the provider answered
    segments: int | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """A message the provider has, found by a lookup."""

    provider_message_id: str
    status: MessageStatus
    error_code: str | None = None


class Sender(Protocol):
    """One provider's sending side. Raises SendError for every failure, never anything else."""

    # Whether `lookup` can tell that the provider does not have a message (Twilio can; Meta cannot).
    can_lookup: bool

    async def send(self, request: OutboundRequest) -> SendResult: ...

    async def lookup(self, request: OutboundRequest, since: datetime) -> Found | None:
        """The provider's message for `request` created since `since`, or None when it has none."""
        ...
