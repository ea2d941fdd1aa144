"""The simulator's own contract: providers' refusals in their shapes, paging, the /sim/ control API,
and inbound webhooks that Parley itself (the real app, on a real database) accepts as signed."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import asyncpg
import pytest
from multidict import MultiDict

from services.channels import senders, twilio, whatsapp_cloud
from services.channels.outbound import OutboundRequest
from services.simulator import MetaNumber
from tests import support
from tests.simulation import (
    ACCESS_TOKEN,
    ACCOUNT_SID,
    API_KEY_SECRET,
    API_KEY_SID,
    APP_SECRET,
    AUTH_TOKEN,
    PHONE_NUMBER_ID,
    SMS_NUMBER,
    Receiver,
    Simulation,
    free_port,
    receiving,
    running,
    sim_config,
    sms_channel,
)

USER = "+13125550199"
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
META_SEND = f"/v23.0/{PHONE_NUMBER_ID}/messages"


@pytest.fixture
async def simulation() -> AsyncIterator[Simulation]:
    async with running(sim_config()) as sim:
        yield sim


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def call(sim: Simulation, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with sim.session.request(method, sim.base_url + path, **kwargs) as response:
        return response.status, await response.json(content_type=None)


# --- providers' refusals -----------------------------------------------------------------------------

FORM = {"To": USER, "From": SMS_NUMBER, "Body": "hi"}


@pytest.mark.parametrize("headers", [
    {}, basic(ACCOUNT_SID, "wrong"), basic("AC" + "0" * 32, AUTH_TOKEN), basic(API_KEY_SID, "wrong"),
    {"Authorization": "Basic !!not-base64"}, {"Authorization": "Bearer " + AUTH_TOKEN},
], ids=["none", "wrong token", "another account", "wrong key secret", "garbled", "not basic"])
async def test_twilio_refuses_bad_credentials_with_401_in_its_shape(simulation: Simulation,
                                                                   headers: dict[str, str]) -> None:
    status, body = await call(simulation, "POST", MESSAGES, data=FORM, headers=headers)
    assert status == 401
    assert body == {"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401}
    assert simulation.store.messages == []


async def test_twilio_accepts_its_account_token_and_its_api_keys(simulation: Simulation) -> None:
    for headers in (basic(ACCOUNT_SID, AUTH_TOKEN), basic(API_KEY_SID, API_KEY_SECRET)):
        status, body = await call(simulation, "POST", MESSAGES, data=FORM, headers=headers)
        assert status == 201
        assert (body["status"], body["to"], body["direction"], body["num_segments"]) == (
            "queued", USER, "outbound-api", "1")


@pytest.mark.parametrize(("form", "code"), [
    ({"From": SMS_NUMBER, "Body": "hi"}, 21604),
    ({"To": USER, "Body": "hi"}, 21603),
    ({"To": USER, "From": SMS_NUMBER}, 21619),
    ({"To": "12345", "From": SMS_NUMBER, "Body": "hi"}, 21211),
    ({"To": "whatsapp:" + USER, "From": SMS_NUMBER, "Body": "hi"}, 21910),
    ({"To": USER, "From": SMS_NUMBER, "Body": "a" * 1601}, 21617),
    ({"To": USER, "From": SMS_NUMBER, "ContentSid": "HX1", "ContentVariables": "[1]"}, 21656),
    ({"To": USER, "From": SMS_NUMBER, "Body": "hi", "StatusCallback": "ftp://x"}, 21609),
], ids=["no To", "no From", "no content", "bad To", "mixed channels", "too long", "bad variables", "bad callback"])
async def test_twilio_refuses_malformed_creates_with_400_and_its_code(simulation: Simulation, form: dict[str, str],
                                                                     code: int) -> None:
    status, body = await call(simulation, "POST", MESSAGES, data=form, headers=basic(ACCOUNT_SID, AUTH_TOKEN))
    assert (status, body["code"], body["status"]) == (400, code, 400)
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"


async def test_a_json_body_reads_as_an_empty_form_as_on_twilio(simulation: Simulation) -> None:
    status, body = await call(simulation, "POST", MESSAGES, json=FORM, headers=basic(ACCOUNT_SID, AUTH_TOKEN))
    assert (status, body["code"]) == (400, 21604)


async def test_fetching_an_unknown_message_is_twilios_404(simulation: Simulation) -> None:
    status, body = await call(simulation, "GET", MESSAGES.replace(".json", "/SM" + "0" * 32 + ".json"),
                              headers=basic(ACCOUNT_SID, AUTH_TOKEN))
    assert (status, body["code"]) == (404, 20404)


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, 190), ({"Authorization": "Bearer wrong"}, 401, 190),
], ids=["no token", "wrong token"])
async def test_meta_refuses_bad_tokens_in_graphs_shape(simulation: Simulation, headers: dict[str, str], status: int,
                                                       code: int) -> None:
    got, body = await call(simulation, "POST", META_SEND, json={"messaging_product": "whatsapp"}, headers=headers)
    assert got == status
    error = body["error"]
    assert (error["code"], error["type"]) == (code, "OAuthException")
    assert error["fbtrace_id"]


async def test_meta_refuses_an_unknown_phone_number_id(simulation: Simulation) -> None:
    status, body = await call(simulation, "POST", "/v23.0/999/messages", json={},
                              headers={"Authorization": f"Bearer {ACCESS_TOKEN}"})
    assert (status, body["error"]["code"], body["error"]["error_subcode"]) == (400, 100, 33)


@pytest.mark.parametrize("payload", [
    b"{not json", b"[]", b'{"to": "+13125550199", "type": "text", "text": {"body": "x"}}',
    b'{"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}}',
    b'{"messaging_product": "whatsapp", "to": "+13125550199", "type": "text", "text": {}}',
    b'{"messaging_product": "whatsapp", "to": "+13125550199", "type": "template", "template": {"name": "x"}}',
    b'{"messaging_product": "whatsapp", "to": "+13125550199", "type": "sticker"}',
], ids=["not json", "not an object", "no product", "no to", "no body", "no language", "unsupported type"])
async def test_meta_refuses_malformed_sends_with_400_code_100(simulation: Simulation, payload: bytes) -> None:
    status, body = await call(simulation, "POST", META_SEND, data=payload,
                              headers={"Authorization": f"Bearer {ACCESS_TOKEN}", "Content-Type": "application/json"})
    assert (status, body["error"]["code"]) == (400, 100)
    assert body["error"]["message"].startswith("(#100)")
    assert simulation.store.messages == []


async def test_unknown_paths_are_json_404s(simulation: Simulation) -> None:
    status, body = await call(simulation, "GET", "/nothing/here")
    assert status == 404
    assert body["field"] == "path"


# --- listing, through the real client ------------------------------------------------------------------


async def test_the_sdk_pages_through_a_long_list_newest_first(simulation: Simulation) -> None:
    registry = senders.Senders(simulation.settings(), simulation.session)
    try:
        for n in range(7):
            await registry.twilio.send(OutboundRequest(queue_id=n, channel=sms_channel(), to=USER, body=f"m{n}"))
        client = registry.twilio._client(sms_channel())
        listed = await client.messages.list_async(to=USER, page_size=3)
        others = await client.messages.list_async(to="+13125550100", page_size=3)
    finally:
        await registry.close()
    assert [m.body for m in listed] == [f"m{n}" for n in reversed(range(7))]
    assert others == []


async def test_date_sent_filters_match_sent_messages_only(simulation: Simulation) -> None:
    await simulation.configure(callbacks=False, callback_delay_ms=100_000)  # stays "queued", no date_sent
    registry = senders.Senders(simulation.settings(), simulation.session)
    try:
        await registry.twilio.send(OutboundRequest(queue_id=1, channel=sms_channel(), to=USER, body="queued"))
        client = registry.twilio._client(sms_channel())
        yesterday = datetime.now(UTC) - timedelta(days=1)
        assert await client.messages.list_async(to=USER, date_sent_after=yesterday) == []
        message = simulation.store.messages[0]
        message.status, message.sent_at = "sent", datetime.now(UTC)
        [found] = await client.messages.list_async(to=USER, date_sent_after=yesterday)
        assert await client.messages.list_async(to=USER, date_sent_before=yesterday) == []
    finally:
        await registry.close()
    assert found.sid == message.sid


# --- the control API ------------------------------------------------------------------------------------


async def test_sim_messages_long_polls_for_the_next_message(simulation: Simulation) -> None:
    registry = senders.Senders(simulation.settings(), simulation.session)
    try:
        waiting = asyncio.create_task(simulation.messages(to=USER, wait=10))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await registry.twilio.send(OutboundRequest(queue_id=3, channel=sms_channel(), to=USER, body="hello",
                                                   status_callback_url="https://p.example.com/s?q=3"))
        [message] = await waiting
        assert (message["body"], message["queue_id"], message["seq"]) == ("hello", 3, 1)
        await registry.twilio.send(OutboundRequest(queue_id=4, channel=sms_channel(), to="+13125550100", body="b"))
        assert await simulation.messages(after=1, to=USER) == []
        assert [m["body"] for m in await simulation.messages(after=1)] == ["b"]
    finally:
        await registry.close()


async def test_sim_messages_with_nothing_new_answers_empty_when_the_wait_runs_out(simulation: Simulation) -> None:
    assert await simulation.messages(wait=0.05) == []


@pytest.mark.parametrize("query", ["after=x", "wait=-1", "wait=1000", "to=nobody"])
async def test_sim_messages_refuses_bad_parameters(simulation: Simulation, query: str) -> None:
    status, body = await call(simulation, "GET", "/sim/messages?" + query)
    assert status == 400
    assert body["field"] == query.split("=")[0]


async def test_stats_count_a_queue_id_sent_twice_and_reset_clears_everything(simulation: Simulation) -> None:
    registry = senders.Senders(simulation.settings(), simulation.session)
    try:
        for _ in range(2):
            await registry.twilio.send(OutboundRequest(queue_id=9, channel=sms_channel(), to=USER, body="again",
                                                       status_callback_url="https://p.example.com/s?q=9"))
    finally:
        await registry.close()
    stats = await simulation.control("GET", "/sim/stats")
    assert (stats["messages"], stats["duplicate_queue_ids"], stats["counters"]["twilio_accepted"]) == (2, 1, 2)
    await simulation.configure(latency_ms=5)
    await simulation.control("POST", "/sim/reset")
    assert (await simulation.control("GET", "/sim/stats"))["messages"] == 0
    assert (await simulation.control("GET", "/sim/config"))["latency_ms"] == 0


@pytest.mark.parametrize("knobs", [
    {"error_rates": {"21610": 2}}, {"error_rates": {"abc": 0.5}}, {"latency_ms": -1}, {"nonsense": 1},
    {"throughput": {SMS_NUMBER: 0}},
], ids=["rate above 1", "not a code", "negative latency", "unknown knob", "zero throughput"])
async def test_sim_config_refuses_bad_knobs_and_keeps_the_old_ones(simulation: Simulation,
                                                                   knobs: dict[str, Any]) -> None:
    await simulation.configure(error_rates={"21610": 0.5})
    status, body = await call(simulation, "POST", "/sim/config", json=knobs)
    assert status == 400
    assert body["error"] and body["field"]
    assert (await simulation.control("GET", "/sim/config"))["error_rates"] == {"twilio:21610": 0.5}


# --- inbound --------------------------------------------------------------------------------------------


@pytest.fixture
async def to_receiver() -> AsyncIterator[tuple[Simulation, Receiver]]:
    async with receiving() as receiver, running(sim_config(parley_url=receiver.url)) as sim:
        yield sim, receiver


async def test_sim_inbound_posts_a_signed_twilio_form(to_receiver: tuple[Simulation, Receiver]) -> None:
    sim, receiver = to_receiver
    answer = await sim.control("POST", "/sim/inbound", {"channel": "sms", "from": USER, "body": "STOP"})
    assert answer["status"] == 200
    [delivery] = receiver.received
    form = MultiDict(parse_qsl(delivery.body.decode(), keep_blank_values=True))
    assert twilio.verify_signature(AUTH_TOKEN, receiver.url + "/webhooks/twilio", form,
                                   delivery.headers["X-Twilio-Signature"])
    message = twilio.parse_inbound(form)
    assert (message.body, message.sender.phone, message.channel_address, message.account_sid) == (
        "STOP", USER, SMS_NUMBER, ACCOUNT_SID)


async def test_sim_inbound_posts_a_signed_twilio_whatsapp_form(to_receiver: tuple[Simulation, Receiver]) -> None:
    sim, receiver = to_receiver
    await sim.control("POST", "/sim/inbound", {"channel": "twilio_whatsapp", "from": USER, "to": "+14155238886",
                                               "body": "Oi", "profile_name": "Ana"})
    form = MultiDict(parse_qsl(receiver.received[0].body.decode()))
    message = twilio.parse_inbound(form)
    assert (message.channel_kind.value, message.sender.profile_name) == ("twilio_whatsapp", "Ana")


async def test_sim_inbound_posts_a_signed_meta_webhook(to_receiver: tuple[Simulation, Receiver]) -> None:
    sim, receiver = to_receiver
    await sim.control("POST", "/sim/inbound", {"channel": "whatsapp", "from": USER, "body": "Olá"})
    [delivery] = receiver.received
    assert delivery.path_qs == "/webhooks/whatsapp"
    assert whatsapp_cloud.verify_signature(APP_SECRET, delivery.body, delivery.headers["X-Hub-Signature-256"])
    [message] = whatsapp_cloud.parse_webhook(delivery.body).messages
    assert (message.body, message.sender.phone, message.channel_address) == ("Olá", USER, PHONE_NUMBER_ID)


@pytest.mark.parametrize("body", [
    b"not json", b"{}", b'{"channel": "fax", "from": "+13125550199", "body": "x"}',
    b'{"channel": "sms", "from": "nobody", "body": "x"}',
    b'{"channel": "whatsapp", "from": "+13125550199", "to": "42", "body": "x"}',
], ids=["not json", "empty", "unknown channel", "bad from", "unknown phone_number_id"])
async def test_sim_inbound_refuses_malformed_requests(to_receiver: tuple[Simulation, Receiver], body: bytes) -> None:
    sim, receiver = to_receiver
    status, answer = await call(sim, "POST", "/sim/inbound", data=body)
    assert status == 400
    assert answer["error"] and answer["field"]
    assert receiver.received == []


async def test_sim_inbound_without_a_parley_url_says_so(simulation: Simulation) -> None:
    status, answer = await call(simulation, "POST", "/sim/inbound", json={"channel": "sms", "from": USER, "body": "x"})
    assert (status, answer["field"]) == (409, "parley_url")


async def test_parley_accepts_the_simulators_inbound_webhooks(make_client: Any, db: asyncpg.Connection) -> None:
    # The real app, its public URL behind a "proxy": the simulator signs for PUBLIC_BASE_URL and posts to
    # the test server, and Parley's own signature checks and routing accept both providers' webhooks.
    parley = await make_client()
    config = sim_config(parley_url=str(parley.make_url("")).rstrip("/"))
    config.parley_public_url = support.PUBLIC_BASE
    config.twilio_accounts = {support.ACCOUNT_SID: support.AUTH_TOKEN}
    config.twilio_numbers = {SMS_NUMBER: support.ACCOUNT_SID}
    config.meta_numbers = {support.PHONE_NUMBER_ID: MetaNumber(support.PHONE_NUMBER_ID, support.ACCESS_TOKEN,
                                                               support.APP_SECRET)}
    async with running(config) as sim:
        sms_answer = await sim.control("POST", "/sim/inbound", {"channel": "sms", "from": USER, "body": "hello sms"})
        wa_answer = await sim.control("POST", "/sim/inbound", {"channel": "whatsapp", "from": USER, "body": "hi wa"})
    assert sms_answer["status"] == 200, sms_answer
    assert wa_answer["status"] == 200, wa_answer
    bodies = {r["body"] for r in await db.fetch("SELECT body FROM messages WHERE direction = 'inbound'")}
    assert bodies == {"hello sms", "hi wa"}


async def test_no_input_gets_a_500(simulation: Simulation) -> None:
    # Random forms, JSON and queries at every endpoint: refusals, never a defect.
    rng = random.Random(5)
    alphabet = ["", "x", "+13125550199", "whatsapp:+1", "\x00", "é", "[1]", '{"1":2}', "http://h_x", "9" * 30,
                "-1", "1e309", "{", "null"]
    names = ["To", "From", "Body", "MessagingServiceSid", "ContentSid", "ContentVariables", "StatusCallback",
             "PageSize", "Page", "DateSent>", "to", "after", "wait", "channel", "from", "body", "type", "text",
             "template", "messaging_product", "biz_opaque_callback_data"]
    auth = basic(ACCOUNT_SID, AUTH_TOKEN)
    bearer = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    for _ in range(100):
        fields = {rng.choice(names): rng.choice(alphabet) for _ in range(rng.randint(0, 6))}
        doc: Any = rng.choice([fields, [fields], {k: {"body": v, "name": v} for k, v in fields.items()}, "x", 3])
        for method, path, kwargs in [
            ("POST", MESSAGES, {"data": fields, "headers": auth}),
            ("GET", MESSAGES, {"params": fields, "headers": auth}),
            ("POST", META_SEND, {"json": doc, "headers": bearer}),
            ("GET", "/sim/messages", {"params": {k: v for k, v in fields.items() if "\x00" not in v}}),
            ("POST", "/sim/inbound", {"json": doc}),
            ("POST", "/sim/config", {"json": doc}),
        ]:
            status, _ = await call(simulation, method, path, **kwargs)
            assert status < 500, (method, path, kwargs)


def _simulate(port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "TWILIO_FROM_NUMBER": SMS_NUMBER}
    return subprocess.Popen([sys.executable, "-m", "services.cli", "simulate", "--port", str(port),
                             "--error-rate", "21610=1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


async def test_parley_simulate_runs_as_a_process_with_the_settings_credentials() -> None:
    port = free_port()
    proc = _simulate(port)
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # until it listens (bounded: a hang fails the test, it does not stall it)
                try:
                    async with session.get(base + "/sim/config") as response:
                        knobs = await response.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("parley simulate never listened")
            assert knobs["error_rates"] == {"twilio:21610": 1.0}
            async with session.post(base + MESSAGES, data=FORM, headers=basic(ACCOUNT_SID, AUTH_TOKEN)) as response:
                assert (response.status, (await response.json())["code"]) == (400, 21610)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert AUTH_TOKEN not in output
    assert '"msg":"simulating"' in output
