"""Meta WhatsApp Cloud API webhooks, end to end through the real app and a real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from services.channels import whatsapp_cloud
from tests import support
from tests.support import TESTDATA, meta_request

CASES = TESTDATA / "whatsapp_cloud"


def load(name: str) -> bytes:
    return (CASES / name).read_bytes()


async def post_meta(client, payload, secret=support.APP_SECRET):
    body, headers = meta_request(payload, secret)
    return await client.post("/webhooks/whatsapp", data=body, headers=headers)


def _files_with(kind: str) -> list[str]:
    names = []
    for path in sorted(CASES.glob("*.json")):
        batch = whatsapp_cloud.parse_webhook(path.read_bytes())
        if batch.phone_number_ids - {support.PHONE_NUMBER_ID}:
            continue
        if (kind == "messages" and batch.messages) or (kind == "statuses" and batch.statuses and not batch.messages):
            names.append(path.name)
    return names


@pytest.mark.parametrize("name", _files_with("messages"))
async def test_every_documented_message_shape_is_stored_once_with_its_type(client, db, name):
    body = load(name)
    expected = whatsapp_cloud.parse_webhook(body).messages
    resp = await post_meta(client, body)
    assert resp.status == 200, await resp.text()
    rows = await db.fetch("SELECT provider_message_id, message_type, body, media, raw FROM messages ORDER BY id")
    assert [(r["provider_message_id"], r["message_type"], r["body"]) for r in rows] == [
        (m.provider_message_id, m.message_type.value, m.body) for m in expected]
    assert await db.fetchval("SELECT count(*) FROM agent_tasks") == len(expected)
    # A redelivery of the same body is acknowledged and stored once.
    assert (await post_meta(client, body)).status == 200
    assert await db.fetchval("SELECT count(*) FROM messages") == len(expected)


@pytest.mark.parametrize("name", _files_with("statuses"))
async def test_every_documented_status_shape_is_recorded(client, db, name):
    body = load(name)
    resp = await post_meta(client, body)
    assert resp.status == 200, await resp.text()
    expected = whatsapp_cloud.parse_webhook(body).statuses
    got = await db.fetch("SELECT provider_message_id, status, error_code FROM message_statuses ORDER BY id")
    assert [(r["provider_message_id"], r["status"], r["error_code"]) for r in got] == [
        (s.provider_message_id, s.status.value, s.error_code) for s in expected]


async def test_text_message_creates_user_with_e164_phone_and_profile(client, db):
    resp = await post_meta(client, support.whatsapp_text("Does it come in another color?", "wamid.T1"))
    assert resp.status == 200
    user = await db.fetchrow("SELECT * FROM users")
    assert (user["phone"], user["wa_id"], user["profile_name"]) == ("+16505551234", "16505551234", "Sheena Nelson")
    kind = await db.fetchval("SELECT ch.kind FROM conversations c JOIN channels ch ON ch.id = c.channel_id")
    assert kind == "whatsapp_cloud"


async def test_username_only_user_is_identified_without_phone(client, db):
    resp = await post_meta(client, load("username_only.json"))
    assert resp.status == 200
    user = await db.fetchrow("SELECT * FROM users")
    assert user["phone"] is None
    assert user["wa_user_id"] or user["wa_username"]


async def test_same_bsuid_later_with_phone_stays_one_user(client, db):
    base = json.loads(load("username_only.json"))
    value = base["entry"][0]["changes"][0]["value"]
    bsuid = value["messages"][0].get("from_user_id") or value["contacts"][0].get("user_id")
    assert (await post_meta(client, base)).status == 200
    later = support.whatsapp_text("now with a number", "wamid.LATER", wa_id="16505550000")
    later_value = later["entry"][0]["changes"][0]["value"]
    later_value["contacts"][0]["user_id"] = bsuid
    later_value["messages"][0]["from_user_id"] = bsuid
    assert (await post_meta(client, later)).status == 200
    users = await db.fetch("SELECT phone, wa_user_id FROM users")
    assert len(users) == 1 and users[0]["phone"] == "+16505550000" and users[0]["wa_user_id"] == bsuid


async def test_batch_with_several_entries_and_messages_stores_each(client, db):
    body = load("batch.json")
    batch = whatsapp_cloud.parse_webhook(body)
    tenant = await db.fetchval("SELECT id FROM tenants")
    for number in batch.phone_number_ids - {support.PHONE_NUMBER_ID}:  # the batch spans two of our numbers
        await db.execute("INSERT INTO channels (tenant_id, kind, address, credentials) VALUES "
                         "($1, 'whatsapp_cloud', $2, $3)", tenant, number, {"app_secret": support.APP_SECRET})
    assert (await post_meta(client, body)).status == 200
    assert await db.fetchval("SELECT count(*) FROM messages") == len(batch.messages) > 1


async def test_opt_out_keyword_over_whatsapp_opts_out(client, db):
    assert (await post_meta(client, support.whatsapp_text("Stop", "wamid.STOP1"))).status == 200
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_out"


async def test_status_moves_outbound_message_forward_only(client, db):
    assert (await post_meta(client, support.whatsapp_text("hi", "wamid.IN1"))).status == 200
    conv, tenant = await db.fetchrow("SELECT id, tenant_id FROM conversations")
    await db.execute("INSERT INTO messages (tenant_id, conversation_id, direction, provider, provider_message_id, "
                     "message_type, body, status) VALUES ($1, $2, 'outbound', 'meta', 'wamid.OUT1', 'text', 'x', "
                     "'sent')", tenant, conv)

    def status(value: str) -> dict:
        return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
                "value": {"messaging_product": "whatsapp",
                          "metadata": {"display_phone_number": "15550783881",
                                       "phone_number_id": support.PHONE_NUMBER_ID},
                          "statuses": [{"id": "wamid.OUT1", "status": value, "timestamp": "1749416383",
                                        "recipient_id": "16505551234"}]}}]}]}

    for value in ["read", "delivered", "sent"]:  # Meta skips "delivered" when read at once; order not guaranteed
        assert (await post_meta(client, status(value))).status == 200
    assert await db.fetchval("SELECT status FROM messages WHERE provider_message_id = 'wamid.OUT1'") == "read"


# --- handshake -------------------------------------------------------------------------------------

async def test_handshake_answers_the_challenge(client):
    resp = await client.get("/webhooks/whatsapp", params={
        "hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": support.VERIFY_TOKEN})
    assert resp.status == 200
    assert await resp.text() == "1158201444"


@pytest.mark.parametrize("params", [
    {"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": "wrong"},
    {"hub.mode": "unsubscribe", "hub.challenge": "1", "hub.verify_token": support.VERIFY_TOKEN},
    {"hub.challenge": "1"},
    {},
])
async def test_handshake_with_wrong_token_or_mode_is_403(client, params):
    assert (await client.get("/webhooks/whatsapp", params=params)).status == 403


# --- refusals --------------------------------------------------------------------------------------

async def test_missing_signature_is_403_and_nothing_stored(client, db):
    resp = await client.post("/webhooks/whatsapp", data=load("text.json"),
                             headers={"Content-Type": "application/json"})
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_signature_by_another_secret_is_403(client, db):
    assert (await post_meta(client, load("text.json"), secret="someone-elses-secret")).status == 403
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_signature_over_reserialised_json_is_refused(client):
    # Meta signs the bytes it sent; a body re-encoded after signing no longer matches.
    original = load("text.json")
    body, headers = meta_request(original)
    resp = await client.post("/webhooks/whatsapp", data=json.dumps(json.loads(original)).encode() + b" ",
                             headers=headers)
    assert resp.status == 403


async def test_malformed_json_is_400(client):
    resp = await post_meta(client, b"{not json")
    assert resp.status == 400
    assert "error" in await resp.json()


async def test_missing_message_id_is_400_naming_its_path(client, db):
    payload = support.whatsapp_text("hi", "wamid.X")
    del payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    resp = await post_meta(client, payload)
    assert resp.status == 400
    assert (await resp.json())["field"] == "entry[0].changes[0].value.messages[0].id"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_unknown_phone_number_id_is_404_and_nothing_stored(client, db):
    payload = support.whatsapp_text("hi", "wamid.U", phone_number_id="999999999")
    resp = await post_meta(client, payload)
    assert resp.status == 404
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_number_owned_by_another_app_is_403(client, db):
    tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('b', 'B', 'h') RETURNING id")
    await db.execute("INSERT INTO channels (tenant_id, kind, address, credentials) VALUES "
                     "($1, 'whatsapp_cloud', '555000111', $2)", tenant, {"app_secret": "tenant-b-secret-xyz"})
    # Signed by the default tenant's app but addressed to tenant B's number.
    resp = await post_meta(client, support.whatsapp_text("hi", "wamid.CROSS", phone_number_id="555000111"))
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_irrelevant_webhook_is_acknowledged(client, db):
    for name in ("object_not_waba.json", "field_not_messages.json"):
        assert (await post_meta(client, load(name))).status == 200
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_body_over_one_mebibyte_is_413(client):
    resp = await post_meta(client, b"{" + b" " * (1024 * 1024) + b"}")
    assert resp.status == 413


async def test_nul_characters_are_stored_as_replacement_characters(client, db):
    payload = support.whatsapp_text("a\x00b", "wamid.NUL1")
    body = json.dumps(payload).encode()
    assert b"\\u0000" in body  # JSON can only carry NUL escaped
    resp = await post_meta(client, body)
    assert resp.status == 200
    row = await db.fetchrow("SELECT body, raw FROM messages")
    assert row["body"] == "a\ufffdb"
    assert "\x00" not in json.dumps(row["raw"], ensure_ascii=False) and "a\ufffdb" in json.dumps(row["raw"],
                                                                                                 ensure_ascii=False)


async def test_known_senders_message_keeps_its_fields_through_the_group_commit(client, db):
    # The first message creates the user; the second is a known sender's: both must store the same
    # columns the same way.
    for wamid, name in (("wamid.G1", "Sheena Nelson"), ("wamid.G2", "Sheena N.")):
        payload = support.whatsapp_text("Is it in stock?", wamid, name=name)
        payload["entry"][0]["changes"][0]["value"]["messages"][0]["context"] = {"from": "15550783881",
                                                                                 "id": "wamid.OUT1"}
        assert (await post_meta(client, payload)).status == 200
    rows = await db.fetch("SELECT provider_message_id, provider_sent_at, details, media, raw FROM messages ORDER BY id")
    assert [r["provider_message_id"] for r in rows] == ["wamid.G1", "wamid.G2"]
    first, second = rows
    assert second["provider_sent_at"] == first["provider_sent_at"]
    assert second["provider_sent_at"].timestamp() == 1749416383
    assert second["details"] == first["details"] and "wamid.OUT1" in json.dumps(second["details"])
    assert second["media"] == [] and second["raw"]["message"]["id"] == "wamid.G2"
    assert await db.fetchval("SELECT profile_name FROM users") == "Sheena N."
    assert await db.fetchval("SELECT payload FROM events ORDER BY id DESC LIMIT 1") == {
        "provider": "meta", "channel_id": await db.fetchval("SELECT channel_id FROM conversations"),
        "type": "text", "keyword": None}
