"""Meta WhatsApp Cloud API inbound webhooks: parsing, signature and handshake.

Payload files live in tests/testdata/whatsapp_cloud/, shaped as Meta documents them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.channels import base, whatsapp_cloud

TESTDATA = Path(__file__).resolve().parent.parent / "testdata" / "whatsapp_cloud"
PHONE_NUMBER_ID = "209876543210987"
WABA_ID = "310987654321098"
SENT_AT = datetime.fromtimestamp(1776329412, tz=UTC)
BSUID = "GB.28461937502846193750"
PARENT_BSUID = "GB.ENT.90817263545463728190"
OUR_MESSAGE = "wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgSQkFDS0VORDEwMAA="

AMARA = base.Sender(phone="+447700900123", wa_id="447700900123", profile_name="Amara Okafor")


def _wamid(tag: str) -> str:
    return f"wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgU{tag}AA=="


def _ours(n: str) -> str:
    return f"wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgSQkFDS0VORD{n}A="


def _body(name: str) -> bytes:
    return (TESTDATA / f"{name}.json").read_bytes()


def _doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_body(name))
    return doc


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def _only_message(name: str) -> base.InboundMessage:
    batch = whatsapp_cloud.parse_webhook(_body(name))
    assert len(batch.messages) == 1 and not batch.statuses and batch.ignored == 0
    return batch.messages[0]


# --- inbound messages: one table ---------------------------------------------------------------


@dataclass(frozen=True)
class MessageCase:
    file: str
    message_type: base.MessageType
    body: str | None
    message_id: str
    sender: base.Sender = AMARA
    media: tuple[base.Media, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


def _reply_to(n: str) -> dict[str, str]:
    return {"from": "15550109876", "id": _ours(n)}


MESSAGE_CASES = [
    MessageCase("text", base.MessageType.TEXT, "Is the 7pm table still free tonight?", _wamid("VFhUMDAx")),
    MessageCase(
        "text_bsuid",
        base.MessageType.TEXT,
        "Can I move my booking to Friday?",
        _wamid("VFhUMDAy"),
        sender=dataclasses.replace(AMARA, wa_user_id=BSUID, wa_parent_user_id=PARENT_BSUID, username="@amara.o"),
    ),
    MessageCase(
        "username_only",
        base.MessageType.TEXT,
        "hi, saw your ad - do you deliver?",
        _wamid("VVNSMDAx"),
        sender=base.Sender(wa_user_id="US.71829304615273849102", username="@lakeside.lena", profile_name="Lena"),
    ),
    MessageCase(
        "reply_context",
        base.MessageType.TEXT,
        "Yes, that one please",
        _wamid("UlBMMDAx"),
        details={"context": _reply_to("AwMQ")},
    ),
    MessageCase(
        "image",
        base.MessageType.IMAGE,
        "This is the stain on the sofa",
        _wamid("SU1HMDAx"),
        media=(
            base.Media(
                content_type="image/jpeg",
                media_id="1184402913725508",
                sha256="yE3xq1dV6jF5r0m8Zc2pQhN9uT4sW7kB1aL0oG6iR3M=",
                caption="This is the stain on the sofa",
            ),
        ),
    ),
    MessageCase(
        "audio_voice",
        base.MessageType.AUDIO,
        None,
        _wamid("QVVEMDAx"),
        media=(
            base.Media(
                content_type="audio/ogg; codecs=opus",
                media_id="2267081554390132",
                sha256="Jt0bX2mQ8rV4nY6wC1eH5kS9pL3fD7gA0uZ2iO4vB8E=",
            ),
        ),
        details={"voice": True},
    ),
    MessageCase(
        "video",
        base.MessageType.VIDEO,
        "the noise the boiler makes",
        _wamid("VklEMDAx"),
        media=(
            base.Media(
                content_type="video/mp4",
                media_id="903318276645120",
                sha256="c9Rk2wP0sL5mT8yB3xN6vQ1hJ4gF7dA2eU0iZ5oK9r8=",
                caption="the noise the boiler makes",
            ),
        ),
    ),
    MessageCase(
        "document",
        base.MessageType.DOCUMENT,
        "Signed lease",
        _wamid("RE9DMDAx"),
        media=(
            base.Media(
                content_type="application/pdf",
                media_id="1541870026318844",
                sha256="Ze5qM1tV8nR3wK6yH0bP4sL7jC2fX9gD1aU5iO3vB6E=",
                filename="lease-2026-04.pdf",
                caption="Signed lease",
            ),
        ),
    ),
    MessageCase(
        "sticker",
        base.MessageType.STICKER,
        None,
        _wamid("U1RLMDAx"),
        media=(
            base.Media(
                content_type="image/webp",
                media_id="774503118869271",
                sha256="Pq4wE7rT0yU3iO6pA9sD2fG5hJ8kL1zX4cV7bN0mQ2w=",
            ),
        ),
        details={"animated": True},
    ),
    MessageCase(
        "location_current",
        base.MessageType.LOCATION,
        None,
        _wamid("TE9DMDAx"),
        details={
            "location": {"latitude": 51.5033635, "longitude": -0.1276248},
            "context": {"forwarded": True},
        },
    ),
    MessageCase(
        "location_place",
        base.MessageType.LOCATION,
        None,
        _wamid("TE9DMDAy"),
        details={
            "location": {
                "latitude": 51.5054564,
                "longitude": -0.0910921,
                "name": "Borough Market",
                "address": "Borough Market, 8 Southwark St, London SE1 1TL",
                "url": "https://boroughmarket.org.uk",
            }
        },
    ),
    MessageCase(
        "reaction",
        base.MessageType.REACTION,
        None,
        _wamid("UkNUMDAx"),
        details={"reaction": {"message_id": _ours("AwMg"), "emoji": "👍", "removed": False}},
    ),
    MessageCase(
        "unreaction_empty",
        base.MessageType.REACTION,
        None,
        _wamid("UkNUMDAy"),
        details={"reaction": {"message_id": _ours("AwMg"), "emoji": None, "removed": True}},
    ),
    MessageCase(
        "unreaction_absent",
        base.MessageType.REACTION,
        None,
        _wamid("UkNUMDAz"),
        details={"reaction": {"message_id": _ours("AwMg"), "emoji": None, "removed": True}},
    ),
    MessageCase(
        "interactive_button_reply",
        base.MessageType.INTERACTIVE,
        "Confirm",
        _wamid("SU5UMDAx"),
        details={
            "interactive": {"type": "button_reply", "id": "confirm-booking", "title": "Confirm"},
            "context": _reply_to("AwMw"),
        },
    ),
    MessageCase(
        "interactive_list_reply",
        base.MessageType.INTERACTIVE,
        "Friday 19:30",
        _wamid("SU5UMDAy"),
        details={
            "interactive": {
                "type": "list_reply",
                "id": "slot-fri-1930",
                "title": "Friday 19:30",
                "description": "Window table, 2 people",
            },
            "context": _reply_to("AwNA"),
        },
    ),
    MessageCase(
        "button_quick_reply",
        base.MessageType.BUTTON,
        "Stop promotions",
        _wamid("QlROMDAx"),
        details={
            "button": {"text": "Stop promotions", "payload": "STOP_PROMOTIONS"},
            "context": _reply_to("AwNQ"),
        },
    ),
    MessageCase(
        "contacts",
        base.MessageType.CONTACTS,
        None,
        _wamid("Q05UMDAx"),
        details={"contacts": _doc("contacts")["entry"][0]["changes"][0]["value"]["messages"][0]["contacts"]},
    ),
    MessageCase(
        "unsupported",
        base.MessageType.UNSUPPORTED,
        None,
        _wamid("VU5TMDAx"),
        details={
            "original_type": "unsupported",
            "errors": [
                {
                    "code": 131051,
                    "title": "Message type unknown",
                    "message": "Message type unknown",
                    "error_data": {"details": "Message type is currently not supported."},
                }
            ],
            "unsupported": {"type": "poll_creation"},
        },
    ),
    MessageCase(
        "interactive_with_value_errors",
        base.MessageType.UNSUPPORTED,
        None,
        _wamid("SU5UMDAz"),
        details={
            "original_type": "interactive",
            "errors": [
                {
                    "code": 131000,
                    "title": "Something went wrong",
                    "message": "Something went wrong",
                    "error_data": {"details": "Unsupported webhook payload"},
                }
            ],
            "context": _reply_to("AwNg"),
        },
    ),
    MessageCase(
        "system_user_changed_number",
        base.MessageType.UNSUPPORTED,
        None,
        _wamid("U1lTMDAx"),
        # System messages carry no contacts array: the sender is known by `from` alone.
        sender=base.Sender(phone="+447700900123", wa_id="447700900123"),
        details={
            "original_type": "system",
            "system": {
                "body": "User Amara Okafor changed from 447700900123 to 447700900987",
                "wa_id": "447700900987",
                "type": "user_changed_number",
            },
        },
    ),
]


@pytest.mark.parametrize("case", MESSAGE_CASES, ids=lambda c: c.file)
def test_inbound_message_payload_parses_to_expected_message(case: MessageCase) -> None:
    message = _only_message(case.file)

    assert message.provider is base.Provider.META
    assert message.channel_kind is base.ChannelKind.WHATSAPP_CLOUD
    assert message.channel_address == PHONE_NUMBER_ID
    assert message.provider_message_id == case.message_id
    assert message.message_type is case.message_type
    assert message.body == case.body
    assert message.sender == case.sender
    assert message.sender.identified
    assert message.media == case.media
    assert message.details == case.details
    assert message.sent_at == SENT_AT


@pytest.mark.parametrize("case", MESSAGE_CASES, ids=lambda c: c.file)
def test_inbound_message_raw_keeps_message_contact_metadata_and_entry_as_received(case: MessageCase) -> None:
    value = _doc(case.file)["entry"][0]["changes"][0]["value"]
    message = _only_message(case.file)

    assert message.raw["message"] == value["messages"][0]
    assert message.raw["contact"] == (value["contacts"][0] if "contacts" in value else None)
    assert message.raw["metadata"] == value["metadata"]
    assert message.raw["entry_id"] == WABA_ID
    json.dumps(message.raw, allow_nan=False)
    json.dumps(message.details, allow_nan=False)


def test_table_covers_every_inbound_testdata_file() -> None:
    not_single_messages = {"batch", "field_not_messages", "object_not_waba"}
    files = {p.stem for p in TESTDATA.glob("*.json")}
    inbound = {f for f in files if not f.startswith("status_")} - not_single_messages
    assert inbound == {c.file for c in MESSAGE_CASES}


def test_value_level_errors_are_kept_in_raw() -> None:
    message = _only_message("interactive_with_value_errors")
    assert message.raw["errors"][0]["code"] == 131000


# --- sender identity and contact matching ------------------------------------------------------


def _text_doc() -> dict[str, Any]:
    return _doc("text")


def _value(doc: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = doc["entry"][0]["changes"][0]["value"]
    return value


def test_sender_with_only_from_user_id_and_no_contacts_is_identified_by_bsuid() -> None:
    doc = _text_doc()
    value = _value(doc)
    del value["contacts"]
    message = value["messages"][0]
    del message["from"]
    message["from_user_id"] = BSUID

    (parsed,) = whatsapp_cloud.parse_webhook(_encode(doc)).messages

    assert parsed.sender == base.Sender(wa_user_id=BSUID)


def test_sender_with_username_only_in_contact_is_identified() -> None:
    doc = _text_doc()
    value = _value(doc)
    value["contacts"] = [{"profile": {"username": "@only.handle"}}]
    del value["messages"][0]["from"]

    (parsed,) = whatsapp_cloud.parse_webhook(_encode(doc)).messages

    assert parsed.sender == base.Sender(username="@only.handle")


def test_message_without_phone_bsuid_or_username_names_its_from_field() -> None:
    doc = _text_doc()
    value = _value(doc)
    value["contacts"] = [{"profile": {"name": "Nobody"}}]
    del value["messages"][0]["from"]

    with pytest.raises(base.PayloadError) as exc:
        whatsapp_cloud.parse_webhook(_encode(doc))

    assert exc.value.field == "entry[0].changes[0].value.messages[0].from"


def test_contact_is_matched_by_wa_id_among_several() -> None:
    batch = whatsapp_cloud.parse_webhook(_body("batch"))
    diego = batch.messages[1]
    assert diego.sender == base.Sender(phone="+34612345678", wa_id="34612345678", profile_name="Diego Ramírez")
    assert diego.raw["contact"] == {"profile": {"name": "Diego Ramírez"}, "wa_id": "34612345678"}


def test_contact_is_matched_by_user_id_when_from_is_missing() -> None:
    doc = _text_doc()
    value = _value(doc)
    value["contacts"] = [
        {"profile": {"name": "Someone Else"}, "user_id": "GB.1"},
        {"profile": {"name": "Amara Okafor", "username": "@amara.o"}, "user_id": BSUID},
    ]
    del value["messages"][0]["from"]
    value["messages"][0]["from_user_id"] = BSUID

    (parsed,) = whatsapp_cloud.parse_webhook(_encode(doc)).messages

    assert parsed.sender == base.Sender(wa_user_id=BSUID, username="@amara.o", profile_name="Amara Okafor")


def test_lone_contact_with_a_different_wa_id_is_not_taken_as_the_sender() -> None:
    doc = _text_doc()
    _value(doc)["contacts"][0]["wa_id"] = "447700900999"

    (parsed,) = whatsapp_cloud.parse_webhook(_encode(doc)).messages

    assert parsed.sender == base.Sender(phone="+447700900123", wa_id="447700900123")
    assert parsed.raw["contact"] is None


def test_lone_contact_without_identifiers_is_taken_as_the_sender() -> None:
    doc = _text_doc()
    _value(doc)["contacts"] = [{"profile": {"name": "Amara"}}]

    (parsed,) = whatsapp_cloud.parse_webhook(_encode(doc)).messages

    assert parsed.sender.profile_name == "Amara"


def test_from_that_is_not_a_phone_number_falls_back_to_bsuid() -> None:
    doc = _text_doc()
    message = _value(doc)["messages"][0]
    message["from"] = "not-a-number"
    message["from_user_id"] = BSUID
    _value(doc)["contacts"] = []

    (parsed,) = whatsapp_cloud.parse_webhook(_encode(doc)).messages

    assert parsed.sender.phone is None
    assert parsed.sender.wa_user_id == BSUID


# --- batches and irrelevant items --------------------------------------------------------------


def test_batch_returns_every_message_and_status_across_entries_and_changes() -> None:
    batch = whatsapp_cloud.parse_webhook(_body("batch"))

    assert [m.body for m in batch.messages] == ["first", "hola", None, "second number"]
    assert [m.message_type for m in batch.messages] == [
        base.MessageType.TEXT,
        base.MessageType.TEXT,
        base.MessageType.REACTION,
        base.MessageType.TEXT,
    ]
    assert [m.channel_address for m in batch.messages] == [PHONE_NUMBER_ID] * 3 + ["209876543210999"]
    assert [m.raw["entry_id"] for m in batch.messages] == [WABA_ID] * 3 + ["310987654321099"]
    assert batch.messages[2].details["reaction"]["message_id"] == _wamid("QkFUMDAx")
    assert [(s.status, s.channel_address) for s in batch.statuses] == [
        (base.MessageStatus.DELIVERED, PHONE_NUMBER_ID),
        (base.MessageStatus.READ, "209876543210999"),
    ]
    # The "deleted" status and the phone_number_quality_update change.
    assert batch.ignored == 2
    assert batch.phone_number_ids == frozenset({PHONE_NUMBER_ID, "209876543210999"})


def test_change_of_another_field_is_ignored_not_an_error() -> None:
    batch = whatsapp_cloud.parse_webhook(_body("field_not_messages"))
    assert batch == whatsapp_cloud.WebhookBatch(ignored=1)


def test_other_object_is_ignored_without_looking_at_its_entries() -> None:
    batch = whatsapp_cloud.parse_webhook(_body("object_not_waba"))
    assert batch == whatsapp_cloud.WebhookBatch(ignored=1)


def test_messages_change_with_neither_messages_nor_statuses_is_ignored() -> None:
    doc = _text_doc()
    value = _value(doc)
    del value["messages"], value["contacts"]

    batch = whatsapp_cloud.parse_webhook(_encode(doc))

    assert batch == whatsapp_cloud.WebhookBatch(ignored=1, phone_number_ids=frozenset({PHONE_NUMBER_ID}))


def test_empty_entry_list_is_an_empty_batch() -> None:
    batch = whatsapp_cloud.parse_webhook(b'{"object": "whatsapp_business_account", "entry": []}')
    assert batch == whatsapp_cloud.WebhookBatch()


def test_unknown_extra_fields_at_every_level_are_tolerated() -> None:
    for name in [c.file for c in MESSAGE_CASES] + ["batch", "status_failed"]:
        doc = _doc(name)
        for node in list(_objects(doc)):
            node["added_by_meta_in_2027"] = {"nested": [1, 2, 3]}

        expected = whatsapp_cloud.parse_webhook(_body(name))
        got = whatsapp_cloud.parse_webhook(_encode(doc))

        assert _semantic(got) == _semantic(expected), name


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for child in list(node.values()):
            yield from _objects(child)
    elif isinstance(node, list):
        for child in node:
            yield from _objects(child)


def _semantic(batch: whatsapp_cloud.WebhookBatch) -> list[Any]:
    def strip(details: dict[str, Any]) -> dict[str, Any]:
        # Details that hand on provider objects verbatim carry the extra key too.
        return {k: v for k, v in details.items() if k not in ("contacts", "system", "unsupported", "errors")}

    return [
        [(m.provider_message_id, m.message_type, m.body, m.sender, m.media, strip(m.details)) for m in batch.messages],
        [(s.provider_message_id, s.status, s.error_code, s.recipient) for s in batch.statuses],
        batch.ignored,
        batch.phone_number_ids,
    ]


def test_webhook_batch_is_immutable() -> None:
    batch = whatsapp_cloud.WebhookBatch()
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.ignored = 3  # type: ignore[misc]


# --- statuses: one table -----------------------------------------------------------------------


@dataclass(frozen=True)
class StatusCase:
    file: str
    status: base.MessageStatus
    occurred_at: int
    recipient: str | None
    error_code: str | None = None
    error_message: str | None = None


STATUS_CASES = [
    StatusCase("status_sent", base.MessageStatus.SENT, 1776329500, "447700900123"),
    StatusCase("status_delivered", base.MessageStatus.DELIVERED, 1776329503, "447700900123"),
    StatusCase("status_read", base.MessageStatus.READ, 1776329610, "447700900123"),
    StatusCase("status_played", base.MessageStatus.PLAYED, 1776329702, "447700900123"),
    StatusCase(
        "status_failed",
        base.MessageStatus.FAILED,
        1776329505,
        "447700900123",
        error_code="131047",
        error_message="Re-engagement message",
    ),
    StatusCase("status_recipient_user_id_only", base.MessageStatus.DELIVERED, 1776329504, "US.71829304615273849102"),
]


@pytest.mark.parametrize("case", STATUS_CASES, ids=lambda c: c.file)
def test_status_payload_parses_to_expected_update(case: StatusCase) -> None:
    batch = whatsapp_cloud.parse_webhook(_body(case.file))

    assert not batch.messages and batch.ignored == 0
    (update,) = batch.statuses
    assert update.provider is base.Provider.META
    assert update.provider_message_id == OUR_MESSAGE
    assert update.status is case.status
    assert update.occurred_at == datetime.fromtimestamp(case.occurred_at, tz=UTC)
    assert update.recipient == case.recipient
    assert update.error_code == case.error_code
    assert update.error_message == case.error_message
    assert update.channel_address == PHONE_NUMBER_ID
    assert update.raw["status"] == _value(_doc(case.file))["statuses"][0]
    assert update.raw["entry_id"] == WABA_ID
    json.dumps(update.raw, allow_nan=False)
    assert batch.phone_number_ids == frozenset({PHONE_NUMBER_ID})


def test_unknown_status_is_ignored_not_an_error() -> None:
    batch = whatsapp_cloud.parse_webhook(_body("status_unknown"))
    assert batch == whatsapp_cloud.WebhookBatch(ignored=1, phone_number_ids=frozenset({PHONE_NUMBER_ID}))


def test_failed_status_error_message_falls_back_to_message_when_title_is_missing() -> None:
    doc = _doc("status_failed")
    del _value(doc)["statuses"][0]["errors"][0]["title"]

    (update,) = whatsapp_cloud.parse_webhook(_encode(doc)).statuses

    assert update.error_message == "Re-engagement message"


def test_failed_status_without_errors_has_no_error_code() -> None:
    doc = _doc("status_failed")
    del _value(doc)["statuses"][0]["errors"]

    (update,) = whatsapp_cloud.parse_webhook(_encode(doc)).statuses

    assert (update.status, update.error_code, update.error_message) == (base.MessageStatus.FAILED, None, None)


def test_status_without_any_recipient_still_parses() -> None:
    doc = _doc("status_read")
    status = _value(doc)["statuses"][0]
    del status["recipient_id"], status["recipient_user_id"]

    (update,) = whatsapp_cloud.parse_webhook(_encode(doc)).statuses

    assert update.recipient is None


def test_status_map_covers_meta_statuses_and_targets_known_statuses() -> None:
    assert set(whatsapp_cloud.STATUS_MAP) == {"sent", "delivered", "read", "failed", "played"}
    assert all(isinstance(v, base.MessageStatus) for v in whatsapp_cloud.STATUS_MAP.values())


# --- malformed bodies name the JSON path at fault ----------------------------------------------


Mutation = Callable[[dict[str, Any]], None]
V = "entry[0].changes[0].value"


def _msg0(doc: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = _value(doc)["messages"][0]
    return message


def _set(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        getter(doc)[key] = value

    return mutate


def _del(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        del getter(doc)[key]

    return mutate


def _root(doc: dict[str, Any]) -> dict[str, Any]:
    return doc


def _entry0(doc: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = doc["entry"][0]
    return entry


def _change0(doc: dict[str, Any]) -> dict[str, Any]:
    change: dict[str, Any] = doc["entry"][0]["changes"][0]
    return change


def _payload(doc: dict[str, Any]) -> dict[str, Any]:
    message = _msg0(doc)
    payload: dict[str, Any] = message[message["type"]]
    return payload


def _drop_sender(doc: dict[str, Any]) -> None:
    del _value(doc)["contacts"], _msg0(doc)["from"]


FAILURE_CASES: list[tuple[str, str, Mutation, str, str]] = [
    # (id, file, mutation, expected field, expected problem)
    ("object missing", "text", _del(_root, "object"), "object", "required field is missing"),
    ("object not a string", "text", _set(_root, "object", 5), "object", "must be a string"),
    ("entry missing", "text", _del(_root, "entry"), "entry", "required field is missing"),
    ("entry not a list", "text", _set(_root, "entry", {}), "entry", "must be a list"),
    ("entry id missing", "text", _del(_entry0, "id"), "entry[0].id", "required field is missing"),
    ("entry id a number", "text", _set(_entry0, "id", 310987654321098), "entry[0].id", "must be a string"),
    ("changes missing", "text", _del(_entry0, "changes"), "entry[0].changes", "required field is missing"),
    ("field missing", "text", _del(_change0, "field"), "entry[0].changes[0].field", "required field is missing"),
    ("value missing", "text", _del(_change0, "value"), V, "must be a JSON object"),
    ("value a string", "text", _set(_change0, "value", "x"), V, "must be a JSON object"),
    ("metadata missing", "text", _del(_value, "metadata"), f"{V}.metadata", "required field is missing"),
    (
        "phone_number_id missing",
        "text",
        _del(lambda d: _value(d)["metadata"], "phone_number_id"),
        f"{V}.metadata.phone_number_id",
        "required field is missing",
    ),
    ("messages not a list", "text", _set(_value, "messages", {}), f"{V}.messages", "must be a list"),
    ("contacts not a list", "text", _set(_value, "contacts", "x"), f"{V}.contacts", "must be a list"),
    (
        "contact wa_id a number",
        "text",
        _set(lambda d: _value(d)["contacts"][0], "wa_id", 447700900123),
        f"{V}.contacts[0].wa_id",
        "must be a string",
    ),
    ("message id missing", "text", _del(_msg0, "id"), f"{V}.messages[0].id", "required field is missing"),
    ("message id a number", "text", _set(_msg0, "id", 1), f"{V}.messages[0].id", "must be a string"),
    (
        "timestamp missing",
        "text",
        _del(_msg0, "timestamp"),
        f"{V}.messages[0].timestamp",
        "required field is missing",
    ),
    (
        "timestamp not digits",
        "text",
        _set(_msg0, "timestamp", "yesterday"),
        f"{V}.messages[0].timestamp",
        "must be a string of Unix seconds",
    ),
    (
        "timestamp out of range",
        "text",
        _set(_msg0, "timestamp", "99999999999999"),
        f"{V}.messages[0].timestamp",
        "is out of range",
    ),
    ("type missing", "text", _del(_msg0, "type"), f"{V}.messages[0].type", "required field is missing"),
    ("text body missing", "text", _set(_msg0, "text", {}), f"{V}.messages[0].text.body", "required field is missing"),
    ("text body a number", "text", _set(_payload, "body", 5), f"{V}.messages[0].text.body", "must be a string"),
    ("text not an object", "text", _set(_msg0, "text", "hi"), f"{V}.messages[0].text", "must be a JSON object"),
    ("no sender at all", "text", _drop_sender, f"{V}.messages[0].from", "no usable sender"),
    (
        "context not an object",
        "text",
        _set(_msg0, "context", "re"),
        f"{V}.messages[0].context",
        "must be a JSON object",
    ),
    ("media id missing", "image", _del(_payload, "id"), f"{V}.messages[0].image.id", "required field is missing"),
    (
        "document filename a list",
        "document",
        _set(_payload, "filename", ["a.pdf"]),
        f"{V}.messages[0].document.filename",
        "must be a string",
    ),
    (
        "latitude not a number",
        "location_place",
        _set(_payload, "latitude", "north"),
        f"{V}.messages[0].location.latitude",
        "must be a number",
    ),
    (
        "latitude a boolean",
        "location_current",
        _set(_payload, "latitude", True),
        f"{V}.messages[0].location.latitude",
        "must be a number",
    ),
    (
        "reaction target missing",
        "reaction",
        _del(_payload, "message_id"),
        f"{V}.messages[0].reaction.message_id",
        "required field is missing",
    ),
    (
        "button_reply title missing",
        "interactive_button_reply",
        _del(lambda d: _payload(d)["button_reply"], "title"),
        f"{V}.messages[0].interactive.button_reply.title",
        "required field is missing",
    ),
    (
        "interactive type missing",
        "interactive_list_reply",
        _del(_payload, "type"),
        f"{V}.messages[0].interactive.type",
        "required field is missing",
    ),
    (
        "quick-reply text missing",
        "button_quick_reply",
        _del(_payload, "text"),
        f"{V}.messages[0].button.text",
        "required field is missing",
    ),
    (
        "shared contacts not a list",
        "contacts",
        _set(_msg0, "contacts", {"name": {}}),
        f"{V}.messages[0].contacts",
        "must be a list",
    ),
    (
        "shared contact not an object",
        "contacts",
        _set(_msg0, "contacts", ["Tomas"]),
        f"{V}.messages[0].contacts[0]",
        "must be a JSON object",
    ),
    (
        "message errors not a list",
        "unsupported",
        _set(_msg0, "errors", "boom"),
        f"{V}.messages[0].errors",
        "must be a list",
    ),
    (
        "status id missing",
        "status_sent",
        _del(lambda d: _value(d)["statuses"][0], "id"),
        f"{V}.statuses[0].id",
        "required field is missing",
    ),
    (
        "status missing",
        "status_sent",
        _del(lambda d: _value(d)["statuses"][0], "status"),
        f"{V}.statuses[0].status",
        "required field is missing",
    ),
    (
        "status error code a boolean",
        "status_failed",
        _set(lambda d: _value(d)["statuses"][0]["errors"][0], "code", True),
        f"{V}.statuses[0].errors[0].code",
        "must be a string",
    ),
    # Deeper indices: the path names the exact entry, change and item.
    (
        "second entry message id missing",
        "batch",
        _del(lambda d: d["entry"][1]["changes"][0]["value"]["messages"][0], "id"),
        "entry[1].changes[0].value.messages[0].id",
        "required field is missing",
    ),
    (
        "third message reaction target missing",
        "batch",
        _del(lambda d: d["entry"][0]["changes"][0]["value"]["messages"][2]["reaction"], "message_id"),
        "entry[0].changes[0].value.messages[2].reaction.message_id",
        "required field is missing",
    ),
    (
        "unknown status still needs a timestamp",
        "batch",
        _del(lambda d: d["entry"][0]["changes"][1]["value"]["statuses"][1], "timestamp"),
        "entry[0].changes[1].value.statuses[1].timestamp",
        "required field is missing",
    ),
]


@pytest.mark.parametrize(
    ("file", "mutate", "expected_field", "expected_problem"),
    [pytest.param(*case[1:], id=case[0]) for case in FAILURE_CASES],
)
def test_malformed_payload_names_the_json_path_at_fault(
    file: str, mutate: Mutation, expected_field: str, expected_problem: str
) -> None:
    doc = _doc(file)
    mutate(doc)

    with pytest.raises(base.PayloadError) as exc:
        whatsapp_cloud.parse_webhook(_encode(doc))

    assert exc.value.field == expected_field
    assert expected_problem in exc.value.problem


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00",
        b'{"object": NaN}',
        b'{"object": "whatsapp_business_account", "entry": [], "x": Infinity}',
        b'{"object": "whatsapp_business_account", "entry": [], "x": 1e999}',
        b'{"object": "whatsapp_business_account", "entry": [], "x": "\\ud83d"}',
        b"[" * 100_000,
    ],
    ids=[
        "empty",
        "truncated",
        "text",
        "not utf-8",
        "NaN",
        "Infinity",
        "overflowing float",
        "lone surrogate",
        "nested too deep",
    ],
)
def test_invalid_json_body_is_a_payload_error_on_body(body: bytes) -> None:
    with pytest.raises(base.PayloadError) as exc:
        whatsapp_cloud.parse_webhook(body)
    assert exc.value.field == "body"


@pytest.mark.parametrize("body", [b"[]", b'"whatsapp_business_account"', b"null", b"42"])
def test_json_that_is_not_an_object_is_a_payload_error_on_body(body: bytes) -> None:
    with pytest.raises(base.PayloadError) as exc:
        whatsapp_cloud.parse_webhook(body)
    assert (exc.value.field, exc.value.problem) == ("body", "must be a JSON object")


def test_paired_surrogate_escapes_meta_uses_for_emoji_are_accepted() -> None:
    body = _body("reaction").replace("👍".encode(), b"\\ud83d\\udc4d")
    (message,) = whatsapp_cloud.parse_webhook(body).messages
    assert message.details["reaction"]["emoji"] == "👍"


def test_integer_timestamp_is_accepted_as_well_as_the_documented_string() -> None:
    doc = _text_doc()
    _msg0(doc)["timestamp"] = 1776329412
    (message,) = whatsapp_cloud.parse_webhook(_encode(doc)).messages
    assert message.sent_at == SENT_AT


# --- signature ---------------------------------------------------------------------------------


def _sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


KNOWN_SIGNATURE = "sha256=0329a06b62cd16b33eb6792be8c60b158d89a2ee3a876fce9a881ebb488c0914"


def test_signature_known_vector_is_accepted() -> None:
    assert whatsapp_cloud.verify_signature("secret", b"test", KNOWN_SIGNATURE)


def test_signature_of_a_real_payload_is_accepted_on_the_raw_bytes() -> None:
    body = _body("text")
    assert whatsapp_cloud.verify_signature("app-secret", body, _sign("app-secret", body))


def test_signature_over_reserialised_json_does_not_match_the_raw_bytes() -> None:
    body = _body("text")
    reserialised = json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert not whatsapp_cloud.verify_signature("app-secret", body, _sign("app-secret", reserialised))


def test_signature_with_upper_case_hex_is_accepted() -> None:
    # Meta sends lower case; the digest, not its spelling, is what is compared.
    assert whatsapp_cloud.verify_signature("secret", b"test", "sha256=" + KNOWN_SIGNATURE[7:].upper())


def test_signature_with_surrounding_whitespace_is_accepted() -> None:
    assert whatsapp_cloud.verify_signature("secret", b"test", f" {KNOWN_SIGNATURE} ")


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        pytest.param("wrong", b"test", KNOWN_SIGNATURE, id="wrong secret"),
        pytest.param("secret", b"test ", KNOWN_SIGNATURE, id="tampered body"),
        pytest.param("secret", b"test", None, id="missing header"),
        pytest.param("secret", b"test", "", id="empty header"),
        pytest.param("secret", b"test", KNOWN_SIGNATURE[7:], id="no sha256= prefix"),
        pytest.param("secret", b"test", "SHA256=" + KNOWN_SIGNATURE[7:], id="upper-case prefix"),
        pytest.param("secret", b"test", "sha1=" + hashlib.sha1(b"test").hexdigest(), id="sha1 header"),
        pytest.param("secret", b"test", "sha256=", id="empty digest"),
        pytest.param("secret", b"test", KNOWN_SIGNATURE[:-2], id="truncated digest"),
        pytest.param("secret", b"test", KNOWN_SIGNATURE + "00", id="digest too long"),
        pytest.param("secret", b"test", "sha256=" + "zz" * 32, id="not hex"),
        pytest.param("secret", b"test", "sha256=" + "é" * 64, id="non-ascii"),
        pytest.param("secret", b"test", KNOWN_SIGNATURE + ",sha256=" + "0" * 64, id="two values"),
        pytest.param("", b"test", _sign("", b"test"), id="empty secret never verifies"),
    ],
)
def test_signature_is_rejected_without_raising(secret: str, body: bytes, header: str | None) -> None:
    assert whatsapp_cloud.verify_signature(secret, body, header) is False


@given(secret=st.text(), body=st.binary(), header=st.one_of(st.none(), st.text()))
def test_signature_check_never_raises(secret: str, body: bytes, header: str | None) -> None:
    assert isinstance(whatsapp_cloud.verify_signature(secret, body, header), bool)


# --- verification handshake --------------------------------------------------------------------


META_HANDSHAKE = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "meatyhamhock"}


def test_handshake_with_matching_token_returns_the_challenge() -> None:
    assert whatsapp_cloud.verify_handshake(META_HANDSHAKE, "meatyhamhock") == "1158201444"


@pytest.mark.parametrize(
    ("params", "configured"),
    [
        pytest.param({**META_HANDSHAKE, "hub.verify_token": "wrong"}, "meatyhamhock", id="wrong token"),
        pytest.param({**META_HANDSHAKE, "hub.mode": "unsubscribe"}, "meatyhamhock", id="other mode"),
        pytest.param({k: v for k, v in META_HANDSHAKE.items() if k != "hub.mode"}, "meatyhamhock", id="no mode"),
        pytest.param(
            {k: v for k, v in META_HANDSHAKE.items() if k != "hub.verify_token"}, "meatyhamhock", id="no token"
        ),
        pytest.param(
            {k: v for k, v in META_HANDSHAKE.items() if k != "hub.challenge"}, "meatyhamhock", id="no challenge"
        ),
        pytest.param({**META_HANDSHAKE, "hub.challenge": ""}, "meatyhamhock", id="empty challenge"),
        pytest.param({**META_HANDSHAKE, "hub.verify_token": ""}, "", id="no token configured"),
        pytest.param({**META_HANDSHAKE, "hub.verify_token": "meatyhamhock\udcff"}, "meatyhamhock", id="bad bytes"),
        pytest.param(
            {"hub_mode": "subscribe", "hub_challenge": "1", "hub_verify_token": "meatyhamhock"},
            "meatyhamhock",
            id="underscored names are not Meta's",
        ),
    ],
)
def test_handshake_is_refused(params: dict[str, str], configured: str) -> None:
    assert whatsapp_cloud.verify_handshake(params, configured) is None


def test_handshake_with_non_ascii_token_compares_without_raising() -> None:
    params = {**META_HANDSHAKE, "hub.verify_token": "jamón"}
    assert whatsapp_cloud.verify_handshake(params, "jamón") == "1158201444"
    assert whatsapp_cloud.verify_handshake(params, "jamon") is None


# --- never anything but a batch or a PayloadError ----------------------------------------------


def _parse_outcome(body: bytes) -> None:
    try:
        batch = whatsapp_cloud.parse_webhook(body)
    except base.PayloadError as exc:
        assert exc.field
        return
    assert isinstance(batch, whatsapp_cloud.WebhookBatch)
    for message in batch.messages:
        assert message.sender.identified
        json.dumps(message.raw, allow_nan=False)
        json.dumps(message.details, allow_nan=False)
    for status in batch.statuses:
        json.dumps(status.raw, allow_nan=False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_KEYS = [
    "object",
    "entry",
    "id",
    "changes",
    "field",
    "value",
    "metadata",
    "phone_number_id",
    "contacts",
    "messages",
    "statuses",
    "errors",
    "from",
    "from_user_id",
    "timestamp",
    "type",
    "text",
    "body",
    "wa_id",
    "user_id",
    "profile",
    "username",
    "status",
    "image",
    "interactive",
    "reaction",
    "location",
]
envelope_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from(["whatsapp_business_account", "messages", "text", "1776329412", "447700900123", "sent"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), children, max_size=5),
    max_leaves=40,
)


@given(body=st.binary())
def test_parse_webhook_on_arbitrary_bytes_returns_a_batch_or_payload_error(body: bytes) -> None:
    _parse_outcome(body)


@given(doc=json_values)
def test_parse_webhook_on_arbitrary_json_returns_a_batch_or_payload_error(doc: Any) -> None:
    _parse_outcome(json.dumps(doc).encode())


@given(doc=envelope_like)
def test_parse_webhook_on_envelope_shaped_json_returns_a_batch_or_payload_error(doc: Any) -> None:
    if isinstance(doc, dict):
        doc.setdefault("object", "whatsapp_business_account")
    _parse_outcome(json.dumps(doc).encode())


ALL_FILES = sorted(p.stem for p in TESTDATA.glob("*.json"))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _paths(child, (*prefix, i))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_webhook_on_mutated_real_payloads_returns_a_batch_or_payload_error(data: st.DataObject) -> None:
    doc = copy.deepcopy(_doc(data.draw(st.sampled_from(ALL_FILES), label="file")))
    path = data.draw(st.sampled_from(list(_paths(doc))[1:]), label="path")
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values, label="replacement")
    _parse_outcome(json.dumps(doc).encode())
