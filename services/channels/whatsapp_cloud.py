"""Meta WhatsApp Cloud API: webhook signature, verification handshake and inbound parsing.

Pure functions, no I/O: the HTTP handler verifies the signature on the raw body, then calls
`parse_webhook` and stores what comes back. Malformed bodies raise `base.PayloadError` naming the
JSON path at fault (answered 400); well-formed but irrelevant items are only counted (answered 200,
so Meta does not retry them).

Meta documents the webhook at
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
and the business-scoped user ids (BSUIDs, sent since April 2026) at
https://developers.facebook.com/documentation/business-messaging/whatsapp/business-scoped-user-ids
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from services import phone
from services.channels import base

WABA_OBJECT = "whatsapp_business_account"
MESSAGES_FIELD = "messages"
SIGNATURE_HEADER = "X-Hub-Signature-256"
_SIGNATURE_PREFIX = "sha256="

# biz_opaque_callback_data of the messages we send: "q:<message_queue id>".
QUEUE_ID_PREFIX = "q:"

STATUS_MAP: dict[str, base.MessageStatus] = {
    "sent": base.MessageStatus.SENT,
    "delivered": base.MessageStatus.DELIVERED,
    "read": base.MessageStatus.READ,
    "failed": base.MessageStatus.FAILED,
    "played": base.MessageStatus.PLAYED,  # voice messages, since March 2026
}
"""Meta status string -> our status. Anything else (e.g. the legacy "deleted") is ignored."""

_MEDIA_TYPES: dict[str, base.MessageType] = {
    "image": base.MessageType.IMAGE,
    "audio": base.MessageType.AUDIO,
    "video": base.MessageType.VIDEO,
    "document": base.MessageType.DOCUMENT,
    "sticker": base.MessageType.STICKER,
}
_MAX_UNIX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime can hold
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- field types -------------------------------------------------------------------------------


def _int_as_str(value: object) -> object:
    # Error codes are JSON numbers and timestamps JSON strings in Meta's docs; accept either for
    # both, but never a bool (which Python counts as an int).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _unix_seconds(value: object) -> datetime:
    value = _int_as_str(value)
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()):
        raise ValueError("must be a string of Unix seconds")
    seconds = int(value)
    if seconds > _MAX_UNIX_SECONDS:
        raise ValueError("is out of range")
    return _EPOCH + timedelta(seconds=seconds)


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    return value


UnixTime = Annotated[datetime, BeforeValidator(_unix_seconds)]
IntOrStr = Annotated[str, BeforeValidator(_int_as_str)]
Coordinate = Annotated[float, AllowInfNan(False), BeforeValidator(_not_bool)]


class _Payload(BaseModel):
    # Meta adds fields without notice (identity_key_hash, BSUIDs, group_id, ...): ignore what we
    # do not model rather than reject it. Everything received is kept verbatim in `raw`.
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- envelope ----------------------------------------------------------------------------------


class Change(_Payload):
    """One change of an entry; only `field == "messages"` concerns us, its value is parsed apart.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
    ```
    {"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": {...}, ...}}
    ```
    """

    field: str
    value: Any = None


class Entry(_Payload):
    """One WhatsApp Business Account's changes; `id` is the WABA id.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
    ```
    {"id": "102290129340398", "changes": [{"field": "messages", "value": {...}}]}
    ```
    """

    id: str
    changes: list[Change]


class Envelope(_Payload):
    """The POSTed body. Meta batches: several entries, changes, messages and statuses per delivery.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
    ```
    {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [...]}]}
    ```
    """

    object: str
    entry: list[Entry]


class Metadata(_Payload):
    """The business number that received the event; `phone_number_id` is what we route on.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
    ```
    {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}
    ```
    """

    phone_number_id: str
    display_phone_number: str | None = None


class Profile(_Payload):
    """A user's profile; `username` only for users who adopted one (2026).

    https://developers.facebook.com/documentation/business-messaging/whatsapp/business-scoped-user-ids
    ```
    {"name": "Sheena Nelson", "username": "@sheena"}
    ```
    """

    name: str | None = None
    username: str | None = None


class Contact(_Payload):
    """The sender as Meta knows them. Every identifier may be missing: a username user can come
    without `wa_id`, and older payloads carry no BSUID (`user_id` / `parent_user_id`).

    https://developers.facebook.com/documentation/business-messaging/whatsapp/business-scoped-user-ids
    ```
    {"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234",
     "user_id": "US.13491208655302741918", "parent_user_id": "US.ENT.11815799212886844830"}
    ```
    """

    wa_id: str | None = None
    user_id: str | None = None
    parent_user_id: str | None = None
    profile: Profile | None = None


class ErrorData(_Payload):
    """https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes
    ```
    {"details": "Message type is currently not supported."}
    ```
    """

    details: str | None = None


class ErrorInfo(_Payload):
    """An error attached to a value, a message (unsupported types) or a failed status.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/unsupported
    ```
    {"code": 131051, "title": "Message type unknown", "message": "Message type unknown",
     "error_data": {"details": "Message type is currently not supported."}}
    ```
    """

    code: IntOrStr | None = None
    title: str | None = None
    message: str | None = None
    error_data: ErrorData | None = None
    href: str | None = None


class Context(_Payload):
    """What the message replies to (`id`, `from` = our number) or that it was forwarded.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/text
    ```
    {"from": "15550783881", "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA="}
    {"forwarded": true}
    ```
    """

    id: str | None = None
    from_: str | None = Field(default=None, alias="from")
    forwarded: bool | None = None
    frequently_forwarded: bool | None = None


class Message(_Payload):
    """The fields every inbound message shares; the `type`-named object is parsed apart.

    `from` is the user's phone number and may be missing for username users, who are then known
    by `from_user_id` (BSUID) instead.
    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
    ```
    {"from": "16505551234", "from_user_id": "US.13491208655302741918", "id": "wamid.HBgL...",
     "timestamp": "1749416383", "type": "text", "text": {"body": "Does it come in another color?"}}
    ```
    """

    id: str
    timestamp: UnixTime
    type: str
    from_: str | None = Field(default=None, alias="from")
    from_user_id: str | None = None
    from_parent_user_id: str | None = None
    context: Context | None = None
    errors: list[ErrorInfo] = []


class Status(_Payload):
    """Delivery receipt for a message we sent. `recipient_id` (phone) is missing when we sent to a
    BSUID; `recipient_user_id` is missing on older payloads and on some failures.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/status
    ```
    {"id": "wamid.HBgL...", "status": "failed", "timestamp": "1749416383",
     "recipient_id": "16505551234", "recipient_user_id": "US.13491208655302741918",
     "errors": [{"code": 131026, "title": "Message undeliverable"}]}
    ```
    """

    id: str
    status: str
    timestamp: UnixTime
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    # What we put in biz_opaque_callback_data when sending ("q:<queue id>"), echoed back.
    biz_opaque_callback_data: str | None = None
    errors: list[ErrorInfo] = []


class MessagesValue(_Payload):
    """The value of a `messages` change: inbound `messages` (with `contacts`) and/or `statuses`.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
    ```
    {"messaging_product": "whatsapp",
     "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
     "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
     "messages": [{"from": "16505551234", "id": "wamid.HBgL...", "timestamp": "1749416383",
                   "type": "text", "text": {"body": "Hi"}}]}
    ```
    """

    metadata: Metadata
    messaging_product: str | None = None
    contacts: list[Contact] = []
    messages: list[Message] = []
    statuses: list[Status] = []
    errors: list[ErrorInfo] = []


# --- per-type message objects ------------------------------------------------------------------


class TextObject(_Payload):
    """https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/text
    ```
    {"body": "Does it come in another color?"}
    ```
    """

    body: str


class MediaObject(_Payload):
    """Image, audio, video, document and sticker share one shape. `id` is the media id to fetch
    through the Graph API; the `url` Meta now includes is short-lived and needs our token.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/document
    ```
    {"id": "1003383421387256", "mime_type": "application/pdf", "sha256": "u6V1n...=",
     "filename": "invoice.pdf", "caption": "March invoice"}
    {"id": "1003383421387257", "mime_type": "audio/ogg; codecs=opus", "sha256": "...", "voice": true}
    {"id": "1003383421387258", "mime_type": "image/webp", "sha256": "...", "animated": false}
    ```
    """

    id: str
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    voice: bool | None = None
    animated: bool | None = None


class LocationObject(_Payload):
    """Current location (coordinates only) or a chosen place (with name/address/url).

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/location
    ```
    {"latitude": 37.4611978, "longitude": -122.2164385, "name": "Philz Coffee",
     "address": "101 Forest Ave, Palo Alto, CA 94301", "url": "https://philzcoffee.com"}
    ```
    """

    latitude: Coordinate
    longitude: Coordinate
    name: str | None = None
    address: str | None = None
    url: str | None = None


class ReactionObject(_Payload):
    """A reaction to one of our messages; an empty or absent `emoji` removes the reaction.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/reaction
    ```
    {"message_id": "wamid.HBgL...", "emoji": "\\ud83d\\ude00"}
    ```
    """

    message_id: str
    emoji: str | None = None


class ReplyObject(_Payload):
    """The chosen reply button or list row.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/interactive
    ```
    {"id": "priority_express", "title": "Priority Mail Express", "description": "Next Day to 2 Days"}
    ```
    """

    id: str
    title: str
    description: str | None = None


class InteractiveObject(_Payload):
    """A reply to an interactive message. Other `type`s (Flows' `nfm_reply`, ...) are not parsed.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/interactive
    ```
    {"type": "button_reply", "button_reply": {"id": "cancel-button", "title": "Cancel"}}
    ```
    """

    type: str
    button_reply: ReplyObject | None = None
    list_reply: ReplyObject | None = None


class ButtonObject(_Payload):
    """A template's quick-reply button (type `button`, unlike interactive `button_reply`).

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/button
    ```
    {"payload": "stop-promos", "text": "Stop promotions"}
    ```
    """

    text: str
    payload: str | None = None


class SharedContactName(_Payload):
    """https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/contacts
    ```
    {"formatted_name": "Barbara J. Johnson", "first_name": "Barbara", "last_name": "Johnson"}
    ```
    """

    formatted_name: str | None = None


class SharedContact(_Payload):
    """One contact card the user shared. Meta omits whatever the user or device did not share.

    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/contacts
    ```
    {"name": {"formatted_name": "Barbara J. Johnson"},
     "phones": [{"phone": "+1 (650) 555-1234", "type": "WORK", "wa_id": "16505551234"}]}
    ```
    """

    name: SharedContactName | None = None


# --- result ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookBatch:
    """Everything one delivery carried.

    `ignored` counts well-formed items we have no use for (another `object`, another change
    `field`, an unknown status, a `messages` change carrying neither messages nor statuses);
    `phone_number_ids` names every business number the relevant changes were for.
    """

    messages: tuple[base.InboundMessage, ...] = ()
    statuses: tuple[base.StatusUpdate, ...] = ()
    ignored: int = 0
    phone_number_ids: frozenset[str] = frozenset()


# --- signature and handshake -------------------------------------------------------------------


def verify_signature(app_secret: str, body: bytes, header: str | None) -> bool:
    """Check `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`.

    Must run on the bytes as received: Meta signs its own serialisation (with escaped unicode), so
    re-encoded JSON would not match. Hex digits are accepted in either case (Meta sends lower
    case; the digest is what matters). Never raises; False for a missing or garbled header or
    an empty secret.
    """
    if not app_secret or not header:
        return False
    value = header.strip()
    if not value.startswith(_SIGNATURE_PREFIX):
        return False
    try:
        received = bytes.fromhex(value[len(_SIGNATURE_PREFIX) :])
    except ValueError:
        return False
    expected = hmac.new(app_secret.encode("utf-8"), bytes(body), hashlib.sha256).digest()
    return hmac.compare_digest(received, expected)


def verify_handshake(params: Mapping[str, str], verify_token: str) -> str | None:
    """Answer Meta's subscription check: the `hub.challenge` to echo back, or None (answer 403).

    https://developers.facebook.com/docs/graph-api/webhooks/getting-started
    ```
    GET /webhooks?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=meatyhamhock
    ```
    """
    mode = params.get("hub.mode")
    token = params.get("hub.verify_token")
    challenge = params.get("hub.challenge")
    if mode != "subscribe" or not verify_token or token is None or not challenge:
        return None
    # surrogatepass: a query string decoded with surrogateescape must not make this raise.
    if not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), verify_token.encode("utf-8", "surrogatepass")):
        return None
    return challenge


# --- parsing -----------------------------------------------------------------------------------


def parse_webhook(body: bytes) -> WebhookBatch:
    """Parse a `whatsapp_business_account` webhook body into messages and status updates.

    Raises `base.PayloadError(field, problem)` for a body that is not JSON, not an object, or whose
    relevant parts have wrong types or miss required fields; `field` is a JSON path such as
    `entry[0].changes[1].value.messages[2].id`.
    """
    data = _load_json(body)
    if not isinstance(data, dict):
        raise base.PayloadError("body", "must be a JSON object")
    if "object" not in data:
        raise base.PayloadError("object", "required field is missing")
    if not isinstance(data["object"], str):
        raise base.PayloadError("object", "must be a string")
    if data["object"] != WABA_OBJECT:
        # Another product's webhook (Page, Instagram) sent to this URL: acknowledge, do nothing.
        return WebhookBatch(ignored=1)

    envelope = _validate(Envelope, data, "")
    messages: list[base.InboundMessage] = []
    statuses: list[base.StatusUpdate] = []
    phone_number_ids: set[str] = set()
    ignored = 0
    for e, entry in enumerate(envelope.entry):
        for c, change in enumerate(entry.changes):
            if change.field != MESSAGES_FIELD:
                ignored += 1  # account_update, message_template_status_update, ...
                continue
            path = f"entry[{e}].changes[{c}].value"
            raw_value = data["entry"][e]["changes"][c].get("value")
            value = _validate(MessagesValue, raw_value, path)
            phone_number_ids.add(value.metadata.phone_number_id)
            if not value.messages and not value.statuses:
                ignored += 1
                continue
            for m, message in enumerate(value.messages):
                messages.append(_inbound(message, raw_value, m, entry.id, value, f"{path}.messages[{m}]"))
            for s, status in enumerate(value.statuses):
                update = _status(status, raw_value["statuses"][s], raw_value, entry.id, value)
                if update is None:
                    ignored += 1
                else:
                    statuses.append(update)
    return WebhookBatch(tuple(messages), tuple(statuses), ignored, frozenset(phone_number_ids))


def _load_json(body: bytes) -> Any:
    try:
        text = bytes(body).decode("utf-8")
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError, TypeError) as exc:
        raise base.PayloadError("body", f"invalid JSON: {exc}") from None
    try:
        # A lone "\ud83d" escape decodes to an unpaired surrogate that cannot be stored as UTF-8
        # (Postgres jsonb would refuse it later). Paired escapes, which Meta uses for emoji, are fine.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        raise base.PayloadError("body", "invalid JSON: unpaired UTF-16 surrogate") from None
    # JSON can only carry NUL escaped, so the text tells whether there is one to replace.
    return base.without_nul(data) if "\\u0000" in text else data


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


_M = TypeVar("_M", bound=BaseModel)


_PROBLEMS = {
    "missing": "required field is missing",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "bool_parsing": "must be a boolean",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
}


def _validate(model: type[_M], data: object, path: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        problem = _PROBLEMS.get(error["type"]) or error["msg"].removeprefix("Value error, ")
        raise base.PayloadError(_join(path, error["loc"]) or "body", problem) from None


def _join(path: str, loc: tuple[int | str, ...]) -> str:
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


def _inbound(
    message: Message,
    raw_value: dict[str, Any],
    index: int,
    entry_id: str,
    value: MessagesValue,
    path: str,
) -> base.InboundMessage:
    raw_message: dict[str, Any] = raw_value["messages"][index]
    contact_index = _match_contact(message, value.contacts)
    contact = value.contacts[contact_index] if contact_index is not None else None
    sender = _sender(message, contact)
    if not sender.identified:
        raise base.PayloadError(f"{path}.from", "no usable sender: no phone number, from_user_id / user_id or username")

    value_errors: list[Any] = raw_value.get("errors") or []
    message_type, body, media, details = _content(message, raw_message, value_errors, path)
    if message.context is not None:
        context = message.context.model_dump(by_alias=True, exclude_none=True)
        if context:
            details["context"] = context
    for key in ("referral", "group_id"):  # Click-to-WhatsApp ad source; group chats
        if key in raw_message:
            details[key] = raw_message[key]

    raw: dict[str, Any] = {
        "message": raw_message,
        "contact": raw_value["contacts"][contact_index] if contact_index is not None else None,
        "metadata": raw_value["metadata"],
        "entry_id": entry_id,
    }
    if "errors" in raw_value:
        raw["errors"] = raw_value["errors"]
    return base.InboundMessage(
        provider=base.Provider.META,
        channel_kind=base.ChannelKind.WHATSAPP_CLOUD,
        channel_address=value.metadata.phone_number_id,
        provider_message_id=message.id,
        sender=sender,
        message_type=message_type,
        body=body,
        raw=raw,
        media=media,
        sent_at=message.timestamp,
        details=details,
    )


def _match_contact(message: Message, contacts: list[Contact]) -> int | None:
    for i, contact in enumerate(contacts):
        if message.from_ and contact.wa_id == message.from_:
            return i
        if message.from_user_id and contact.user_id == message.from_user_id:
            return i
    if len(contacts) == 1:
        only = contacts[0]
        # The lone contact is the sender unless an identifier present on both sides disagrees.
        clash_phone = bool(message.from_ and only.wa_id and only.wa_id != message.from_)
        clash_bsuid = bool(message.from_user_id and only.user_id and only.user_id != message.from_user_id)
        if not (clash_phone or clash_bsuid):
            return 0
    return None


def _sender(message: Message, contact: Contact | None) -> base.Sender:
    wa_id = message.from_ or (contact.wa_id if contact else None)
    profile = contact.profile if contact else None
    return base.Sender(
        phone=phone.to_e164(wa_id),
        wa_id=wa_id,
        wa_user_id=message.from_user_id or (contact.user_id if contact else None),
        wa_parent_user_id=message.from_parent_user_id or (contact.parent_user_id if contact else None),
        username=profile.username if profile else None,
        profile_name=profile.name if profile else None,
    )


_Content = tuple[base.MessageType, str | None, tuple[base.Media, ...], dict[str, Any]]


def _content(message: Message, raw_message: dict[str, Any], value_errors: list[Any], path: str) -> _Content:
    kind = message.type
    payload = raw_message.get(kind)
    if payload is None:
        # Meta sends e.g. `"type": "interactive"` with no interactive object when it cannot render
        # the message, and puts the reason in value-level `errors`: store it, do not reject it.
        return _unsupported(message, raw_message, value_errors)
    at = f"{path}.{kind}"

    if kind == "text":
        return base.MessageType.TEXT, _validate(TextObject, payload, at).body, (), {}

    if kind in _MEDIA_TYPES:
        obj = _validate(MediaObject, payload, at)
        media = base.Media(
            content_type=obj.mime_type,
            media_id=obj.id,
            sha256=obj.sha256,
            filename=obj.filename,
            caption=obj.caption,
        )
        details: dict[str, Any] = {}
        if obj.voice is not None:  # audio: a recorded voice note rather than an audio file
            details["voice"] = obj.voice
        if obj.animated is not None:
            details["animated"] = obj.animated
        return _MEDIA_TYPES[kind], obj.caption or None, (media,), details

    if kind == "location":
        location = _validate(LocationObject, payload, at).model_dump(exclude_none=True)
        return base.MessageType.LOCATION, None, (), {"location": location}

    if kind == "reaction":
        reaction = _validate(ReactionObject, payload, at)
        # Un-reacting arrives as the same message type with "emoji": "" (or no emoji at all).
        emoji = reaction.emoji or None
        details = {"reaction": {"message_id": reaction.message_id, "emoji": emoji, "removed": emoji is None}}
        return base.MessageType.REACTION, None, (), details

    if kind == "interactive":
        interactive = _validate(InteractiveObject, payload, at)
        reply = None
        if interactive.type == "button_reply":
            reply = interactive.button_reply
        elif interactive.type == "list_reply":
            reply = interactive.list_reply
        if reply is None:
            return _unsupported(message, raw_message, value_errors)
        details = {"interactive": {"type": interactive.type, **reply.model_dump(exclude_none=True)}}
        return base.MessageType.INTERACTIVE, reply.title, (), details

    if kind == "button":
        button = _validate(ButtonObject, payload, at).model_dump(exclude_none=True)
        return base.MessageType.BUTTON, button["text"], (), {"button": button}

    if kind == "contacts":
        if not isinstance(payload, list):
            raise base.PayloadError(at, "must be a list")
        for i, card in enumerate(payload):
            _validate(SharedContact, card, f"{at}[{i}]")
        return base.MessageType.CONTACTS, None, (), {"contacts": payload}

    # system (number / BSUID changes), unsupported, order, request_welcome, whatever Meta adds next.
    return _unsupported(message, raw_message, value_errors)


def _unsupported(message: Message, raw_message: dict[str, Any], value_errors: list[Any]) -> _Content:
    details: dict[str, Any] = {"original_type": message.type}
    errors = list(raw_message.get("errors") or []) + value_errors
    if errors:
        details["errors"] = errors
    payload = raw_message.get(message.type)
    if payload is not None:
        details.setdefault(message.type, payload)
    return base.MessageType.UNSUPPORTED, None, (), details


def _status(
    status: Status,
    raw_status: dict[str, Any],
    raw_value: dict[str, Any],
    entry_id: str,
    value: MessagesValue,
) -> base.StatusUpdate | None:
    mapped = STATUS_MAP.get(status.status)
    if mapped is None:
        return None
    error = status.errors[0] if status.errors else None
    return base.StatusUpdate(
        provider=base.Provider.META,
        provider_message_id=status.id,
        status=mapped,
        raw={"status": raw_status, "metadata": raw_value["metadata"], "entry_id": entry_id},
        error_code=error.code if error else None,
        error_message=(error.title or error.message) if error else None,
        occurred_at=status.timestamp,
        channel_address=value.metadata.phone_number_id,
        # As Meta gave it: the phone (wa_id) when we sent to one, else the BSUID.
        recipient=status.recipient_id or status.recipient_user_id,
        queue_id=base.queue_id_from(status.biz_opaque_callback_data, QUEUE_ID_PREFIX),
    )
