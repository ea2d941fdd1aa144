"""Twilio Programmable Messaging (SMS, MMS, WhatsApp): signature check, inbound parsing, status mapping.

Pure functions over the form Twilio posts; the HTTP handler in `services/inbound` reads the body
(`await request.post()`), rebuilds the public URL from configuration and calls them in this order:
`verify_signature`, then `parse_inbound` or `parse_status`. Sending will live here too.

The form is parsed by hand rather than through a pydantic model: it is a flat multimap whose media
fields are indexed (`MediaUrl0`, `MediaUrl1`, ...), repeated names are legal, and every problem must
surface as a `PayloadError` naming Twilio's own field.

Docs: https://www.twilio.com/docs/messaging/guides/webhook-request (inbound),
https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks (statuses),
https://www.twilio.com/docs/usage/webhooks/webhooks-security (signatures).
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, TypeAlias

import yarl
from twilio import request_validator
from twilio.twiml import messaging_response

from services import phone
from services.channels import base

FormData: TypeAlias = Mapping[str, object] | Iterable[tuple[str, str]]
"""A received form: aiohttp's `await request.post()` (a MultiDictProxy), a multidict, or (name, value) pairs.

A plain dict is accepted too, but it cannot carry repeated names, so never build one from a request.
"""

SIGNATURE_HEADER: Final = request_validator.SIGNATURE_HEADER  # "X-Twilio-Signature"

EMPTY_TWIML: Final[str] = str(messaging_response.MessagingResponse())
"""The body we answer inbound webhooks with (`text/xml`): "received, no automatic reply".

Replies are sent later through the REST API, after the message is committed and an agent has run.
"""

# Twilio's MessageStatus values -> ours. Statuses only move forward (base.STATUS_RANK), so each maps
# to the state it proves the message reached.
STATUS_MAP: dict[str, base.MessageStatus] = {
    # With a Messaging Service a message starts "accepted" (or "scheduled" when sent later), then
    # becomes "queued" once a sender is picked. Twilio sends no callback for the initial status, but
    # the REST API returns it, and the outbound code records it through this same map.
    "accepted": base.MessageStatus.ACCEPTED,
    "scheduled": base.MessageStatus.SCHEDULED,
    "queued": base.MessageStatus.QUEUED,
    "sending": base.MessageStatus.SENDING,
    "sent": base.MessageStatus.SENT,
    "delivered": base.MessageStatus.DELIVERED,
    # "undelivered": the carrier or WhatsApp reported non-delivery; "failed": Twilio could not send it
    # at all. Both are final, and ErrorCode says why.
    "undelivered": base.MessageStatus.UNDELIVERED,
    "failed": base.MessageStatus.FAILED,
    "read": base.MessageStatus.READ,  # WhatsApp read receipts
    # A scheduled message cancelled before it went out: it never reached the recipient.
    "canceled": base.MessageStatus.CANCELED,
    # Some of the message reached the handset (Twilio reports it when only part of a delivery
    # succeeded). We have no "partial" state, and the recipient has seen content from us, which is
    # what the conversation logic cares about: count it as delivered. The exact value stays in `raw`,
    # and the rank keeps a late "sent" or "undelivered" from moving it back.
    "partially_delivered": base.MessageStatus.DELIVERED,
    # "receiving" and "received" describe inbound messages and are deliberately absent: a callback
    # carrying them is well-formed but irrelevant, so parse_status returns None.
}

# Twilio SIDs are two letters and 32 hex digits. We only insist on a short alphanumeric token, so an
# unexpected format does not bounce real traffic, while junk never becomes a dedupe key.
_SID = re.compile(r"[A-Za-z0-9]{2,64}")
_WHATSAPP_PREFIX: Final = "whatsapp"
_RCS_PREFIX: Final = "rcs"

# Business addresses that are not phone numbers, each stored as the normalisation beside it (and
# admitted by the channels.address CHECK, migration 0011), all on the twilio_sms channel kind:
# - a short code: 5 or 6 digits, stored as they are ("12345");
_SHORT_CODE = re.compile(r"[0-9]{5,6}")
# - an alphanumeric sender ID: 1 to 11 ASCII letters, digits and spaces with at least one letter
#   (Twilio's rule), stored as received without surrounding whitespace ("Parley Co");
_ALPHANUMERIC = re.compile(r"(?=[0-9 ]*[A-Za-z])[A-Za-z0-9 ]{1,11}")
# - an RCS sender ("To=rcs:brand_xyz_agent"), stored with its prefix ("rcs:brand_xyz_agent"). Twilio's
#   RCS senders sit in a Messaging Service beside its SMS numbers, fall back to SMS, and share their
#   opt-outs, so RCS is a way of reaching the same SMS channel kind, not a kind of its own.
_RCS_SENDER = re.compile(r"[A-Za-z0-9_.+-]{1,100}")

# WhatsApp Click-to-WhatsApp ad fields. ReferralNumMedia is left out: Twilio sends "0" on every
# WhatsApp message, ad or not.
_REFERRAL_FIELDS: Final = {
    "ReferralBody": "body",
    "ReferralHeadline": "headline",
    "ReferralSourceId": "source_id",
    "ReferralSourceType": "source_type",
    "ReferralSourceUrl": "source_url",
    "ReferralMediaId": "media_id",
    "ReferralMediaContentType": "media_content_type",
    "ReferralMediaUrl": "media_url",
    "ReferralCtwaClid": "ctwa_clid",
}


# Every field parse_inbound reads only for structured replies, replies-to, ads and forwards. A form
# with none of them skips those readers: they would all find nothing.
_RARE_FIELDS: Final = frozenset({
    "Latitude", "Longitude", "Label", "Address", "ListId", "ListTitle", "ButtonPayload", "ButtonText",
    "OriginalRepliedMessageSid", "OriginalRepliedMessageSender", "Forwarded", "FrequentlyForwarded",
    *_REFERRAL_FIELDS,
})


def verify_signature(auth_token: str, url: str, params: FormData, signature: str | None) -> bool:
    """Whether `signature` (the X-Twilio-Signature header) is Twilio's signature of this request.

    `url` must be the full public URL Twilio called, query string included, rebuilt from
    configuration (or trusted X-Forwarded-* headers), never the URL the proxy handed us. `params` must
    be every received form field, before any whitelisting: Twilio adds parameters without notice, and
    a missing field or a dropped empty one (`ToCity=` contributes "ToCity") breaks the signature.

    The twilio package's RequestValidator does the work: it tries the URL with and without its
    default port (Twilio is inconsistent about ":443"), sorts names, and for a repeated name appends
    `name + value` once per distinct value, values sorted. It reads repeated values through
    `getall()`, so the form is handed over as a MultiDict: a dict would keep a single value.

    Returns False, never raises, for a missing signature, an empty token, an unparsable URL or a
    form that is not text.
    """
    if not signature or not auth_token:
        # An empty token would "verify" anything an attacker signs with the empty key.
        return False
    try:
        form = _checked(params).signed
        validator = request_validator.RequestValidator(auth_token)
        # The URL as configured almost always matches: one HMAC. Only a mismatch pays for
        # validate(), which tries the URL with and without its default port.
        if hmac.compare_digest(validator.compute_signature(url, form).encode(), signature.encode()):
            return True
        return bool(validator.validate(url, form, signature))
    except (ValueError, TypeError):
        # ValueError covers a bad port in the URL, text that cannot be encoded, and PayloadError.
        return False


def parse_inbound(form: FormData) -> base.InboundMessage:
    """The provider-neutral message from Twilio's incoming-message webhook (SMS, MMS or WhatsApp).

    https://www.twilio.com/docs/messaging/guides/webhook-request. A WhatsApp text, as posted
    (`application/x-www-form-urlencoded`, one line, wrapped here):

        SmsMessageSid=SM5d1e...&NumMedia=0&ProfileName=Ana+Souza&MessageType=text
        &SmsSid=SM5d1e...&WaId=5511987654321&SmsStatus=received&Body=Ol%C3%A1%21
        &To=whatsapp%3A%2B14155238886&NumSegments=1&ReferralNumMedia=0&MessageSid=SM5d1e...
        &AccountSid=AC3a4f...&From=whatsapp%3A%2B5511987654321&ApiVersion=2010-04-01

    Required: MessageSid (SmsSid as a fallback), AccountSid, From and To, both phone numbers, bare
    or with the "whatsapp:" prefix on both. Raises PayloadError naming the first bad field.

    `message_type` is LOCATION (Latitude/Longitude), INTERACTIVE (a list reply: ListId/ListTitle),
    BUTTON (a quick reply: ButtonPayload/ButtonText), else decided by the attachments: none -> TEXT,
    one -> IMAGE/AUDIO/VIDEO/CONTACTS (text/vcard)/DOCUMENT by its content type, several -> MEDIA.
    A message with no text, attachment or structured content is UNSUPPORTED. `details` may hold
    "location", "interactive", "button", "context" (the message replied to), "referral" (the ad a
    Click-to-WhatsApp conversation started from), "forwarded" and "frequently_forwarded".
    """
    fields = _checked(form).by_name()

    message_id = _sid(fields, "MessageSid", "SmsSid")
    account_sid = _sid(fields, "AccountSid")
    sender_phone, from_prefix = _sender(fields, "From")
    channel_address, to_prefix = _business_address(fields, "To")
    from_whatsapp = from_prefix == _WHATSAPP_PREFIX
    if from_whatsapp != (to_prefix == _WHATSAPP_PREFIX):
        raise base.PayloadError("To", "is not on the same channel as From")

    media = _media(fields)
    details: dict[str, Any] = {}
    # Most messages are plain text or media: one set test instead of reading some twenty absent names.
    rare = not _RARE_FIELDS.isdisjoint(fields)
    message_type = _structured_type(fields, details) if rare else None
    body = _one(fields, "Body")
    if message_type is None:
        message_type = _type_from_media(media, body)
    if rare:
        _annotate(fields, details)

    return base.InboundMessage(
        provider=base.Provider.TWILIO,
        channel_kind=base.ChannelKind.TWILIO_WHATSAPP if from_whatsapp else base.ChannelKind.TWILIO_SMS,
        channel_address=channel_address,
        provider_message_id=message_id,
        sender=base.Sender(
            phone=sender_phone,
            wa_id=_one(fields, "WaId"),
            profile_name=_one(fields, "ProfileName"),
        ),
        message_type=message_type,
        body=body,
        raw=_raw(fields),
        media=media,
        segments=_count(fields, "NumSegments"),
        details=details,
        messaging_service_sid=_optional_sid(fields, "MessagingServiceSid"),
        account_sid=account_sid,
    )


def _annotate(fields: _Values, details: dict[str, Any]) -> None:
    """The message replied to, the ad a conversation started from, and forwarding flags."""
    context = _without_none({
        "message_id": _one(fields, "OriginalRepliedMessageSid"),
        "from": _optional_e164(fields, "OriginalRepliedMessageSender"),
    })
    if "message_id" in context:
        details["context"] = context
    if any(name in fields for name in _REFERRAL_FIELDS):
        referral = _without_none({key: _one(fields, name) for name, key in _REFERRAL_FIELDS.items()})
        if referral:
            details["referral"] = referral
    for name, key in (("Forwarded", "forwarded"), ("FrequentlyForwarded", "frequently_forwarded")):
        if _one(fields, name) == "true":
            details[key] = True


def parse_status(form: FormData) -> base.StatusUpdate | None:
    """The status update from an outbound message's status callback, or None when it is irrelevant.

    https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks.
    An SMS that could not be delivered, as posted (one line, wrapped here):

        ErrorCode=30006&SmsSid=SM9b2c...&SmsStatus=undelivered&MessageStatus=undelivered
        &To=%2B13125550199&MessagingServiceSid=MG7e1d...&MessageSid=SM9b2c...
        &AccountSid=AC3a4f...&From=%2B14155550123&ApiVersion=2010-04-01

    Required: MessageSid (SmsSid as a fallback) and MessageStatus (SmsStatus as a fallback); a
    missing one raises PayloadError. A status missing from STATUS_MAP (the inbound-only "receiving"
    and "received", or one Twilio adds later) returns None, so the handler still answers 200 and
    Twilio does not retry. `recipient` is To as E.164, and `channel_address` is From as `parse_inbound`
    normalises a business address (E.164, short code, alphanumeric sender ID or rcs:sender), each None
    when absent or not such an address.
    """
    fields = _checked(form).by_name()
    message_id = _sid(fields, "MessageSid", "SmsSid")
    status = STATUS_MAP.get(_required(fields, "MessageStatus", "SmsStatus").lower())
    if status is None:
        return None
    return base.StatusUpdate(
        provider=base.Provider.TWILIO,
        provider_message_id=message_id,
        status=status,
        raw=_raw(fields),
        error_code=_one(fields, "ErrorCode"),
        error_message=_one(fields, "ErrorMessage"),
        channel_address=_optional_business_address(fields, "From"),
        recipient=_optional_e164(fields, "To"),
    )


_Values: TypeAlias = Mapping[str, list[str]]
"""A form by field name: every value received for that name, in order."""


class _Signed(dict[str, list[str]]):
    """{name: [values, as received]}: what Twilio signed. RequestValidator reads a repeated name's
    values through getall(), as on a MultiDict; a dict lookup is a fraction of the multidict's."""

    getall = dict.__getitem__


class Fields:
    """A form already checked by `fields()`: every name and value is text, kept twice over only when
    it has to be: as received (`signed`, for the signature) and as the parsers read it (`by_name`, with
    NUL characters replaced, see base.without_nul). Without a NUL both are the same dict."""

    __slots__ = ("_by_name", "signed")

    def __init__(self, signed: _Signed | None = None, by_name: dict[str, list[str]] | None = None) -> None:
        self.signed = _Signed() if signed is None else signed
        self._by_name = self.signed if by_name is None else by_name

    def by_name(self) -> dict[str, list[str]]:
        """The form as {name: [values]}: the parsers look up some thirty names."""
        return self._by_name

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value received for `name`, as received."""
        values = self.signed.get(name)
        return values[0] if values else default

    def getall(self, name: str) -> list[str]:
        """Every value received for `name`, in order; KeyError when there is none."""
        return self.signed[name]

    def items(self) -> Iterator[tuple[str, str]]:
        """Every (name, value) pair as received, a repeated name's values together."""
        return ((name, value) for name, values in self.signed.items() for value in values)

    __iter__ = items  # so a Fields is also FormData: (name, value) pairs


def fields(form: FormData) -> Fields:
    """Every received (name, value) pair, in order, repeats kept; PayloadError if one is not text.
    The webhook checks the form once and hands the result to both the signature check and the parser."""
    return _checked(form)


def form_fields(text: str) -> Fields:
    """A url-encoded form body, already decoded to text, parsed as aiohttp's `request.post()` parses
    it (yarl's parser: `+` and percent escapes decoded, blank values kept, pairs in order).

    Every pair yarl returns is text, so only a NUL needs the careful path, and a NUL can only come
    from the body itself or a `%00` escape: one look at the text spares a test per field."""
    pairs = yarl.query_to_pairs(text)
    if base.NUL in text or "%00" in text:
        return _checked(pairs)
    signed = _Signed()
    for name, value in pairs:
        if name in signed:
            signed[name].append(value)
        else:
            signed[name] = [value]
    return Fields(signed)


def _checked(form: FormData) -> Fields:
    if isinstance(form, Fields):
        return form
    # A mapping's items (a MultiDict's repeat its names); anything else must be the pairs themselves.
    # Looked up rather than isinstance(form, Mapping): an ABC check costs more than the rest of a field.
    items = getattr(form, "items", None)
    pairs: Iterable[Any] = items() if callable(items) else form
    signed = _Signed()
    nul = False
    for pair in pairs:
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise base.PayloadError("form", "must be (name, value) pairs") from None
        if not isinstance(name, str):
            raise base.PayloadError("form", "has a field name that is not text")
        if not isinstance(value, str):
            # A multipart upload (aiohttp FileField) or bytes: Twilio only ever posts url-encoded text.
            raise base.PayloadError(name, "must be text")
        if name in signed:  # not setdefault(): that builds a list for every field
            signed[name].append(value)
        else:
            signed[name] = [value]
        if not nul and (base.NUL in name or base.NUL in value):
            nul = True
    if not nul:
        return Fields(signed)
    by_name: dict[str, list[str]] = {}
    for name, values in signed.items():
        for value in values:
            _index(by_name, name, value)
    return Fields(signed, by_name)


def _index(by_name: dict[str, list[str]], name: str, value: str) -> None:
    # `signed` keeps what was signed; the parsers read storable text (see base.without_nul).
    if base.NUL in name or base.NUL in value:
        name, value = base.without_nul(name), base.without_nul(value)
    if name in by_name:
        by_name[name].append(value)
    else:
        by_name[name] = [value]


def _raw(fields: _Values) -> dict[str, Any]:
    """Every field as received: a repeated name keeps all its values as a list."""
    return {name: values[0] if len(values) == 1 else list(values) for name, values in fields.items()}


def _one(fields: _Values, name: str) -> str | None:
    """The field's value, None when absent or empty. A name repeated with different values is refused."""
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1 and len(set(values)) > 1:
        # Both values are signed, so this is no forgery; but which one we act on would be a guess.
        raise base.PayloadError(name, "is repeated with different values")
    return values[0] or None


def _required(fields: _Values, name: str, *fallbacks: str) -> str:
    for candidate in (name, *fallbacks):
        value = _one(fields, candidate)
        if value is not None:
            return value
    raise base.PayloadError(name, "is required")


def _sid(fields: _Values, name: str, *fallbacks: str) -> str:
    value = _required(fields, name, *fallbacks)
    if not _SID.fullmatch(value):
        raise base.PayloadError(name, "is not a Twilio SID")
    return value


def _optional_sid(fields: _Values, name: str) -> str | None:
    return _sid(fields, name) if _one(fields, name) is not None else None


def _prefixed(fields: _Values, name: str) -> tuple[str, str]:
    """(channel prefix, address) of From or To: "" for SMS, "whatsapp" or "rcs"."""
    value = _required(fields, name).strip()
    prefix, colon, rest = value.partition(":")
    if not colon:
        return "", value
    if prefix not in (_WHATSAPP_PREFIX, _RCS_PREFIX):
        # messenger: and the like would otherwise pass as SMS numbers (to_e164 drops any prefix).
        raise base.PayloadError(name, "has an unsupported channel prefix")
    return prefix, rest


def _sender(fields: _Values, name: str) -> tuple[str, str]:
    """(E.164 number, channel prefix) of the person who wrote: a phone number on every channel (RCS
    included, "rcs:+1..."), stored only as E.164, so one that cannot be is refused here rather than
    by the users.phone CHECK."""
    prefix, value = _prefixed(fields, name)
    e164 = phone.to_e164(value)
    if e164 is None:
        raise base.PayloadError(name, "is not a phone number that can be stored as E.164 (+ and 7 to 15 digits)")
    return e164, prefix


def _business_address(fields: _Values, name: str) -> tuple[str, str]:
    """(normalised address, channel prefix) of the number, short code, sender ID or RCS sender we were
    reached at (see _SHORT_CODE and its neighbours); WhatsApp addresses are always phone numbers."""
    prefix, value = _prefixed(fields, name)
    if prefix == _RCS_PREFIX:
        if not _RCS_SENDER.fullmatch(value):
            raise base.PayloadError(name, "is not an RCS sender (rcs: then 1 to 100 letters, digits or _.+-)")
        return f"{_RCS_PREFIX}:{value}", prefix
    if not prefix:
        if _SHORT_CODE.fullmatch(value) or _ALPHANUMERIC.fullmatch(value):
            return value, prefix
    e164 = phone.to_e164(value)
    if e164 is None:
        raise base.PayloadError(name, "is not a phone number, short code, alphanumeric sender ID or RCS sender")
    return e164, prefix


def _optional_business_address(fields: _Values, name: str) -> str | None:
    try:
        return _business_address(fields, name)[0] if _one(fields, name) else None
    except base.PayloadError:
        return None


def _optional_e164(fields: _Values, name: str) -> str | None:
    value = _one(fields, name)
    return phone.to_e164(value) if value else None


_MAX_COUNT: Final = 2**31 - 1  # the database's integer


def _count(fields: _Values, name: str) -> int | None:
    value = _one(fields, name)
    if value is None:
        return None
    # int() alone would also take " 3", "+3", "1_0" and non-ASCII digits.
    if not (value.isascii() and value.isdigit()):
        raise base.PayloadError(name, "must be a non-negative integer")
    digits = value.lstrip("0") or "0"
    # Length first: int() refuses more than about 4300 digits.
    if len(digits) > 10 or int(digits) > _MAX_COUNT:
        raise base.PayloadError(name, f"must be at most {_MAX_COUNT}")
    return int(digits)


def _media(fields: _Values) -> tuple[base.Media, ...]:
    count = _count(fields, "NumMedia") or 0
    media: list[base.Media] = []
    # Stops at the first missing URL, so a huge NumMedia costs one iteration, not a billion.
    for index in range(count):
        url = _one(fields, f"MediaUrl{index}")
        if url is None:
            raise base.PayloadError(f"MediaUrl{index}", f"is required when NumMedia is {count}")
        media.append(base.Media(content_type=_one(fields, f"MediaContentType{index}"), url=url))
    return tuple(media)


def _structured_type(fields: _Values, details: dict[str, Any]) -> base.MessageType | None:
    """LOCATION, INTERACTIVE or BUTTON when the form carries their fields (recorded in `details`)."""
    latitude = _coordinate(fields, "Latitude", 90.0, requires="Longitude")
    longitude = _coordinate(fields, "Longitude", 180.0, requires="Latitude")
    if latitude is not None and longitude is not None:
        # "name" for Twilio's Label, so a location reads the same whichever provider delivered it.
        details["location"] = _without_none({
            "latitude": latitude,
            "longitude": longitude,
            "name": _one(fields, "Label"),
            "address": _one(fields, "Address"),
        })
        return base.MessageType.LOCATION

    list_id, list_title = _one(fields, "ListId"), _one(fields, "ListTitle")
    if list_id or list_title:
        details["interactive"] = _without_none({"type": "list_reply", "id": list_id, "title": list_title})
        return base.MessageType.INTERACTIVE

    payload, text = _one(fields, "ButtonPayload"), _one(fields, "ButtonText")
    if payload or text:
        details["button"] = _without_none({"payload": payload, "text": text})
        return base.MessageType.BUTTON
    return None


def _coordinate(fields: _Values, name: str, limit: float, *, requires: str) -> float | None:
    value = _one(fields, name)
    if value is None:
        if _one(fields, requires) is not None:
            raise base.PayloadError(name, f"is required with {requires}")
        return None
    try:
        number = float(value)
    except ValueError:
        raise base.PayloadError(name, "is not a number") from None
    if not math.isfinite(number) or abs(number) > limit:
        raise base.PayloadError(name, f"must be between -{limit:g} and {limit:g}")
    return number


def _type_from_media(media: tuple[base.Media, ...], body: str | None) -> base.MessageType:
    if len(media) > 1:
        return base.MessageType.MEDIA
    if media:
        content_type = (media[0].content_type or "").split(";", 1)[0].strip().lower()
        if content_type in ("text/vcard", "text/x-vcard"):
            # A shared WhatsApp contact reaches us as a vCard attachment.
            return base.MessageType.CONTACTS
        major = content_type.split("/", 1)[0]
        return {
            "image": base.MessageType.IMAGE,
            "audio": base.MessageType.AUDIO,
            "video": base.MessageType.VIDEO,
        }.get(major, base.MessageType.DOCUMENT)
    return base.MessageType.TEXT if body is not None else base.MessageType.UNSUPPORTED


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}
