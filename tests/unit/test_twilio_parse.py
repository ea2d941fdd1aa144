"""Twilio webhooks: inbound parsing, status mapping and signatures, table-driven over tests/testdata/twilio.

Each testdata file is one form body, url-encoded as Twilio posts it; `_load` parses it with the same
function aiohttp's `request.post()` uses, so the tests see what the handler will see.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import pathlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import multidict
import pytest
import yarl
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from twilio import request_validator

from services.channels import base, twilio

DATA = pathlib.Path(__file__).parent.parent / "testdata" / "twilio"
TOKEN = "8f3b2c1d0e9a4b7c6d5e4f3a2b1c0d9e"
URL = "https://parley.example.com/webhooks/twilio/inbound"

OUR_SMS = "+14155550123"
OUR_WHATSAPP = "+14155238886"
SMS_USER = "+13125550199"
WHATSAPP_USER = "+5511987654321"


def _load(name: str) -> multidict.MultiDict[str]:
    # Files end without a newline, like Twilio's bodies; rstrip guards against an editor adding one
    # (aiohttp strips trailing whitespace from the body too).
    body = (DATA / f"{name}.txt").read_text(encoding="utf-8").rstrip("\r\n")
    return multidict.MultiDict(yarl.query_to_pairs(body, encoding="utf-8"))


def _sign(url: str, form: Any, token: str = TOKEN) -> str:
    return request_validator.RequestValidator(token).compute_signature(url, form)


def _without(form: multidict.MultiDict[str], *names: str) -> multidict.MultiDict[str]:
    return multidict.MultiDict((k, v) for k, v in form.items() if k not in names)


def _with(form: multidict.MultiDict[str], **values: str) -> multidict.MultiDict[str]:
    updated = multidict.MultiDict(form)
    for name, value in values.items():
        updated[name] = value
    return updated


def test_testdata_files_are_single_line_form_bodies() -> None:
    files = sorted(DATA.glob("*.txt"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert "\n" not in text.rstrip("\n") and " " not in text, path.name


# --- inbound: the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Inbound:
    file: str
    kind: base.ChannelKind
    type: base.MessageType
    body: str | None
    sender: base.Sender
    channel_address: str
    media_types: tuple[str | None, ...] = ()
    segments: int | None = 1
    details: dict[str, Any] = field(default_factory=dict)
    messaging_service: bool = False


SMS_SENDER = base.Sender(phone=SMS_USER)
ANA = base.Sender(phone=WHATSAPP_USER, wa_id="5511987654321", profile_name="Ana Souza")
WA = base.ChannelKind.TWILIO_WHATSAPP
SMS = base.ChannelKind.TWILIO_SMS
T = base.MessageType
REPLIED_TO_US = {"from": OUR_WHATSAPP}

INBOUND = [
    Inbound("inbound_sms_text", SMS, T.TEXT, "Hi, is my order shipping today?", SMS_SENDER, OUR_SMS),
    Inbound("inbound_sms_empty_values", SMS, T.TEXT, "Yes please", SMS_SENDER, OUR_SMS),
    Inbound(
        "inbound_sms_long_three_segments", SMS, T.TEXT,
        "Thanks for the reminder about Thursday. I can't make 9am because of the school run, could we move "
        "it to 11:30 or any time after lunch? Also, does the technician need me to empty the cupboard under "
        "the sink first, or will they handle that? Cheers, Sam",
        SMS_SENDER, OUR_SMS, segments=3,
    ),
    Inbound(
        "inbound_sms_messaging_service", SMS, T.TEXT, "START", SMS_SENDER, OUR_SMS, messaging_service=True
    ),
    Inbound(
        "inbound_mms_two_media", SMS, T.MEDIA, "Here are the photos of the damage", SMS_SENDER, OUR_SMS,
        media_types=("image/jpeg", "image/png"),
    ),
    Inbound(
        "inbound_whatsapp_text", WA, T.TEXT, "Olá! Quero remarcar a visita de amanhã 🙏", ANA, OUR_WHATSAPP
    ),
    Inbound(
        "inbound_whatsapp_image", WA, T.IMAGE, "Foto do medidor", ANA, OUR_WHATSAPP,
        media_types=("image/jpeg",),
    ),
    Inbound("inbound_whatsapp_voice_note", WA, T.AUDIO, None, ANA, OUR_WHATSAPP, media_types=("audio/ogg",)),
    Inbound(
        "inbound_whatsapp_document", WA, T.DOCUMENT, None, ANA, OUR_WHATSAPP, media_types=("application/pdf",)
    ),
    Inbound("inbound_whatsapp_contact", WA, T.CONTACTS, None, ANA, OUR_WHATSAPP, media_types=("text/vcard",)),
    Inbound(
        "inbound_whatsapp_location", WA, T.LOCATION, None, ANA, OUR_WHATSAPP,
        details={"location": {
            "latitude": -23.561414, "longitude": -46.655881, "name": "MASP",
            "address": "Av. Paulista, 1578 - Bela Vista, São Paulo - SP",
        }},
    ),
    Inbound(
        "inbound_whatsapp_quick_reply", WA, T.BUTTON, "Confirmar", ANA, OUR_WHATSAPP,
        details={
            "button": {"payload": "appointment:confirm:4821", "text": "Confirmar"},
            "context": {"message_id": "SM94d1546e5b7a1a9459bbf7e7837a8972", **REPLIED_TO_US},
        },
    ),
    Inbound(
        "inbound_whatsapp_list_reply", WA, T.INTERACTIVE, "Quinta, 14:00", ANA, OUR_WHATSAPP,
        details={
            "interactive": {"type": "list_reply", "id": "slot_2026-05-14T14:00", "title": "Quinta, 14:00"},
            "context": {"message_id": "SM4b10a88bda992f8b2fac82cada6eab65", **REPLIED_TO_US},
        },
    ),
    Inbound(
        "inbound_whatsapp_reply_context", WA, T.TEXT, "Pode ser às 15h?", ANA, OUR_WHATSAPP,
        details={"context": {"message_id": "SM04c9415a3c7f284b5301659f6f0627b5", **REPLIED_TO_US}},
    ),
    Inbound(
        "inbound_whatsapp_forwarded", WA, T.TEXT, "Olha essa promoção", ANA, OUR_WHATSAPP,
        details={"forwarded": True, "frequently_forwarded": True},
    ),
    Inbound(
        "inbound_whatsapp_ad_referral", WA, T.TEXT, "Quero saber mais sobre o plano anual", ANA, OUR_WHATSAPP,
        details={"referral": {
            "body": "Economize 20% no plano anual", "headline": "Plano anual",
            "source_id": "120210000000000001", "source_type": "ad", "source_url": "https://fb.me/2bX9aQpLm",
            "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0",
        }},
    ),
]


def test_every_inbound_testdata_file_is_in_the_table() -> None:
    assert {p.stem for p in DATA.glob("inbound_*.txt")} == {case.file for case in INBOUND}


@pytest.mark.parametrize("case", INBOUND, ids=lambda case: case.file)
def test_inbound_payload_parses_to_the_expected_message(case: Inbound) -> None:
    form = _load(case.file)

    message = twilio.parse_inbound(form)

    assert message.provider is base.Provider.TWILIO
    assert message.channel_kind is case.kind
    assert message.message_type is case.type
    assert message.body == case.body
    assert message.sender == case.sender
    assert message.channel_address == case.channel_address
    assert message.provider_message_id == form["MessageSid"]
    assert message.account_sid == form["AccountSid"]
    assert message.messaging_service_sid == (form["MessagingServiceSid"] if case.messaging_service else None)
    assert message.segments == case.segments
    assert tuple(m.content_type for m in message.media) == case.media_types
    assert [m.url for m in message.media] == [form[f"MediaUrl{i}"] for i in range(len(case.media_types))]
    assert all(m.url and m.url.startswith("https://api.twilio.com/") for m in message.media)
    assert message.details == case.details
    assert message.raw == dict(form.items())  # no repeated names in these files


def test_empty_valued_keys_are_kept_in_raw() -> None:
    message = twilio.parse_inbound(_load("inbound_sms_empty_values"))

    empty = ("ToCity", "FromZip", "FromState", "FromCity", "ToZip")
    assert {name: message.raw[name] for name in empty} == dict.fromkeys(empty, "")


def test_repeated_field_names_are_kept_in_raw_as_a_list() -> None:
    form = _load("inbound_sms_text")
    form.add("Tag", "b")
    form.add("Tag", "a")

    assert twilio.parse_inbound(form).raw["Tag"] == ["b", "a"]


def test_inbound_accepts_name_value_pairs_and_aiohttp_proxy() -> None:
    form = _load("inbound_whatsapp_text")

    from_pairs = twilio.parse_inbound(list(form.items()))
    from_proxy = twilio.parse_inbound(multidict.MultiDictProxy(form))

    assert from_pairs == from_proxy == twilio.parse_inbound(form)


def test_sms_sid_is_the_fallback_message_id() -> None:
    form = _without(_load("inbound_sms_text"), "MessageSid")

    assert twilio.parse_inbound(form).provider_message_id == form["SmsSid"]


def test_message_with_nothing_in_it_is_unsupported() -> None:
    form = _with(_load("inbound_whatsapp_text"), Body="")

    message = twilio.parse_inbound(form)

    assert (message.message_type, message.body) == (base.MessageType.UNSUPPORTED, None)


def test_single_attachment_of_unknown_type_is_a_document() -> None:
    form = _with(_load("inbound_whatsapp_image"), MediaContentType0="application/octet-stream")

    assert twilio.parse_inbound(form).message_type is base.MessageType.DOCUMENT


# --- inbound: failure paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        (("MessageSid", "SmsSid", "SmsMessageSid"), "MessageSid"),
        (("AccountSid",), "AccountSid"),
        (("From",), "From"),
        (("To",), "To"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_missing_required_inbound_field_is_named(missing: tuple[str, ...], named: str) -> None:
    form = _without(_load("inbound_sms_text"), *missing)

    with pytest.raises(base.PayloadError) as raised:
        twilio.parse_inbound(form)

    assert (raised.value.field, raised.value.problem) == (named, "is required")


def test_empty_required_field_counts_as_missing() -> None:
    with pytest.raises(base.PayloadError, match="AccountSid: is required"):
        twilio.parse_inbound(_with(_load("inbound_sms_text"), AccountSid=""))


@pytest.mark.parametrize("value", ["two", "-1", "1.5", " 1", "\u0663", "9" * 5000])
def test_num_media_that_is_not_a_count_is_rejected(value: str) -> None:
    with pytest.raises(base.PayloadError) as raised:
        twilio.parse_inbound(_with(_load("inbound_sms_text"), NumMedia=value))

    assert raised.value.field == "NumMedia"


def test_num_media_larger_than_the_attachments_names_the_missing_url() -> None:
    form = _with(_load("inbound_mms_two_media"), NumMedia="3")

    with pytest.raises(base.PayloadError) as raised:
        twilio.parse_inbound(form)

    assert raised.value.field == "MediaUrl2"


def test_huge_num_media_fails_fast_on_the_first_missing_url() -> None:
    with pytest.raises(base.PayloadError, match="MediaUrl0"):
        twilio.parse_inbound(_with(_load("inbound_sms_text"), NumMedia="2000000000"))


@pytest.mark.parametrize("value", ["2147483648", "999999999999", "9" * 5000])
@pytest.mark.parametrize("name", ["NumSegments", "NumMedia"])
def test_count_beyond_the_databases_integer_is_a_400_not_a_failed_write(name: str, value: str) -> None:
    with pytest.raises(base.PayloadError, match="at most 2147483647") as raised:
        twilio.parse_inbound(_with(_load("inbound_sms_text"), **{name: value}))

    assert raised.value.field == name


def test_count_with_leading_zeros_is_read_as_its_number() -> None:
    msg = twilio.parse_inbound(_with(_load("inbound_sms_text"), NumSegments="0000000000002147483647"))

    assert msg.segments == 2**31 - 1


def test_nul_characters_are_stored_as_replacement_characters_but_signed_as_received() -> None:
    pairs = [*_load("inbound_sms_text").items()]
    pairs = [(k, "a\x00b" if k == "Body" else v) for k, v in pairs] + [("Odd\x00Name", "x\x00")]
    form = twilio.fields(pairs)

    msg = twilio.parse_inbound(form)

    assert msg.body == "a\ufffdb"
    assert msg.raw["Body"] == "a\ufffdb" and msg.raw["Odd\ufffdName"] == "x\ufffd"
    assert form.getall("Body") == ["a\x00b"]  # the signature is checked over what Twilio sent


@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.txt")))
def test_form_fields_reads_every_testdata_body_as_aiohttp_does(name: str) -> None:
    body = (DATA / f"{name}.txt").read_text(encoding="utf-8").rstrip("\r\n")
    form = twilio.form_fields(body)

    assert list(form.items()) == list(multidict.MultiDict(yarl.query_to_pairs(body)).items())
    parse = twilio.parse_status if name.startswith("status_") else twilio.parse_inbound
    assert parse(form) == parse(_load(name))


def test_form_fields_keeps_repeats_and_blanks_and_takes_the_careful_path_for_an_escaped_nul() -> None:
    form = twilio.form_fields("Body=a%00b&Tag=x&ToCity=&Tag=y+z&Odd%00Name=1")

    assert form.getall("Tag") == ["x", "y z"] and form.getall("ToCity") == [""]
    assert form.getall("Body") == ["a\x00b"]  # signed as received
    assert form.by_name()["Body"] == ["a\ufffdb"] and "Odd\ufffdName" in form.by_name()  # stored safely
    plain = twilio.form_fields("Body=a+b&Tag=x&Tag=x")
    assert plain.by_name() is plain.signed and plain.getall("Tag") == ["x", "x"]


def test_a_message_without_rare_fields_reads_the_same_as_one_with_them_blank() -> None:
    # parse_inbound skips the structured-reply, reply-to, ad and forward readers when none of their
    # fields is present; present but blank must give the same message as absent.
    plain = _load("inbound_sms_text")
    blank = _with(plain, Latitude="", ListId="", ButtonText="", OriginalRepliedMessageSid="",
                  ReferralBody="", Forwarded="")
    a, b = twilio.parse_inbound(plain), twilio.parse_inbound(blank)
    assert (a.message_type, a.details, a.body) == (b.message_type, b.details, b.body)


@pytest.mark.parametrize("value", ["three", "-3", "3.0"])
def test_num_segments_that_is_not_a_count_is_rejected(value: str) -> None:
    with pytest.raises(base.PayloadError) as raised:
        twilio.parse_inbound(_with(_load("inbound_sms_text"), NumSegments=value))

    assert raised.value.field == "NumSegments"


@pytest.mark.parametrize("field_name", ["From", "To"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("not-a-number", "is not a"),
        ("+1", "is not a"),
        ("+1415555012345678", "is not a"),
        ("messenger:1234567890", "has an unsupported channel prefix"),
    ],
)
def test_address_that_is_not_a_phone_number_is_rejected(field_name: str, value: str, problem: str) -> None:
    with pytest.raises(base.PayloadError) as raised:
        twilio.parse_inbound(_with(_load("inbound_sms_text"), **{field_name: value}))

    assert raised.value.field == field_name and raised.value.problem.startswith(problem)


def test_whatsapp_sender_writing_to_an_sms_number_is_rejected() -> None:
    form = _with(_load("inbound_whatsapp_text"), To=OUR_WHATSAPP)

    with pytest.raises(base.PayloadError, match="To: is not on the same channel as From"):
        twilio.parse_inbound(form)


def test_message_sid_that_is_not_a_sid_is_rejected() -> None:
    with pytest.raises(base.PayloadError, match="MessageSid: is not a Twilio SID"):
        twilio.parse_inbound(_with(_load("inbound_sms_text"), MessageSid="SM 123; DROP"))


@pytest.mark.parametrize(
    ("values", "field_name"),
    [
        ({"Latitude": "-23.5"}, "Longitude"),
        ({"Longitude": "-46.6"}, "Latitude"),
        ({"Latitude": "north", "Longitude": "-46.6"}, "Latitude"),
        ({"Latitude": "nan", "Longitude": "-46.6"}, "Latitude"),
        ({"Latitude": "-23.5", "Longitude": "181"}, "Longitude"),
    ],
)
def test_broken_location_names_the_coordinate(values: dict[str, str], field_name: str) -> None:
    form = _without(_load("inbound_whatsapp_location"), "Latitude", "Longitude")

    with pytest.raises(base.PayloadError) as raised:
        twilio.parse_inbound(_with(form, **values))

    assert raised.value.field == field_name


def test_field_repeated_with_different_values_is_rejected() -> None:
    form = _load("inbound_sms_text")
    form.add("From", "+12025550143")

    with pytest.raises(base.PayloadError, match="From: is repeated with different values"):
        twilio.parse_inbound(form)


def test_form_field_that_is_not_text_is_rejected() -> None:
    form: multidict.MultiDict[object] = multidict.MultiDict(_load("inbound_sms_text"))
    form.add("Upload", b"\x89PNG")

    with pytest.raises(base.PayloadError, match="Upload: must be text"):
        twilio.parse_inbound(form)


# --- status callbacks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    file: str
    status: base.MessageStatus | None
    recipient: str | None = SMS_USER
    channel_address: str | None = OUR_SMS
    error_code: str | None = None
    error_message: str | None = None


S = base.MessageStatus
STATUSES = [
    Status("status_sms_queued", S.QUEUED),
    Status("status_sms_sent", S.SENT),
    Status("status_sms_delivered", S.DELIVERED),
    Status("status_sms_undelivered_30006", S.UNDELIVERED, error_code="30006"),
    Status("status_sms_failed_30008", S.FAILED, error_code="30008", error_message="Unknown error"),
    Status("status_sms_canceled", S.CANCELED),
    Status("status_whatsapp_read", S.READ, recipient=WHATSAPP_USER, channel_address=OUR_WHATSAPP),
    Status(
        "status_whatsapp_failed_63016", S.FAILED, recipient=WHATSAPP_USER, channel_address=OUR_WHATSAPP,
        error_code="63016",
    ),
    Status("status_inbound_received", None),
]


def test_every_status_testdata_file_is_in_the_table() -> None:
    assert {p.stem for p in DATA.glob("status_*.txt")} == {case.file for case in STATUSES}


@pytest.mark.parametrize("case", STATUSES, ids=lambda case: case.file)
def test_status_callback_parses_to_the_expected_update(case: Status) -> None:
    form = _load(case.file)

    update = twilio.parse_status(form)

    if case.status is None:
        assert update is None
        return
    assert update == base.StatusUpdate(
        provider=base.Provider.TWILIO,
        provider_message_id=form["MessageSid"],
        status=case.status,
        raw=dict(form.items()),
        error_code=case.error_code,
        error_message=case.error_message,
        channel_address=case.channel_address,
        recipient=case.recipient,
    )


def test_status_map_covers_every_twilio_outbound_status() -> None:
    # Twilio's message_enum_status, minus the inbound-only values.
    outbound = {
        "queued", "sending", "sent", "failed", "delivered", "undelivered", "accepted", "scheduled", "read",
        "partially_delivered", "canceled",
    }

    assert set(twilio.STATUS_MAP) == outbound
    assert twilio.STATUS_MAP["partially_delivered"] is base.MessageStatus.DELIVERED
    assert {s.value for s in twilio.STATUS_MAP.values()} <= {s.value for s in base.STATUS_RANK}


@pytest.mark.parametrize("value", ["receiving", "received", "bogus_future_status"])
def test_inbound_only_or_unknown_status_is_ignored(value: str) -> None:
    form = _with(_load("status_sms_sent"), MessageStatus=value, SmsStatus=value)

    assert twilio.parse_status(form) is None


def test_status_falls_back_to_sms_sid_and_sms_status() -> None:
    form = _without(_load("status_sms_delivered"), "MessageSid", "MessageStatus")

    update = twilio.parse_status(form)

    assert update is not None
    assert (update.provider_message_id, update.status) == (form["SmsSid"], base.MessageStatus.DELIVERED)


@pytest.mark.parametrize(
    ("missing", "named"),
    [(("MessageSid", "SmsSid"), "MessageSid"), (("MessageStatus", "SmsStatus"), "MessageStatus")],
    ids=["MessageSid", "MessageStatus"],
)
def test_missing_required_status_field_is_named(missing: tuple[str, ...], named: str) -> None:
    with pytest.raises(base.PayloadError) as raised:
        twilio.parse_status(_without(_load("status_sms_sent"), *missing))

    assert (raised.value.field, raised.value.problem) == (named, "is required")


def test_minimal_status_callback_has_no_addresses() -> None:
    form = [("MessageSid", "SMdef456"), ("MessageStatus", "undelivered"), ("ErrorCode", "30006")]

    update = twilio.parse_status(form)

    assert update is not None
    assert (update.status, update.error_code, update.recipient, update.channel_address) == (
        base.MessageStatus.UNDELIVERED, "30006", None, None,
    )


def test_alphanumeric_sender_id_is_the_channel_address() -> None:
    update = twilio.parse_status(_with(_load("status_sms_sent"), From="ParleyCo"))

    assert update is not None and update.channel_address == "ParleyCo"


def test_empty_twiml_is_an_empty_response_document() -> None:
    assert twilio.EMPTY_TWIML == '<?xml version="1.0" encoding="UTF-8"?><Response />'


# --- signatures ------------------------------------------------------------------------------------


def test_request_signed_by_twilio_verifies() -> None:
    form = _load("inbound_sms_text")

    assert twilio.verify_signature(TOKEN, URL, form, _sign(URL, form))


def test_signature_made_with_another_token_fails() -> None:
    form = _load("inbound_sms_text")

    assert not twilio.verify_signature(TOKEN, URL, form, _sign(URL, form, token="0" * 32))


def test_tampered_parameter_fails() -> None:
    form = _load("inbound_sms_text")
    signature = _sign(URL, form)

    assert not twilio.verify_signature(TOKEN, URL, _with(form, Body="Send me a refund"), signature)


def test_parameter_added_after_signing_fails() -> None:
    form = _load("inbound_sms_text")
    signature = _sign(URL, form)
    form.add("Injected", "1")

    assert not twilio.verify_signature(TOKEN, URL, form, signature)


@pytest.mark.parametrize("header", [None, ""])
def test_missing_signature_header_fails(header: str | None) -> None:
    assert not twilio.verify_signature(TOKEN, URL, _load("inbound_sms_text"), header)


def test_empty_auth_token_never_verifies() -> None:
    form = _load("inbound_sms_text")

    assert not twilio.verify_signature("", URL, form, _sign(URL, form, token=""))


@pytest.mark.parametrize(
    ("signed_url", "received_url"),
    [
        ("https://parley.example.com:443/webhooks/twilio/inbound", URL),
        (URL, "https://parley.example.com:443/webhooks/twilio/inbound"),
        ("http://parley.example.com:80/webhooks/twilio/inbound", "http://parley.example.com/webhooks/twilio/inbound"),
        ("http://parley.example.com/webhooks/twilio/inbound", "http://parley.example.com:80/webhooks/twilio/inbound"),
    ],
    ids=["signed-443-received-bare", "signed-bare-received-443", "signed-80-received-bare",
         "signed-bare-received-80"],
)
def test_default_port_in_the_url_does_not_matter(signed_url: str, received_url: str) -> None:
    form = _load("inbound_sms_text")

    assert twilio.verify_signature(TOKEN, received_url, form, _sign(signed_url, form))


def test_url_query_string_is_part_of_the_signature() -> None:
    form = _load("status_sms_delivered")
    url = "https://parley.example.com/webhooks/twilio/status?tenant=acme&attempt=2"
    signature = _sign(url, form)

    assert twilio.verify_signature(TOKEN, url, form, signature)
    assert not twilio.verify_signature(TOKEN, url.split("?", 1)[0], form, signature)
    assert not twilio.verify_signature(TOKEN, url.replace("acme", "evil"), form, signature)


def _documented_signature(token: str, url: str, pairs: list[tuple[str, str]]) -> str:
    """Twilio's algorithm written out independently of the SDK.

    The URL, then name + value for every parameter, names sorted; a repeated name contributes each
    of its distinct values, sorted (the rule the SDKs adopted: twilio-python#617, twilio-node#723).
    """
    values: defaultdict[str, set[str]] = defaultdict(set)
    for name, value in pairs:
        values[name].add(value)
    data = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


REPEATED = [
    ("AccountSid", "ACa9125e94e4a3bf3736a231e5e29b0e01"),
    ("MessagingBinding.Address", "+18550000000"),
    ("MessagingBinding.Address", "+18330000000"),
    ("Body", "hello"),
    ("MessagingBinding.Address", "+18550000000"),
]


def test_repeated_parameter_names_verify_when_passed_as_a_multidict_or_pairs() -> None:
    signature = _documented_signature(TOKEN, URL, REPEATED)
    form = multidict.MultiDict(REPEATED)

    assert _sign(URL, form) == signature  # the SDK implements the documented rule
    assert twilio.verify_signature(TOKEN, URL, form, signature)
    assert twilio.verify_signature(TOKEN, URL, multidict.MultiDictProxy(form), signature)
    assert twilio.verify_signature(TOKEN, URL, REPEATED, signature)


def test_repeated_parameter_names_fail_if_collapsed_into_a_dict() -> None:
    # Why the form must stay a multimap: a dict keeps one value per name.
    signature = _documented_signature(TOKEN, URL, REPEATED)

    assert not twilio.verify_signature(TOKEN, URL, dict(REPEATED), signature)


def test_empty_valued_keys_are_signed_and_must_be_kept() -> None:
    form = _load("inbound_sms_empty_values")
    signature = _sign(URL, form)

    assert twilio.verify_signature(TOKEN, URL, form, signature)
    assert not twilio.verify_signature(TOKEN, URL, _without(form, "ToCity"), signature)


def test_messaging_service_inbound_verifies() -> None:
    form = _load("inbound_sms_messaging_service")
    url = "https://parley.example.com/webhooks/twilio/inbound?service=MG"

    assert twilio.verify_signature(TOKEN, url, form, _sign(url, form))


@pytest.mark.parametrize("url", ["https://parley.example.com:notaport/x", "https://[::1/x", ""])
def test_unparsable_url_fails_without_raising(url: str) -> None:
    form = _load("inbound_sms_text")

    assert not twilio.verify_signature(TOKEN, url, form, _sign(URL, form))


def test_form_with_a_non_text_value_fails_without_raising() -> None:
    form: multidict.MultiDict[object] = multidict.MultiDict(_load("inbound_sms_text"))
    form.add("Upload", b"\x89PNG")

    assert not twilio.verify_signature(TOKEN, URL, form, "c2lnbmF0dXJl")


async def test_form_as_parsed_by_aiohttp_verifies(aiohttp_client: Any) -> None:
    body = (DATA / "inbound_sms_empty_values.txt").read_bytes() + b"&Tag=b&Tag=a"
    signature = _sign(URL, multidict.MultiDict(yarl.query_to_pairs(body.decode(), encoding="utf-8")))
    results: list[bool] = []

    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        # The handler signs against the public URL from configuration, not request.url.
        signature = request.headers.get(twilio.SIGNATURE_HEADER)
        results.append(twilio.verify_signature(TOKEN, URL, form, signature))
        return web.Response(text=twilio.EMPTY_TWIML, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/webhooks/twilio/inbound", handler)
    client = await aiohttp_client(app)
    headers = {"Content-Type": "application/x-www-form-urlencoded", twilio.SIGNATURE_HEADER: signature}

    response = await client.post("/webhooks/twilio/inbound", data=body, headers=headers)

    assert response.status == 200
    assert results == [True]


# --- anything a client can post only ever yields PayloadError ---------------------------------------

KNOWN_NAMES = [
    "MessageSid", "SmsSid", "AccountSid", "MessagingServiceSid", "From", "To", "Body", "NumMedia",
    "NumSegments", "MediaUrl0", "MediaContentType0", "MediaUrl1", "MediaContentType1", "Latitude",
    "Longitude", "Address", "Label", "ButtonPayload", "ButtonText", "ListId", "ListTitle", "OriginalRepliedMessageSid",
    "OriginalRepliedMessageSender", "WaId", "ProfileName", "Forwarded", "MessageStatus", "SmsStatus",
    "ErrorCode", "ErrorMessage", "ReferralSourceUrl",
]
PLAUSIBLE_VALUES = [
    "", "+14155550123", "whatsapp:+5511987654321", "whatsapp:", "rcs:+14155550123", "+1", "SMa9125e94",
    "AC00000000000000000000000000000001", "0", "1", "2", "-1", "99999999999999999999", "1e400", "nan", "-91",
    "12.5", "true", "delivered", "received", "read", "image/jpeg", "text/vcard", "https://api.twilio.com/x",
]
names = st.one_of(st.sampled_from(KNOWN_NAMES), st.text(max_size=20))
values = st.one_of(st.sampled_from(PLAUSIBLE_VALUES), st.text(max_size=40))
pairs = st.lists(st.tuples(names, values), max_size=25)


@given(pairs)
def test_arbitrary_forms_only_ever_raise_payload_error(form: list[tuple[str, str]]) -> None:
    for parse in (twilio.parse_inbound, twilio.parse_status):
        try:
            parse(form)
        except base.PayloadError:
            pass


@given(pairs)
def test_arbitrary_additions_to_a_valid_form_only_ever_raise_payload_error(extra: list[tuple[str, str]]) -> None:
    valid = (("inbound_whatsapp_location", twilio.parse_inbound), ("status_sms_sent", twilio.parse_status))
    for name, parse in valid:
        form = [*_load(name).items(), *extra]
        try:
            parse(form)
        except base.PayloadError:
            pass


@given(pairs)
def test_arbitrary_values_in_a_valid_form_only_ever_raise_payload_error(changes: list[tuple[str, str]]) -> None:
    # Replacing rather than adding, so values reach the deep parsing instead of the repeated-name check.
    for name, parse in (("inbound_mms_two_media", twilio.parse_inbound), ("status_sms_sent", twilio.parse_status)):
        form = dict(_load(name).items())
        form.update(changes)
        try:
            parse(form)
        except base.PayloadError:
            pass


@given(st.text(max_size=60), pairs, st.one_of(st.none(), st.text(max_size=40)))
def test_verify_signature_never_raises(url: str, form: list[tuple[str, str]], signature: str | None) -> None:
    assert twilio.verify_signature(TOKEN, url, form, signature) in (True, False)
