"""Status callbacks: kept once each, and only ever applied to the verifying tenant's messages."""

from __future__ import annotations

from tests import support
from tests.support import meta_request, twilio_request

B_ACCOUNT = "AC" + "b" * 32
B_NUMBER = "+14155550188"
B_TOKEN = "tenant-b-auth-token-5e1d"
STATUS = "/webhooks/twilio/status"


async def post_status(client, pairs, token=support.AUTH_TOKEN):
    body, headers = twilio_request(pairs, path=STATUS, token=token)
    return await client.post(STATUS, data=body, headers=headers)


def status_pairs(sid: str, status: str, account_sid: str = support.ACCOUNT_SID, from_: str = "+14155550100",
                 **extra: str) -> list[tuple[str, str]]:
    pairs = [("MessageSid", sid), ("SmsSid", sid), ("MessageStatus", status), ("SmsStatus", status),
             ("AccountSid", account_sid), ("From", from_), ("To", "+14155550101"), ("ApiVersion", "2010-04-01")]
    pairs.extend(extra.items())
    return pairs


async def outbound(db, tenant: int, channel: int, provider: str, sid: str, status: str = "sent") -> int:
    user = await db.fetchval("INSERT INTO users (tenant_id, phone) VALUES ($1, '+14155550101') "
                             "ON CONFLICT (tenant_id, phone) WHERE phone IS NOT NULL "
                             "DO UPDATE SET phone = EXCLUDED.phone "
                             "RETURNING id", tenant)
    conv = await db.fetchval("INSERT INTO conversations (tenant_id, user_id, channel_id) VALUES ($1, $2, $3) "
                             "RETURNING id", tenant, user, channel)
    return int(await db.fetchval(
        "INSERT INTO messages (tenant_id, conversation_id, direction, provider, provider_message_id, "
        "message_type, body, status) VALUES ($1, $2, 'outbound', $3, $4, 'text', 'hi', $5) RETURNING id",
        tenant, conv, provider, sid, status))


async def default_channel(db, kind: str = "twilio_sms") -> tuple[int, int]:
    row = await db.fetchrow("SELECT tenant_id, id FROM channels WHERE kind = $1 ORDER BY id LIMIT 1", kind)
    return row["tenant_id"], row["id"]


async def test_a_replayed_status_callback_adds_no_row_and_emits_no_second_event(client, db):
    tenant, channel = await default_channel(db)
    message_id = await outbound(db, tenant, channel, "twilio", "SM" + "d1" * 16)
    for _ in range(3):
        assert (await post_status(client, status_pairs("SM" + "d1" * 16, "delivered"))).status == 200
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", message_id) == "delivered"
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 1
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'message.delivered'") == 1


async def test_a_replayed_failure_keeps_one_row_and_one_event(client, db):
    tenant, channel = await default_channel(db)
    await outbound(db, tenant, channel, "twilio", "SM" + "d2" * 16)
    pairs = status_pairs("SM" + "d2" * 16, "undelivered", ErrorCode="30006")
    for _ in range(2):
        assert (await post_status(client, pairs)).status == 200
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 1
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'message.undelivered'") == 1


async def test_a_replayed_meta_status_adds_no_row_and_emits_no_second_event(client, db):
    tenant, channel = await default_channel(db, "whatsapp_cloud")
    await outbound(db, tenant, channel, "meta", "wamid.OUT9")
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550783881", "phone_number_id": support.PHONE_NUMBER_ID},
             "statuses": [{"id": "wamid.OUT9", "status": "delivered", "timestamp": "1749416383",
                           "recipient_id": "14155550101"}]}
    payload = {"object": "whatsapp_business_account",
               "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]}
    for _ in range(2):
        body, headers = meta_request(payload)
        assert (await client.post("/webhooks/whatsapp", data=body, headers=headers)).status == 200
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 1
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'message.delivered'") == 1


async def test_a_status_callback_touches_only_the_verifying_tenants_messages(client, db):
    b_tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('b', 'B', 'h') RETURNING id")
    b_channel = await db.fetchval("INSERT INTO channels (tenant_id, kind, address, account_sid, credentials) "
                                  "VALUES ($1, 'twilio_sms', $2, $3, $4) RETURNING id",
                                  b_tenant, B_NUMBER, B_ACCOUNT, {"auth_token": B_TOKEN})
    sid = "SM" + "d3" * 16
    message_id = await outbound(db, b_tenant, b_channel, "twilio", sid)

    # Tenant A, verified as A, reports on B's message id: kept in A's history, B's message untouched.
    assert (await post_status(client, status_pairs(sid, "undelivered", ErrorCode="30006"))).status == 200
    row = await db.fetchrow("SELECT status, error_code FROM messages WHERE id = $1", message_id)
    assert (row["status"], row["error_code"]) == ("sent", None)
    assert await db.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", b_tenant) == 0
    assert await db.fetchval("SELECT tenant_id FROM message_statuses") != b_tenant

    # B's own callback for the same status is still recorded and applied: A's row did not pre-empt it.
    pairs = status_pairs(sid, "undelivered", account_sid=B_ACCOUNT, from_=B_NUMBER, ErrorCode="30006")
    assert (await post_status(client, pairs, token=B_TOKEN)).status == 200
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", message_id) == "undelivered"
    assert await db.fetchval("SELECT count(*) FROM message_statuses WHERE tenant_id = $1", b_tenant) == 1
    assert await db.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", b_tenant) == 1


async def test_a_status_callback_signed_with_another_tenants_token_is_refused(client, db):
    tenant, channel = await default_channel(db)
    message_id = await outbound(db, tenant, channel, "twilio", "SM" + "d4" * 16)
    # B (a token of its own, on the same machine) cannot report on A's number.
    b_tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('b', 'B', 'h') RETURNING id")
    await db.execute("INSERT INTO channels (tenant_id, kind, address, account_sid, credentials) "
                     "VALUES ($1, 'twilio_sms', $2, $3, $4)", b_tenant, B_NUMBER, B_ACCOUNT, {"auth_token": B_TOKEN})
    resp = await post_status(client, status_pairs("SM" + "d4" * 16, "failed"), token=B_TOKEN)
    assert resp.status == 403
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", message_id) == "sent"
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 0


async def test_a_status_callback_of_an_unknown_account_is_refused(client, db):
    resp = await post_status(client, status_pairs("SM" + "d5" * 16, "delivered", account_sid="AC" + "e" * 32),
                             token="some-other-token")
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 0


async def test_a_status_callback_without_a_from_number_is_recorded_through_the_catch_all(client, db):
    tenant, channel = await default_channel(db)
    message_id = await outbound(db, tenant, channel, "twilio", "SM" + "d6" * 16)
    pairs = [(k, v) for k, v in status_pairs("SM" + "d6" * 16, "delivered") if k != "From"]
    assert (await post_status(client, pairs)).status == 200
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", message_id) == "delivered"
