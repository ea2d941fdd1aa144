"""Twilio inbound and status webhooks, end to end through the real app and a real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from tests import support
from tests.support import PUBLIC_BASE, sms_pairs, twilio_request


async def post_twilio(client, pairs, path="/webhooks/twilio", url=None, token=support.AUTH_TOKEN, headers=None):
    body, signed = twilio_request(pairs, path=path, url=url, token=token)
    signed.update(headers or {})
    return await client.post(path, data=body, headers=signed)


async def test_signed_sms_is_stored_with_user_conversation_event_and_task(client, db):
    resp = await post_twilio(client, sms_pairs("Hi, is Saturday free?", "SM" + "a" * 32))
    assert resp.status == 200
    assert resp.content_type == "text/xml"
    assert "<Response" in await resp.text()

    msg = await db.fetchrow("SELECT * FROM messages")
    assert msg["body"] == "Hi, is Saturday free?"
    assert msg["direction"] == "inbound" and msg["provider"] == "twilio" and msg["status"] == "received"
    assert msg["raw"]["ApiVersion"] == "2010-04-01" and msg["raw"]["ToCountry"] == "US"
    user = await db.fetchrow("SELECT * FROM users")
    assert user["phone"] == "+14155550101" and user["consent_state"] == "unknown"
    assert user["time_zone"] == "America/Los_Angeles"
    conv = await db.fetchrow("SELECT * FROM conversations")
    assert conv["user_id"] == user["id"] and msg["conversation_id"] == conv["id"]
    channel = await db.fetchrow("SELECT * FROM channels WHERE id = $1", conv["channel_id"])
    assert (channel["kind"], channel["address"]) == ("twilio_sms", "+14155550100")
    assert await db.fetchval("SELECT type FROM events WHERE message_id = $1", msg["id"]) == "message.received"
    task = await db.fetchrow("SELECT * FROM agent_tasks")
    assert task["message_id"] == msg["id"] and task["status"] == "pending"


async def test_duplicate_message_sid_is_stored_once(client, db):
    pairs = sms_pairs("hello", "SM" + "b" * 32)
    for _ in range(3):
        resp = await post_twilio(client, pairs)
        assert resp.status == 200
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
    assert await db.fetchval("SELECT count(*) FROM events") == 1
    assert await db.fetchval("SELECT count(*) FROM agent_tasks") == 1


async def test_concurrent_first_messages_from_new_number_make_one_user_and_conversation(client, db):
    sends = [post_twilio(client, sms_pairs(f"msg {i}", f"SM{i:032x}")) for i in range(20)]
    resps = await asyncio.gather(*sends)
    assert [r.status for r in resps] == [200] * 20
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    assert await db.fetchval("SELECT count(*) FROM conversations") == 1
    assert await db.fetchval("SELECT count(*) FROM messages") == 20


async def test_concurrent_redeliveries_are_stored_once(client, db):
    pairs = sms_pairs("same", "SM" + "c" * 32)
    resps = await asyncio.gather(*[post_twilio(client, pairs) for _ in range(10)])
    assert {r.status for r in resps} == {200}
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
    assert await db.fetchval("SELECT count(*) FROM agent_tasks") == 1


async def test_whatsapp_via_twilio_uses_whatsapp_channel_and_profile(client, db):
    pairs = [("SmsMessageSid", "SM" + "d" * 32), ("NumMedia", "0"), ("ProfileName", "Jane"),
             ("SmsSid", "SM" + "d" * 32), ("WaId", "15555550123"), ("SmsStatus", "received"),
             ("Body", "Olá"), ("To", "whatsapp:+14155238886"), ("NumSegments", "1"),
             ("ReferralNumMedia", "0"), ("MessageSid", "SM" + "d" * 32), ("AccountSid", support.ACCOUNT_SID),
             ("From", "whatsapp:+15555550123"), ("ApiVersion", "2010-04-01")]
    assert (await post_twilio(client, pairs)).status == 200
    user = await db.fetchrow("SELECT * FROM users")
    assert (user["phone"], user["wa_id"], user["profile_name"]) == ("+15555550123", "15555550123", "Jane")
    kind = await db.fetchval("SELECT ch.kind FROM conversations c JOIN channels ch ON ch.id = c.channel_id")
    assert kind == "twilio_whatsapp"
    assert await db.fetchval("SELECT body FROM messages") == "Olá"


# --- signatures: the cases users trip over -------------------------------------------------------

async def test_missing_signature_is_refused_and_nothing_stored(client, db):
    body, headers = twilio_request(sms_pairs("hi", "SM" + "e" * 32))
    del headers["X-Twilio-Signature"]
    resp = await client.post("/webhooks/twilio", data=body, headers=headers)
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_signature_with_wrong_token_is_refused(client, db):
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "e" * 32), token="not-the-token")
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_tampered_body_is_refused(client, db):
    pairs = sms_pairs("hi", "SM" + "e" * 32)
    body, headers = twilio_request(pairs)
    body = body.replace(b"Body=hi", b"Body=ho")
    resp = await client.post("/webhooks/twilio", data=body, headers=headers)
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_parameter_added_after_signing_is_refused(client, db):
    pairs = sms_pairs("hi", "SM" + "e" * 32)
    body, headers = twilio_request(pairs)
    resp = await client.post("/webhooks/twilio", data=body + b"&Injected=1", headers=headers)
    assert resp.status == 403


async def test_signature_over_internal_url_is_refused_when_public_base_url_is_set(client):
    # Twilio signs the public URL; a signature over our loopback address means someone else signed it.
    pairs = sms_pairs("hi", "SM" + "e" * 32)
    url = str(client.make_url("/webhooks/twilio"))
    resp = await post_twilio(client, pairs, url=url)
    assert resp.status == 403


@pytest.mark.parametrize("signed_url", [PUBLIC_BASE + ":443/webhooks/twilio", PUBLIC_BASE + "/webhooks/twilio"])
async def test_url_with_and_without_default_port_both_verify(client, signed_url):
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "f" * 32), url=signed_url)
    assert resp.status == 200


async def test_public_base_url_with_default_port_verifies_signature_without_it(make_client):
    client = await make_client(PUBLIC_BASE_URL="https://parley.example.com:443")
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "f" * 32), url=PUBLIC_BASE + "/webhooks/twilio")
    assert resp.status == 200


async def test_behind_proxy_trust_proxy_uses_forwarded_proto_and_host(make_client, db):
    client = await make_client(TRUST_PROXY=True, PUBLIC_BASE_URL="")
    url = "https://hooks.tenant.example/webhooks/twilio"
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.tenant.example"}
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "1" * 32), url=url, headers=forwarded)
    assert resp.status == 200
    assert await db.fetchval("SELECT count(*) FROM messages") == 1


async def test_forwarded_headers_are_ignored_without_trust_proxy(make_client):
    client = await make_client(PUBLIC_BASE_URL="")
    url = "https://hooks.tenant.example/webhooks/twilio"
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.tenant.example"}
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "2" * 32), url=url, headers=forwarded)
    assert resp.status == 403


async def test_signed_url_with_query_string_verifies(client):
    path = "/webhooks/twilio?tenant=acme&v=2"
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "3" * 32), path=path)
    assert resp.status == 200


async def test_repeated_parameter_names_are_all_signed(client, db):
    pairs = sms_pairs("hi", "SM" + "4" * 32) + [("Tag", "b"), ("Tag", "a")]
    assert (await post_twilio(client, pairs)).status == 200
    assert await db.fetchval("SELECT raw->'Tag' FROM messages") == ["b", "a"]


async def test_messaging_service_number_routes_to_the_service_channel(client, db):
    tenant = await db.fetchval(
        "INSERT INTO tenants (slug, name, help_text) VALUES ('acme', 'Acme', 'help') RETURNING id")
    service = "MG" + "9" * 32
    channel = await db.fetchval(
        "INSERT INTO channels (tenant_id, kind, address, account_sid, messaging_service_sid, credentials) "
        "VALUES ($1, 'twilio_sms', '+14155550199', $2, $3, $4) RETURNING id",
        tenant, support.ACCOUNT_SID, service, {"auth_token": support.AUTH_TOKEN})
    # A pool number of the service that has no channel row of its own.
    pairs = sms_pairs("hi", "SM" + "5" * 32, to="+14155550142", MessagingServiceSid=service)
    assert (await post_twilio(client, pairs)).status == 200
    row = await db.fetchrow("SELECT c.channel_id, c.tenant_id FROM conversations c")
    assert (row["channel_id"], row["tenant_id"]) == (channel, tenant)


async def test_request_claiming_an_unknown_account_is_refused(client, db):
    other = "AC" + "f" * 32
    pairs = [(k, other if k == "AccountSid" else v) for k, v in sms_pairs("hi", "SM" + "6" * 32)]
    resp = await post_twilio(client, pairs, token="some-other-accounts-token")
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_unknown_number_of_a_known_account_is_404_naming_to(client, db):
    # Only explicit numbers: no catch-all for the account.
    await db.execute("DELETE FROM channels WHERE address = '*'")
    tenant = await db.fetchval("SELECT id FROM tenants")
    await db.execute("INSERT INTO channels (tenant_id, kind, address, account_sid, credentials) "
                     "VALUES ($1, 'twilio_sms', '+14155550100', $2, $3)",
                     tenant, support.ACCOUNT_SID, {"auth_token": support.AUTH_TOKEN})
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "7" * 32, to="+14155550177"))
    assert resp.status == 404
    assert (await resp.json())["field"] == "To"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "7" * 32, to="+14155550100"))
    assert resp.status == 200


# --- malformed input ------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["MessageSid", "From", "To"])
async def test_missing_required_field_is_400_naming_it(client, db, missing):
    sid = "SM" + "8" * 32
    # Without MessageSid, SmsSid (its legacy twin) must go too, or it would stand in for it.
    dropped = {missing, "SmsSid", "SmsMessageSid"} if missing == "MessageSid" else {missing}
    pairs = [(k, v) for k, v in sms_pairs("hi", sid) if k not in dropped]
    resp = await post_twilio(client, pairs)
    assert resp.status == 400
    assert missing in (await resp.json())["error"]
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_json_body_is_400_naming_content_type(client):
    resp = await client.post("/webhooks/twilio", json={"Body": "hi"})
    assert resp.status == 400
    assert (await resp.json())["field"] == "Content-Type"


async def test_form_with_more_fields_than_the_limit_is_413_and_nothing_stored(client, db):
    pairs = sms_pairs("hi", "SM" + "9a" * 16) + [(f"X{n}", "") for n in range(1000)]
    resp = await post_twilio(client, pairs)
    assert resp.status == 413
    assert (await resp.json())["field"] == "body"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_form_in_an_unknown_charset_is_415(client, db):
    body, headers = twilio_request(sms_pairs("hi", "SM" + "9b" * 16))
    headers["Content-Type"] = "application/x-www-form-urlencoded; charset=no-such-charset"
    resp = await client.post("/webhooks/twilio", data=body, headers=headers)
    assert resp.status == 415
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_form_that_is_not_utf8_is_400_naming_the_body(client, db):
    body, headers = twilio_request(sms_pairs("hi", "SM" + "9c" * 16))
    resp = await client.post("/webhooks/twilio", data=body + b"&Extra=\xff", headers=headers)
    assert resp.status == 400
    assert (await resp.json())["field"] == "body"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_body_over_one_mebibyte_is_413(client, db):
    pairs = sms_pairs("x" * (1024 * 1024 + 10), "SM" + "9" * 32)
    resp = await post_twilio(client, pairs)
    assert resp.status == 413
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


# --- opt-out keywords -----------------------------------------------------------------------------

@pytest.mark.parametrize("word", ["STOP", "stop", " Stop ", "STOPALL", "unsubscribe", "Cancel", "END", "quit",
                                  "REVOKE", "optout", "opt out", "Stop!", "stop."])
async def test_opt_out_keyword_opts_user_out_in_the_webhook_transaction(client, db, word):
    assert (await post_twilio(client, sms_pairs(word, "SM" + "a1" * 16))).status == 200
    user = await db.fetchrow("SELECT * FROM users")
    assert user["consent_state"] == "opted_out"
    change = await db.fetchrow("SELECT * FROM consent_changes")
    msg_id = await db.fetchval("SELECT id FROM messages")
    assert (change["state"], change["source"], change["message_id"], change["changed_by"]) == \
        ("opted_out", "keyword", msg_id, "user")
    assert await db.fetchval("SELECT keyword FROM messages") == "opt_out"
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'consent.opted_out'") == 1


@pytest.mark.parametrize("text", ["STOP PLEASE", "I can stop by tomorrow", "cancel my appointment", "stopping"])
async def test_multi_word_or_embedded_keyword_is_not_a_keyword(client, db, text):
    assert (await post_twilio(client, sms_pairs(text, "SM" + "a2" * 16))).status == 200
    assert await db.fetchval("SELECT consent_state FROM users") == "unknown"
    assert await db.fetchval("SELECT count(*) FROM consent_changes") == 0


async def test_start_and_yes_opt_back_in_and_history_is_kept(client, db):
    for i, word in enumerate(["STOP", "START", "stop", "Yes"]):
        assert (await post_twilio(client, sms_pairs(word, f"SM{i:032x}"))).status == 200
    history = await db.fetch("SELECT state, keyword FROM consent_changes ORDER BY id")
    assert [(r["state"], r["keyword"]) for r in history] == [
        ("opted_out", "stop"), ("opted_in", "start"), ("opted_out", "stop"), ("opted_in", "yes")]
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_in"


async def test_yes_from_a_user_who_never_opted_out_is_an_ordinary_reply(client, db):
    assert (await post_twilio(client, sms_pairs("YES", "SM" + "a3" * 16))).status == 200
    assert await db.fetchval("SELECT count(*) FROM consent_changes") == 0
    assert await db.fetchval("SELECT keyword FROM messages") is None


async def test_help_is_recorded_as_a_help_request(client, db):
    assert (await post_twilio(client, sms_pairs("help", "SM" + "a4" * 16))).status == 200
    assert await db.fetchval("SELECT keyword FROM messages") == "help"
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'help.requested'") == 1
    assert await db.fetchval("SELECT consent_state FROM users") == "unknown"


async def test_opt_out_is_per_tenant(client, db):
    other = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('b', 'B', 'h') RETURNING id")
    other_sid = "AC" + "e" * 32
    await db.execute("INSERT INTO channels (tenant_id, kind, address, account_sid, credentials) VALUES "
                     "($1, 'twilio_sms', '+14155550188', $2, $3)", other, other_sid, {"auth_token": "tok-b-123456"})
    pairs_b = [(k, other_sid if k == "AccountSid" else v) for k, v in sms_pairs("hello", "SM" + "b1" * 16,
                                                                                  to="+14155550188")]
    assert (await post_twilio(client, pairs_b, token="tok-b-123456")).status == 200
    assert (await post_twilio(client, sms_pairs("STOP", "SM" + "b2" * 16))).status == 200
    states = dict(await db.fetch("SELECT tenant_id, consent_state FROM users"))
    assert states[other] == "unknown"
    assert list(states.values()).count("opted_out") == 1


# --- status callbacks -----------------------------------------------------------------------------

async def _outbound(db, sid: str, status: str = "queued") -> int:
    tenant = await db.fetchval("SELECT id FROM tenants")
    user = await db.fetchval("INSERT INTO users (tenant_id, phone) VALUES ($1, '+14155550101') RETURNING id", tenant)
    channel = await db.fetchval("SELECT id FROM channels WHERE kind = 'twilio_sms'")
    conv = await db.fetchval("INSERT INTO conversations (tenant_id, user_id, channel_id) VALUES ($1, $2, $3) "
                             "RETURNING id", tenant, user, channel)
    return await db.fetchval(
        "INSERT INTO messages (tenant_id, conversation_id, direction, provider, provider_message_id, "
        "message_type, body, status) VALUES ($1, $2, 'outbound', 'twilio', $3, 'text', 'hi', $4) RETURNING id",
        tenant, conv, sid, status)


def status_pairs(sid: str, status: str, **extra: str) -> list[tuple[str, str]]:
    pairs = [("MessageSid", sid), ("SmsSid", sid), ("MessageStatus", status), ("SmsStatus", status),
             ("AccountSid", support.ACCOUNT_SID), ("From", "+14155550100"), ("To", "+14155550101"),
             ("ApiVersion", "2010-04-01")]
    pairs.extend(extra.items())
    return pairs


async def test_status_callbacks_move_forward_only(client, db):
    sid = "SM" + "c1" * 16
    message_id = await _outbound(db, sid)
    for status in ["sent", "delivered", "sent", "queued"]:
        resp = await post_twilio(client, status_pairs(sid, status), path="/webhooks/twilio/status")
        assert resp.status == 200
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", message_id) == "delivered"
    # The second "sent" repeats the first: kept once (tests/integration/test_status_callbacks.py).
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 3


async def test_read_is_never_overwritten_by_late_sent_or_delivered(client, db):
    sid = "SM" + "c2" * 16
    message_id = await _outbound(db, sid)
    for status in ["read", "delivered", "sent"]:
        await post_twilio(client, status_pairs(sid, status), path="/webhooks/twilio/status")
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", message_id) == "read"


async def test_undelivered_keeps_its_error_code(client, db):
    sid = "SM" + "c3" * 16
    message_id = await _outbound(db, sid, "sent")
    resp = await post_twilio(client, status_pairs(sid, "undelivered", ErrorCode="30006"),
                             path="/webhooks/twilio/status")
    assert resp.status == 200
    row = await db.fetchrow("SELECT status, error_code FROM messages WHERE id = $1", message_id)
    assert (row["status"], row["error_code"]) == ("undelivered", "30006")
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'message.undelivered'") == 1


async def test_status_for_unknown_message_is_kept_for_later_and_answered_200(client, db):
    resp = await post_twilio(client, status_pairs("SM" + "c4" * 16, "delivered"), path="/webhooks/twilio/status")
    assert resp.status == 200
    assert await db.fetchval("SELECT status FROM message_statuses") == "delivered"


async def test_unsigned_status_callback_is_refused(client, db):
    body, headers = twilio_request(status_pairs("SM" + "c5" * 16, "delivered"), path="/webhooks/twilio/status")
    headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
    resp = await client.post("/webhooks/twilio/status", data=body, headers=headers)
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 0


async def test_known_senders_new_profile_name_is_recorded(client, db):
    base = [("WaId", "15555550123"), ("From", "whatsapp:+15555550123"), ("To", "whatsapp:+14155238886")]
    for i, name in enumerate(["Jane", "Jane D."]):
        pairs = [(k, v) for k, v in sms_pairs(f"hi {i}", f"SM{i:032x}") if k not in ("From", "To")]
        assert (await post_twilio(client, pairs + base + [("ProfileName", name)])).status == 200
    assert await db.fetchval("SELECT profile_name FROM users") == "Jane D."
    assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_redelivery_of_a_known_senders_message_changes_nothing(client, db):
    await post_twilio(client, sms_pairs("first", "SM" + "d1" * 16))
    pairs = sms_pairs("second", "SM" + "d2" * 16)
    await post_twilio(client, pairs)
    before = await db.fetchrow("SELECT last_message_at, last_inbound_at FROM conversations")
    assert (await post_twilio(client, pairs)).status == 200
    after = await db.fetchrow("SELECT last_message_at, last_inbound_at FROM conversations")
    assert before == after
    assert await db.fetchval("SELECT count(*) FROM messages") == 2
    assert await db.fetchval("SELECT count(*) FROM agent_tasks") == 2


@pytest.mark.parametrize("writers", [1, 3])
async def test_known_senders_concurrent_messages_are_group_committed_each_exactly_once(client, db, writers):
    from services import appkeys
    from services.channels import twilio
    from services.inbound.batcher import Batcher

    senders = [f"+1415555{n:04d}" for n in range(1100, 1105)]
    for i, sender in enumerate(senders):  # first contact: creates the users
        assert (await post_twilio(client, sms_pairs("hello", f"SM{i:032x}", from_=sender))).status == 200
    runtime = client.app[appkeys.RUNTIME]
    channel = await client.app[appkeys.DIRECTORY].route_twilio(
        twilio.parse_inbound(sms_pairs("x", "SM" + "0" * 32)).channel_kind, "+14155550100", None,
        support.ACCOUNT_SID)
    batcher = Batcher(runtime.pool, writers=writers)
    batcher.start()
    try:
        msgs = [twilio.parse_inbound(sms_pairs(f"m{n}", f"SM{100 + n:032x}", from_=senders[n % 5]))
                for n in range(50)]
        msgs += msgs[:7]  # redeliveries inside the same batch
        waiting = asyncio.gather(*[batcher.submit(channel, m, None, 5) for m in msgs])
        await asyncio.sleep(0)  # every submit has queued its message; none is answered yet
        assert batcher.in_flight == 57 and batcher.saturated()  # what the agents in `serve` give way to
        results = await waiting
    finally:
        await batcher.stop()
    assert batcher.in_flight == 0
    # Everything queued before the writers ran went in two statements per lane at most (half of what
    # was waiting, then the rest: see batch_size); a sender has one lane.
    assert 1 <= batcher.batches <= 2 * writers
    stored = [r for r in results if r is not None and r.message_id is not None]
    assert len(stored) == 50 and all(r is not None for r in results)
    assert [r.message_id for r in results[50:]] == [None] * 7
    assert await db.fetchval("SELECT count(*) FROM messages") == 55
    assert await db.fetchval("SELECT count(*) FROM agent_tasks") == 55
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'message.received'") == 55
    assert await db.fetchval("SELECT count(*) FROM conversations") == 5
    # Ids follow arrival order within each conversation, so the agents work through it in order.
    for sender in senders:
        bodies = [r["body"] for r in await db.fetch(
            "SELECT m.body FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "JOIN users u ON u.id = c.user_id WHERE u.phone = $1 AND m.body <> 'hello' ORDER BY m.id", sender)]
        assert bodies == sorted(bodies, key=lambda b: int(b[1:]))


async def test_stopping_the_batcher_first_writes_what_is_queued(client, db):
    from services import appkeys
    from services.channels import twilio
    from services.inbound.batcher import Batcher

    assert (await post_twilio(client, sms_pairs("hello", "SM" + "e2" * 16))).status == 200  # a known sender
    channel = await client.app[appkeys.DIRECTORY].route_twilio(
        twilio.parse_inbound(sms_pairs("x", "SM" + "0" * 32)).channel_kind, "+14155550100", None,
        support.ACCOUNT_SID)
    batcher = Batcher(client.app[appkeys.RUNTIME].pool, writers=2)
    batcher.start()
    msgs = [twilio.parse_inbound(sms_pairs(f"q{n}", f"SM{0xe3000 + n:032x}")) for n in range(20)]
    waiting = asyncio.gather(*[batcher.submit(channel, m, None, 5) for m in msgs])
    await asyncio.sleep(0)  # queued, not yet written
    await batcher.stop()
    assert waiting.done()
    assert all(r is not None and r.message_id is not None for r in waiting.result())
    assert await db.fetchval("SELECT count(*) FROM messages") == 21


async def test_new_sender_in_a_batch_is_created_by_the_group_commit(client, db):
    from services import appkeys
    from services.channels import twilio

    batcher = client.app[appkeys.BATCHER]
    channel = await client.app[appkeys.DIRECTORY].route_twilio(
        twilio.parse_inbound(sms_pairs("x", "SM" + "0" * 32)).channel_kind, "+14155550100", None,
        support.ACCOUNT_SID)
    written = await batcher.submit(channel, twilio.parse_inbound(sms_pairs("hi", "SM" + "e1" * 16)), None, 5)
    assert written.message_id == await db.fetchval("SELECT id FROM messages")
    assert written.user_id == await db.fetchval("SELECT id FROM users WHERE phone = '+14155550101'")
    assert await db.fetchval("SELECT time_zone FROM users") == "America/Los_Angeles"


async def test_nul_characters_are_stored_as_replacement_characters(client, db):
    # PostgreSQL text cannot hold NUL: such a message used to fail its write (and its whole batch).
    for sid in ("SM" + "f0" * 16, "SM" + "f1" * 16):  # the first creates the user; the second finds it
        resp = await post_twilio(client, sms_pairs("a\x00b", sid) + [("X\x00Extra", "\x00")])
        assert resp.status == 200
    rows = await db.fetch("SELECT body, raw FROM messages ORDER BY id")
    assert [r["body"] for r in rows] == ["a\ufffdb", "a\ufffdb"]
    assert all(r["raw"]["Body"] == "a\ufffdb" and r["raw"]["X\ufffdExtra"] == "\ufffd" for r in rows)


async def test_count_beyond_the_databases_integer_is_400_naming_it(client, db):
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "f2" * 16) + [("NumSegments", "99999999999")])
    assert resp.status == 400
    assert (await resp.json())["field"] == "NumSegments"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_a_message_the_database_refuses_does_not_fail_the_webhooks_batched_with_it(client, db, caplog):
    # A stand-in for any row the database refuses (a constraint added later, say).
    await db.execute("""
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.body = 'poison' THEN RAISE EXCEPTION 'refused'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_poison();
    """)
    assert (await post_twilio(client, sms_pairs("hello", "SM" + "f3" * 16))).status == 200  # a known sender
    bodies = [f"m{n}" for n in range(12)]
    bodies[5] = "poison"
    resps = await asyncio.gather(*[post_twilio(client, sms_pairs(b, f"SM{0xf4000 + n:032x}"))
                                   for n, b in enumerate(bodies)])
    statuses = [r.status for r in resps]
    assert statuses[5] == 500 and statuses[:5] + statuses[6:] == [200] * 11
    stored = {r["body"] for r in await db.fetch("SELECT body FROM messages")}
    assert stored == {"hello", *bodies} - {"poison"}
    assert await db.fetchval("SELECT count(*) FROM agent_tasks") == 12
    # The poison really shared a batch with others, which were then written one by one.
    [split] = [r for r in caplog.records if r.getMessage().startswith("inbound batch failed; writing")]
    assert split.messages > 1


async def test_every_stored_message_is_logged_with_its_ids(client, db, caplog):
    caplog.set_level("INFO", logger="parley.inbound")
    assert (await post_twilio(client, sms_pairs("first", "SM" + "f5" * 16))).status == 200  # a new sender
    sids = [f"SM{0xf6000 + n:032x}" for n in range(8)]
    resps = await asyncio.gather(*[post_twilio(client, sms_pairs(f"m{n}", sid)) for n, sid in enumerate(sids)])
    assert [r.status for r in resps] == [200] * 8
    assert (await post_twilio(client, sms_pairs("m0", sids[0]))).status == 200  # a redelivery

    stored = {r["provider_message_id"]: (r["id"], r["conversation_id"])
              for r in await db.fetch("SELECT id, conversation_id, provider_message_id FROM messages")}
    logged: dict[str, tuple[int, int]] = {}
    duplicates: list[str] = []
    for record in caplog.records:
        if record.getMessage() == "inbound stored":
            for m in record.messages:  # a group commit logs every message it stored
                logged[m["provider_message_id"]] = (m["message_id"], m["conversation_id"])
        elif record.getMessage() == "inbound duplicate":
            duplicates += [m["provider_message_id"] for m in record.messages]
    assert logged == stored
    assert duplicates == [sids[0]]
    # Ids, never the sender's phone number.
    assert all("+1415555" not in str(vars(r)) for r in caplog.records if r.name == "parley.inbound")
