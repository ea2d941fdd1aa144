"""Provider-neutral shapes that every channel module parses into.

The inbound store only ever sees these; provider quirks stay in the provider modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from services import badinput


class Provider(StrEnum):
    TWILIO = "twilio"
    META = "meta"


class ChannelKind(StrEnum):
    TWILIO_SMS = "twilio_sms"
    TWILIO_WHATSAPP = "twilio_whatsapp"
    WHATSAPP_CLOUD = "whatsapp_cloud"


class MessageStatus(StrEnum):
    """Matches the CHECK constraint on messages.status and message_statuses.status."""

    RECEIVED = "received"
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"
    CANCELED = "canceled"


class MessageType(StrEnum):
    """Matches the CHECK constraint on messages.message_type."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"
    INTERACTIVE = "interactive"  # button_reply / list_reply
    BUTTON = "button"  # template quick-reply button
    REACTION = "reaction"
    MEDIA = "media"  # Twilio MMS with one or more attachments
    UNSUPPORTED = "unsupported"


# A malformed webhook body: the one input error, answered with 400 naming the field.
PayloadError = badinput.BadInput


NUL = "\x00"


def without_nul(value: Any) -> Any:
    """`value` with every NUL character (in strings, keys and nested values) replaced by U+FFFD.

    PostgreSQL's text and jsonb cannot hold NUL, and a signed message carrying one (a GSM "@" gone
    wrong, say) is still a message we acknowledge and keep: one character is marked, nothing is lost."""
    if isinstance(value, str):
        return value.replace(NUL, "\ufffd")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Media:
    content_type: str | None = None
    url: str | None = None  # Twilio: MediaUrlN
    media_id: str | None = None  # Meta: media object id, fetched later through the Graph API
    sha256: str | None = None
    filename: str | None = None
    caption: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in {
            "content_type": self.content_type, "url": self.url, "media_id": self.media_id,
            "sha256": self.sha256, "filename": self.filename, "caption": self.caption,
        }.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Sender:
    """Who wrote to us. Any of these may be missing (Meta's username users have no wa_id/from)."""

    phone: str | None = None  # E.164, normalised with phonenumbers
    wa_id: str | None = None
    wa_user_id: str | None = None  # Meta business-scoped user id (BSUID), since April 2026
    wa_parent_user_id: str | None = None
    username: str | None = None
    profile_name: str | None = None

    @property
    def identified(self) -> bool:
        return bool(self.phone or self.wa_user_id or self.username)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    provider: Provider
    channel_kind: ChannelKind
    # The receiving identity we route on: for Twilio an E.164 number, short code, alphanumeric sender ID
    # or rcs:<sender> (services/channels/twilio.py normalises them); for Meta the phone_number_id.
    channel_address: str
    provider_message_id: str
    sender: Sender
    message_type: MessageType
    body: str | None
    raw: dict[str, Any]
    media: tuple[Media, ...] = ()
    segments: int | None = None
    sent_at: datetime | None = None
    # Type-specific details: location, reaction target, interactive/button ids, reply context...
    details: dict[str, Any] = field(default_factory=dict)
    messaging_service_sid: str | None = None  # Twilio only
    account_sid: str | None = None  # Twilio only


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    provider: Provider
    provider_message_id: str
    status: MessageStatus
    raw: dict[str, Any]
    error_code: str | None = None
    error_message: str | None = None
    occurred_at: datetime | None = None
    channel_address: str | None = None
    recipient: str | None = None  # E.164 / wa_id / BSUID as the provider gave it
    # Our message_queue id, when the callback carries it (Twilio: ?q=<id> on the StatusCallback URL we
    # sent; Meta: biz_opaque_callback_data "q:<id>"): it settles a send whose outcome we never learned.
    queue_id: int | None = None


QUEUE_ID_MAX = 2**63 - 1  # bigint


def queue_id_from(text: str | None, prefix: str = "") -> int | None:
    """Our queue id from a callback's echo of it ("123", or "q:123" with prefix "q:"); None for
    anything else, which is then only a status without a queue row to settle."""
    if not text or not text.startswith(prefix):
        return None
    digits = text[len(prefix):]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        return None
    value = int(digits)
    return value if 0 < value <= QUEUE_ID_MAX else None


# Statuses only move forward: a late "sent" never overwrites "delivered" or "read".
# Mirrors parley_status_rank() in db/migrations/0001_foundation.sql.
STATUS_RANK: dict[MessageStatus, int] = {
    MessageStatus.RECEIVED: 0,
    MessageStatus.ACCEPTED: 10,
    MessageStatus.SCHEDULED: 10,
    MessageStatus.QUEUED: 10,
    MessageStatus.SENDING: 20,
    MessageStatus.SENT: 30,
    MessageStatus.CANCELED: 35,
    MessageStatus.UNDELIVERED: 40,
    MessageStatus.FAILED: 40,
    MessageStatus.DELIVERED: 50,
    MessageStatus.READ: 60,
    MessageStatus.PLAYED: 70,
}
