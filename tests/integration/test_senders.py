"""The provider modules over real HTTP, through the real twilio client, against the simulator.

One table per provider maps each error the provider can answer to our kind and flags; the rest are
behaviours: accepted sends and their payloads, timeouts, connection failures, Retry-After, lookups,
and the signed status callbacks that follow a send.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import orjson
import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from services.channels import senders, twilio, whatsapp_cloud
from services.channels.base import ChannelKind, MessageStatus
from services.channels.outbound import ErrorKind, OutboundRequest, SendError, Template
from tests.simulation import (
    ACCOUNT_SID,
    API_KEY_SECRET,
    API_KEY_SID,
    APP_SECRET,
    AUTH_TOKEN,
    SERVICE_SID,
    SMS_NUMBER,
    WHATSAPP_NUMBER,
    Receiver,
    Simulation,
    cloud_channel,
    free_port,
    receiving,
    running,
    sim_config,
    sms_channel,
    twilio_whatsapp_channel,
)

USER = "+13125550199"


@pytest.fixture
async def simulation() -> AsyncIterator[Simulation]:
    async with running(sim_config()) as sim:
        yield sim


@pytest.fixture
async def registry(simulation: Simulation) -> AsyncIterator[senders.Senders]:
    registry = senders.Senders(simulation.settings(), simulation.session)
    yield registry
    await registry.close()


def sms(queue_id: int = 1, body: str = "Your table is booked for 8pm.", **overrides: object) -> OutboundRequest:
    values: dict[str, object] = {"queue_id": queue_id, "channel": sms_channel(), "to": USER, "body": body}
    values.update(overrides)
    return OutboundRequest(**values)  # type: ignore[arg-type]


def cloud(queue_id: int = 1, body: str | None = "Hello from WhatsApp", **overrides: object) -> OutboundRequest:
    values: dict[str, object] = {"queue_id": queue_id, "channel": cloud_channel(), "to": USER, "body": body}
    values.update(overrides)
    return OutboundRequest(**values)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], what: str, limit_s: float = 10.0) -> None:
    """Wait for a state change the simulator makes in the background (not a timing assertion: the
    limit only bounds a hang)."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


# --- accepted sends -----------------------------------------------------------------------------------


async def test_twilio_sms_is_accepted_with_its_sid_status_and_segments(simulation: Simulation,
                                                                        registry: senders.Senders) -> None:
    body = "€" * 80  # 160 septets: one segment, each euro costing two
    result = await registry.for_kind(ChannelKind.TWILIO_SMS).send(
        sms(41, body, status_callback_url="https://parley.example.com/webhooks/twilio/status?q=41"))
    assert result.provider_message_id.startswith("SM")
    assert result.status is MessageStatus.QUEUED
    assert result.segments == 1
    [sent] = await simulation.messages()
    assert (sent["sid"], sent["to"], sent["from"], sent["body"], sent["queue_id"]) == (
        result.provider_message_id, USER, SMS_NUMBER, body, 41)


async def test_twilio_send_with_an_api_key_from_the_settings(simulation: Simulation) -> None:
    registry = senders.Senders(simulation.settings(TWILIO_API_KEY_SID=API_KEY_SID,
                                                   TWILIO_API_KEY_SECRET=API_KEY_SECRET), simulation.session)
    try:
        channel = sms_channel(auth_token=None)  # the default tenant's channel: credentials from settings
        result = await registry.twilio.send(sms(channel=channel))
    finally:
        await registry.close()
    assert result.provider_message_id.startswith("SM")


async def test_a_catch_all_channel_sends_through_its_messaging_service(simulation: Simulation,
                                                                      registry: senders.Senders) -> None:
    channel = sms_channel(address="*", messaging_service_sid=SERVICE_SID)
    result = await registry.twilio.send(sms(channel=channel))
    assert result.status is MessageStatus.ACCEPTED
    [message] = simulation.store.messages
    assert message.messaging_service_sid == SERVICE_SID


async def test_twilio_whatsapp_template_goes_as_content_sid_and_variables(simulation: Simulation,
                                                                          registry: senders.Senders) -> None:
    template = Template("HX" + "0" * 32, "pt_BR", {"1": "Ana", "2": "20:00"})
    await registry.for_kind(ChannelKind.TWILIO_WHATSAPP).send(
        sms(channel=twilio_whatsapp_channel(), body=None, template=template))
    [message] = simulation.store.messages
    assert (message.to, message.from_) == ("whatsapp:" + USER, "whatsapp:" + WHATSAPP_NUMBER)
    assert message.body is None
    assert message.content_sid == template.name
    assert orjson.loads(message.content_variables or "") == {"1": "Ana", "2": "20:00"}


async def test_whatsapp_cloud_text_carries_our_queue_id(simulation: Simulation, registry: senders.Senders) -> None:
    result = await registry.for_kind(ChannelKind.WHATSAPP_CLOUD).send(cloud(77))
    assert result.provider_message_id.startswith("wamid.")
    assert result.status is MessageStatus.ACCEPTED
    [message] = simulation.store.messages
    assert (message.body, message.callback_data, message.queue_id) == ("Hello from WhatsApp", "q:77", 77)


async def test_whatsapp_cloud_template_parameters_go_in_numeric_key_order(simulation: Simulation,
                                                                          registry: senders.Senders) -> None:
    variables = {str(n): f"v{n}" for n in (10, 2, 1)}
    await registry.whatsapp_cloud.send(cloud(body=None, template=Template("order_update", "en_US", variables)))
    [message] = simulation.store.messages
    assert message.template is not None
    assert message.template["name"] == "order_update"
    assert message.template["language"]["code"] == "en_US"
    [component] = message.template["components"]
    assert [p["text"] for p in component["parameters"]] == ["v1", "v2", "v10"]


async def test_named_template_parameters_keep_their_names(simulation: Simulation,
                                                          registry: senders.Senders) -> None:
    variables = {"first_name": "Ana", "time": "20:00"}
    await registry.whatsapp_cloud.send(cloud(body=None, template=Template("booking", "en", variables)))
    [component] = (simulation.store.messages[0].template or {})["components"]
    assert component["parameters"] == [{"type": "text", "parameter_name": "first_name", "text": "Ana"},
                                       {"type": "text", "parameter_name": "time", "text": "20:00"}]


# --- errors -----------------------------------------------------------------------------------------

TWILIO_ERRORS = [
    # (code the simulator answers, our kind, retryable, maybe_sent)
    ("20429", ErrorKind.THROTTLED, True, False),
    ("63018", ErrorKind.THROTTLED, True, False),
    ("21611", ErrorKind.THROTTLED, True, False),
    ("20500", ErrorKind.TRANSIENT, True, True),
    ("20503", ErrorKind.TRANSIENT, True, True),
    ("21610", ErrorKind.OPTED_OUT, False, False),
    ("21211", ErrorKind.INVALID_RECIPIENT, False, False),
    ("21614", ErrorKind.INVALID_RECIPIENT, False, False),
    ("63016", ErrorKind.WINDOW_CLOSED, False, False),
    ("20003", ErrorKind.CONFIG, False, False),
    ("21606", ErrorKind.CONFIG, False, False),
    ("21408", ErrorKind.CONFIG, False, False),
    ("21617", ErrorKind.REJECTED, False, False),
    ("30450", ErrorKind.REJECTED, False, False),  # a code we do not know
]


@pytest.mark.parametrize(("code", "kind", "retryable", "maybe_sent"), TWILIO_ERRORS, ids=[c[0] for c in TWILIO_ERRORS])
async def test_twilio_error_maps_to_its_kind(simulation: Simulation, registry: senders.Senders, code: str,
                                             kind: ErrorKind, retryable: bool, maybe_sent: bool) -> None:
    await simulation.configure(error_rates={code: 1.0})
    with pytest.raises(SendError) as caught:
        await registry.twilio.send(sms())
    error = caught.value
    assert (error.kind, error.retryable, error.maybe_sent, error.code) == (kind, retryable, maybe_sent, code)
    assert simulation.store.messages == []
    # Exactly one request reached the provider: the SDK re-POSTs nothing, not even after a 5xx.
    assert simulation.store.errors == {f"twilio:{code}": 1}


META_ERRORS = [
    ("130429", ErrorKind.THROTTLED, True, False),
    ("131056", ErrorKind.THROTTLED, True, False),
    ("80007", ErrorKind.THROTTLED, True, False),
    ("4", ErrorKind.THROTTLED, True, False),
    ("131000", ErrorKind.TRANSIENT, True, True),  # answered 500: Meta may have acted on it
    ("1", ErrorKind.TRANSIENT, True, True),
    ("131047", ErrorKind.WINDOW_CLOSED, False, False),
    ("131026", ErrorKind.INVALID_RECIPIENT, False, False),
    ("131050", ErrorKind.OPTED_OUT, False, False),
    ("190", ErrorKind.CONFIG, False, False),
    ("10", ErrorKind.CONFIG, False, False),
    ("200", ErrorKind.CONFIG, False, False),
    ("132001", ErrorKind.REJECTED, False, False),
    ("100", ErrorKind.REJECTED, False, False),
]


@pytest.mark.parametrize(("code", "kind", "retryable", "maybe_sent"), META_ERRORS, ids=[c[0] for c in META_ERRORS])
async def test_whatsapp_cloud_error_maps_to_its_kind(simulation: Simulation, registry: senders.Senders, code: str,
                                                     kind: ErrorKind, retryable: bool, maybe_sent: bool) -> None:
    await simulation.configure(error_rates={f"meta:{code}": 1.0})
    with pytest.raises(SendError) as caught:
        await registry.whatsapp_cloud.send(cloud())
    error = caught.value
    assert (error.kind, error.retryable, error.maybe_sent, error.code) == (kind, retryable, maybe_sent, code)
    assert simulation.store.messages == []


async def test_131049_waits_a_day(simulation: Simulation, registry: senders.Senders) -> None:
    await simulation.configure(error_rates={"meta:131049": 1.0})
    with pytest.raises(SendError) as caught:
        await registry.whatsapp_cloud.send(cloud())
    assert (caught.value.kind, caught.value.retry_after_s) == (ErrorKind.THROTTLED, 86400.0)


async def test_wrong_twilio_credentials_are_a_config_error(simulation: Simulation,
                                                           registry: senders.Senders) -> None:
    with pytest.raises(SendError) as caught:
        await registry.twilio.send(sms(channel=sms_channel(auth_token="wrong")))
    assert (caught.value.kind, caught.value.http_status, caught.value.code) == (ErrorKind.CONFIG, 401, "20003")


async def test_wrong_meta_token_is_a_config_error(simulation: Simulation, registry: senders.Senders) -> None:
    with pytest.raises(SendError) as caught:
        await registry.whatsapp_cloud.send(cloud(channel=cloud_channel(access_token="EAAGwrong")))
    assert (caught.value.kind, caught.value.http_status, caught.value.code) == (ErrorKind.CONFIG, 401, "190")


async def test_a_channel_without_credentials_is_refused_before_any_request(simulation: Simulation) -> None:
    registry = senders.Senders(simulation.settings(TWILIO_ACCOUNT_SID="", TWILIO_AUTH_TOKEN=""), simulation.session)
    try:
        with pytest.raises(SendError) as caught:
            await registry.twilio.send(sms(channel=sms_channel(account_sid=None, auth_token=None)))
    finally:
        await registry.close()
    assert caught.value.kind is ErrorKind.CONFIG
    assert simulation.store.stats == {}


@pytest.mark.parametrize("provider", ["twilio", "meta"])
async def test_a_send_whose_answer_never_comes_is_transient_and_maybe_sent(simulation: Simulation,
                                                                           provider: str) -> None:
    await simulation.configure(error_rates={f"{provider}:timeout": 1.0}, hang_s=3)
    registry = senders.Senders(simulation.settings(PARLEY_SEND_TIMEOUT_S=0.3), simulation.session)
    try:
        with pytest.raises(SendError) as caught:
            await (registry.twilio.send(sms()) if provider == "twilio" else registry.whatsapp_cloud.send(cloud()))
    finally:
        await registry.close()
    assert (caught.value.kind, caught.value.retryable, caught.value.maybe_sent) == (ErrorKind.TRANSIENT, True, True)
    assert len(simulation.store.messages) == 1  # the provider has it: hence "maybe sent", never a plain retry


async def test_a_refused_connection_is_transient_and_not_sent(simulation: Simulation) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    registry = senders.Senders(simulation.settings(TWILIO_API_BASE_URL=closed, WHATSAPP_GRAPH_BASE_URL=closed),
                               simulation.session)
    try:
        for send in (registry.twilio.send(sms()), registry.whatsapp_cloud.send(cloud())):
            with pytest.raises(SendError) as caught:
                await send
            assert (caught.value.kind, caught.value.maybe_sent) == (ErrorKind.TRANSIENT, False)
    finally:
        await registry.close()


async def test_over_the_senders_throughput_is_throttled_with_retry_after(simulation: Simulation,
                                                                         registry: senders.Senders) -> None:
    # One message per 100 s: the first goes, the second is told when it may.
    await simulation.configure(throughput={SMS_NUMBER: 0.01})
    await registry.twilio.send(sms(1))
    with pytest.raises(SendError) as caught:
        await registry.twilio.send(sms(2))
    assert (caught.value.kind, caught.value.http_status, caught.value.code) == (ErrorKind.THROTTLED, 429, "20429")
    assert caught.value.retry_after_s == 100.0


async def test_whatsapp_number_throughput_is_130429(simulation: Simulation, registry: senders.Senders) -> None:
    await simulation.configure(default_throughput=0.01)
    await registry.whatsapp_cloud.send(cloud(1))
    with pytest.raises(SendError) as caught:
        await registry.whatsapp_cloud.send(cloud(2))
    assert (caught.value.kind, caught.value.code) == (ErrorKind.THROTTLED, "130429")


async def test_bodies_over_the_provider_limit_are_refused_before_sending(simulation: Simulation,
                                                                         registry: senders.Senders) -> None:
    for send in (registry.twilio.send(sms(body="a" * 1601)), registry.whatsapp_cloud.send(cloud(body="a" * 4097))):
        with pytest.raises(SendError) as caught:
            await send
        assert caught.value.kind is ErrorKind.REJECTED
    assert simulation.store.stats == {}


# --- lookup -------------------------------------------------------------------------------------------


async def test_lookup_finds_a_message_whose_answer_was_lost(simulation: Simulation) -> None:
    await simulation.configure(error_rates={"twilio:timeout": 1.0}, hang_s=3)
    registry = senders.Senders(simulation.settings(PARLEY_SEND_TIMEOUT_S=0.3), simulation.session)
    try:
        since = datetime.now(UTC)
        request = sms(5)
        with pytest.raises(SendError):
            await registry.twilio.send(request)
        assert registry.twilio.can_lookup
        found = await registry.twilio.lookup(request, since)
    finally:
        await registry.close()
    [message] = simulation.store.messages
    assert found is not None
    assert found.provider_message_id == message.sid


async def test_lookup_finds_nothing_the_provider_does_not_have(simulation: Simulation,
                                                               registry: senders.Senders) -> None:
    since = datetime.now(UTC)
    await registry.twilio.send(sms(1, "first"))
    assert await registry.twilio.lookup(sms(2, "another body"), since) is None
    assert await registry.twilio.lookup(sms(1, "first", to="+13125550100"), since) is None
    assert await registry.twilio.lookup(sms(1, "first"), since + timedelta(minutes=1)) is None
    assert await registry.twilio.lookup(sms(1, "first"), since) is not None


async def test_lookup_pages_through_the_recipients_messages(simulation: Simulation,
                                                            registry: senders.Senders) -> None:
    since = datetime.now(UTC)
    for n in range(60):  # more than one page of LOOKUP_PAGE (50)
        await registry.twilio.send(sms(n, f"message {n}"))
    found = await registry.twilio.lookup(sms(0, "message 0"), since)
    assert found is not None
    assert found.provider_message_id == simulation.store.messages[0].sid


async def test_whatsapp_cloud_cannot_look_up_and_says_so(registry: senders.Senders) -> None:
    assert not registry.whatsapp_cloud.can_lookup
    with pytest.raises(SendError):
        await registry.whatsapp_cloud.lookup(cloud(), datetime.now(UTC))


async def test_no_token_or_recipient_number_reaches_the_log(simulation: Simulation, registry: senders.Senders,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    since = datetime.now(UTC)
    await registry.twilio.send(sms())
    await registry.twilio.lookup(sms(), since)
    await registry.whatsapp_cloud.send(cloud())
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert AUTH_TOKEN not in text and USER not in text, record.getMessage()


# --- status callbacks ----------------------------------------------------------------------------------


@pytest.fixture
async def with_receiver() -> AsyncIterator[tuple[Simulation, Receiver, senders.Senders]]:
    async with receiving() as receiver, running(sim_config(parley_url=receiver.url)) as sim:
        registry = senders.Senders(sim.settings(), sim.session)
        try:
            yield sim, receiver, registry
        finally:
            await registry.close()


async def test_twilio_status_callbacks_arrive_signed_in_order(
        with_receiver: tuple[Simulation, Receiver, senders.Senders]) -> None:
    sim, receiver, registry = with_receiver
    callback = receiver.url + "/webhooks/twilio/status?q=12"
    result = await registry.twilio.send(sms(12, status_callback_url=callback))
    await until(lambda: len(receiver.received) == 2, "two callbacks")
    statuses = []
    for delivery in receiver.received:
        assert delivery.path_qs == "/webhooks/twilio/status?q=12"
        form = MultiDict(parse_qsl(delivery.body.decode(), keep_blank_values=True))
        signature = delivery.headers["X-Twilio-Signature"]
        assert RequestValidator(AUTH_TOKEN).validate(callback, dict(form), signature)
        assert twilio.verify_signature(AUTH_TOKEN, callback, form, signature)
        assert not twilio.verify_signature(AUTH_TOKEN, receiver.url + "/webhooks/twilio/status?q=13", form, signature)
        update = twilio.parse_status(form)
        assert update is not None
        assert (update.provider_message_id, update.recipient, form["AccountSid"]) == (
            result.provider_message_id, USER, ACCOUNT_SID)
        statuses.append(update.status)
    assert statuses == [MessageStatus.SENT, MessageStatus.DELIVERED]


async def test_a_delivery_failure_arrives_in_the_callback_with_its_code(
        with_receiver: tuple[Simulation, Receiver, senders.Senders]) -> None:
    sim, receiver, registry = with_receiver
    await sim.configure(failure_rates={"30006": 1.0})
    await registry.twilio.send(sms(3, status_callback_url=receiver.url + "/webhooks/twilio/status?q=3"))
    await until(lambda: len(receiver.received) == 2, "two callbacks")
    update = twilio.parse_status(MultiDict(parse_qsl(receiver.received[-1].body.decode())))
    assert update is not None
    assert (update.status, update.error_code) == (MessageStatus.UNDELIVERED, "30006")


async def test_meta_status_webhooks_arrive_signed_with_our_callback_data(
        with_receiver: tuple[Simulation, Receiver, senders.Senders]) -> None:
    sim, receiver, registry = with_receiver
    result = await registry.whatsapp_cloud.send(cloud(9))
    await until(lambda: len(receiver.received) == 2, "two status webhooks")
    statuses = []
    for delivery in receiver.received:
        assert delivery.path_qs == "/webhooks/whatsapp"
        assert whatsapp_cloud.verify_signature(APP_SECRET, delivery.body, delivery.headers["X-Hub-Signature-256"])
        assert not whatsapp_cloud.verify_signature("other", delivery.body, delivery.headers["X-Hub-Signature-256"])
        [update] = whatsapp_cloud.parse_webhook(delivery.body).statuses
        assert update.provider_message_id == result.provider_message_id
        assert update.raw["status"]["biz_opaque_callback_data"] == "q:9"
        statuses.append(update.status)
    assert statuses == [MessageStatus.SENT, MessageStatus.DELIVERED]


async def test_a_meta_failure_arrives_as_a_failed_status_with_its_error(
        with_receiver: tuple[Simulation, Receiver, senders.Senders]) -> None:
    sim, receiver, registry = with_receiver
    await sim.configure(failure_rates={"meta:131026": 1.0})
    await registry.whatsapp_cloud.send(cloud(4))
    await until(lambda: len(receiver.received) == 1, "the failed status")
    [update] = whatsapp_cloud.parse_webhook(receiver.received[0].body).statuses
    assert (update.status, update.error_code) == (MessageStatus.FAILED, "131026")


async def test_callbacks_can_be_switched_off(with_receiver: tuple[Simulation, Receiver, senders.Senders]) -> None:
    sim, receiver, registry = with_receiver
    await sim.configure(callbacks=False)
    await registry.twilio.send(sms(1, status_callback_url=receiver.url + "/webhooks/twilio/status?q=1"))
    await until(lambda: sim.store.messages[0].status == "delivered", "the message delivered")
    assert receiver.received == []


async def test_kinds_read_from_the_database_as_text_pick_the_same_senders(simulation: Simulation,
                                                                         registry: senders.Senders) -> None:
    assert registry.for_kind("twilio_whatsapp") is registry.for_kind(ChannelKind.TWILIO_WHATSAPP) is registry.twilio
    assert registry.for_kind("whatsapp_cloud") is registry.whatsapp_cloud
    with pytest.raises(ValueError):
        registry.for_kind("fax")
    # A channel whose kind came back from a query as text still gets WhatsApp's prefixes.
    await registry.twilio.send(sms(channel=twilio_whatsapp_channel(kind="twilio_whatsapp")))
    assert simulation.store.messages[0].to == "whatsapp:" + USER
