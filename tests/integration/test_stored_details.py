"""Details of what the webhooks store and answer that no other test looked at (mutmut's survivors):
each media item's fields, the tenant of a status callback's history row, the answer to an ignored
status and to Meta's handshake."""

from __future__ import annotations

from tests import support
from tests.integration.test_twilio_webhook import _outbound, post_twilio, status_pairs
from tests.integration.test_whatsapp_webhook import load, post_meta

MEDIA = "https://api.twilio.com/2010-04-01/Accounts/{}/Messages/MM{}/Media/ME{}"


async def test_each_twilio_media_item_is_stored_with_its_type_and_url(client, db):
    sid = "MM" + "d1" * 16
    urls = [MEDIA.format(support.ACCOUNT_SID, "d1" * 16, str(i) * 32) for i in range(2)]
    pairs = [(k, v) for k, v in support.sms_pairs("photos of the damage", sid) if k != "NumMedia"]
    pairs += [("NumMedia", "2"), ("MediaContentType0", "image/jpeg"), ("MediaUrl0", urls[0]),
              ("MediaContentType1", "image/png"), ("MediaUrl1", urls[1])]
    assert (await post_twilio(client, pairs)).status == 200
    media = await db.fetchval("SELECT media FROM messages")
    assert media == [{"content_type": "image/jpeg", "url": urls[0]}, {"content_type": "image/png", "url": urls[1]}]


async def test_a_whatsapp_document_is_stored_with_its_id_hash_name_and_caption(client, db):
    assert (await post_meta(client, load("document.json"))).status == 200
    media = await db.fetchval("SELECT media FROM messages")
    assert media == [{"content_type": "application/pdf", "media_id": "1541870026318844",
                      "sha256": "Ze5qM1tV8nR3wK6yH0bP4sL7jC2fX9gD1aU5iO3vB6E=", "filename": "lease-2026-04.pdf",
                      "caption": "Signed lease"}]


async def test_a_status_callbacks_history_row_belongs_to_the_tenant_of_its_channel(client, db):
    resp = await post_twilio(client, status_pairs("SM" + "d2" * 16, "delivered"), path="/webhooks/twilio/status")
    assert resp.status == 200
    # The account's catch-all routes (and verifies) the callback; a status materialises no number.
    tenant = await db.fetchval("SELECT tenant_id FROM channels WHERE kind = 'twilio_sms' AND account_sid = $1",
                               support.ACCOUNT_SID)
    assert tenant is not None
    assert await db.fetchval("SELECT tenant_id FROM message_statuses") == tenant


async def test_a_status_we_do_not_track_is_answered_200_and_stores_nothing(client, db):
    # "received" is an inbound-only status: answered 200 so Twilio does not retry, and not kept.
    resp = await post_twilio(client, status_pairs("SM" + "d3" * 16, "received"), path="/webhooks/twilio/status")
    assert resp.status == 200
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 0


async def test_the_handshake_echoes_the_challenge_as_plain_text_and_refuses_with_a_json_error(client):
    params = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": support.VERIFY_TOKEN}
    resp = await client.get("/webhooks/whatsapp", params=params)
    assert (resp.status, resp.content_type, await resp.text()) == (200, "text/plain", "1158201444")
    resp = await client.get("/webhooks/whatsapp", params={**params, "hub.verify_token": "wrong"})
    assert resp.status == 403 and (await resp.json())["error"]


async def test_a_status_change_is_announced_with_its_message_conversation_and_error(client, db):
    sid = "SM" + "d4" * 16
    message_id = await _outbound(db, sid, "sent")
    pairs = status_pairs(sid, "undelivered", ErrorCode="30006", ErrorMessage="Landline or unreachable carrier")
    assert (await post_twilio(client, pairs, path="/webhooks/twilio/status")).status == 200
    event = await db.fetchrow("SELECT * FROM events WHERE type = 'message.undelivered'")
    conversation = await db.fetchval("SELECT conversation_id FROM messages WHERE id = $1", message_id)
    assert (event["message_id"], event["conversation_id"]) == (message_id, conversation)
    assert event["payload"] == {"error_code": "30006"}
    history = await db.fetchrow("SELECT error_code, error_message FROM message_statuses")
    assert tuple(history) == ("30006", "Landline or unreachable carrier")
    assert await db.fetchval("SELECT error_message FROM messages WHERE id = $1",
                             message_id) == "Landline or unreachable carrier"
