"""Agents end to end: webhook → task → classify → consent → replies → lead → decision log."""

from __future__ import annotations

import pytest

from agents import service
from services import appkeys
from tests import support
from tests.integration.test_twilio_webhook import post_twilio
from tests.support import sms_pairs

AUTH = {"Authorization": f"Bearer {support.API_KEY}"}


async def drain(client, *, settled: bool = True, **overrides) -> int:
    """Run one worker until no task is claimable; returns how many tasks it processed.

    Then, unless `settled` is False, fail if any task is not done: a task that failed (waiting for its
    retry), was dead-lettered or is still held by a lease would otherwise pass unnoticed, and so would
    whatever its failure left unwritten."""
    runtime = client.app[appkeys.RUNTIME]
    settings = runtime.settings.model_copy(update=overrides)
    worker = service.worker(settings, runtime.pool, runtime.dsn)
    while await worker.claim_once():
        pass
    if settled:
        await assert_settled(runtime.pool)
    return worker.processed


async def assert_settled(pool) -> None:
    """Every agent task is done: none failed, dead-lettered, stuck running or left unclaimed."""
    async with pool.acquire() as conn:
        unsettled = await conn.fetch("SELECT id, kind, status, attempts, last_error FROM agent_tasks "
                                     "WHERE status <> 'done' ORDER BY id")
    assert not unsettled, f"tasks left unsettled: {[dict(r) for r in unsettled]}"


async def say(client, text: str, n: int, from_: str = "+14155550101") -> None:
    resp = await post_twilio(client, sms_pairs(text, f"SM{n:032x}", from_=from_))
    assert resp.status == 200


async def test_message_is_classified_enriched_and_every_decision_logged(client, db):
    await say(client, "Hi, I'd like to book a cleaning for next Tuesday. My name is Dana Smith, dana@example.com", 1)
    assert await drain(client) == 1

    task = await db.fetchrow("SELECT status, attempts FROM agent_tasks")
    assert (task["status"], task["attempts"]) == ("done", 1)
    lead = await db.fetchrow("SELECT * FROM lead_memory")
    assert lead["intent"] == "booking"
    assert lead["name"] == "Dana Smith" and lead["email"] == "dana@example.com"
    assert lead["language"] == "en" and lead["urgency"] in ("medium", "high")
    assert 0 <= lead["confidence_score"] <= 1 and lead["ai_summary"]
    assert [h["value"] for h in lead["tone_history"]] == [lead["tone"]]
    assert lead["is_test"] is True  # 555-01XX numbers are reserved for fiction
    assert [r["action_type"] for r in await db.fetch("SELECT action_type FROM lead_actions")] == ["insert"]

    logs = {r["agent"]: r for r in await db.fetch("SELECT * FROM agent_actions_log")}
    assert set(logs) == {"intent", "enrichment"}
    intent = logs["intent"]
    assert intent["output"]["intent"] == "booking" and intent["implementation"] in ("local", "rules")
    assert intent["latency_ms"] >= 0 and intent["cost_usd"] == 0 and intent["status"] == "ok"
    assert intent["conversation_id"] and intent["message_id"]
    # PII is masked in the log, kept in the lead record.
    assert "dana@example.com" not in str(intent["input"]) and "+14155550101" not in str(intent["input"])
    assert "dana@example.com" not in str(logs["enrichment"]["output"])
    types = [r["type"] for r in await db.fetch("SELECT type FROM events ORDER BY id")]
    assert types == ["message.received", "lead.created", "intent.booking"]


async def test_histories_append_only_on_change(client, db):
    await say(client, "Do you have any openings this week?", 1)
    await say(client, "Do you have any openings next week?", 2)
    await say(client, "This is URGENT my tooth is killing me, I need to come in TODAY!!!", 3)
    await drain(client)
    lead = await db.fetchrow("SELECT * FROM lead_memory")
    assert lead["urgency"] == "high" and lead["urgency_history"][-1]["value"] == "high"
    for history in ("tone_history", "urgency_history", "confidence_history"):
        values = [h["value"] for h in lead[history]]
        assert all(a != b for a, b in zip(values, values[1:], strict=False)), (history, values)
        assert all("timestamp" in h for h in lead[history])


@pytest.mark.parametrize("text", ["please stop texting me", "remove me from your list",
                                  "no me manden más mensajes", "Stop. Thank you"])
async def test_natural_language_opt_out_opts_out_like_a_keyword(client, db, text):
    await say(client, text, 1)
    await drain(client)
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_out"
    change = await db.fetchrow("SELECT * FROM consent_changes")
    assert change["source"] == "classifier" and change["changed_by"] == "agent:intent"
    consent_log = await db.fetchrow("SELECT * FROM agent_actions_log WHERE agent = 'consent'")
    assert consent_log["action"] == "opt_out"
    [queued] = await db.fetch("SELECT * FROM message_queue")
    assert queued["reason"] == "opt_out_confirmation" and queued["status"] == "queued"


async def test_unsure_model_opt_out_is_flagged_for_an_operator_not_acted_on(client, db):
    await say(client, "Stop by anytime this week?", 1)
    await drain(client)
    assert await db.fetchval("SELECT consent_state FROM users") == "unknown"
    flagged = await db.fetchrow("SELECT * FROM agent_actions_log WHERE status = 'possible_opt_out'")
    assert flagged["agent"] == "consent" and flagged["output"]["acted"] is False
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'intent.possible_opt_out'") == 1


async def test_sure_model_opt_out_acts(client, db):
    await say(client, "Not interested, stop bothering me", 1)
    await drain(client)
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_out"


@pytest.mark.parametrize("text", ["I can stop by tomorrow", "cancel my appointment", "I'm good, thanks"])
async def test_look_alike_phrases_do_not_opt_out(client, db, text):
    await say(client, text, 1)
    await drain(client)
    assert await db.fetchval("SELECT consent_state FROM users") == "unknown"
    assert await db.fetchval("SELECT count(*) FROM message_queue") == 0


async def test_opt_out_gets_one_confirmation_and_nothing_after_it(client, db):
    await say(client, "STOP", 1)
    await say(client, "stop", 2)
    await say(client, "HELP", 3)
    await say(client, "please stop texting me", 4)
    await drain(client)
    rows = await db.fetch("SELECT reason FROM message_queue")
    assert [r["reason"] for r in rows] == ["opt_out_confirmation"]
    # And the database refuses anything else for this user, whoever tries.
    user, conv, tenant = await db.fetchrow("SELECT user_id, id, tenant_id FROM conversations")
    with pytest.raises(Exception, match="opted out"):
        await db.execute("INSERT INTO message_queue (tenant_id, conversation_id, user_id, channel_id, body, reason, "
                         "class) SELECT $1, $2, $3, channel_id, 'promo', 'agent_reply', 'marketing' "
                         "FROM conversations WHERE id = $2", tenant, conv, user)


async def test_start_after_stop_queues_an_opt_in_confirmation(client, db):
    await say(client, "STOP", 1)
    await drain(client)  # processed in time; a late pair confirms only the latest (tests/integration/test_consent.py)
    await say(client, "START", 2)
    await drain(client)
    reasons = [r["reason"] for r in await db.fetch("SELECT reason FROM message_queue ORDER BY id")]
    assert reasons == ["opt_out_confirmation", "opt_in_confirmation"]


async def test_help_queues_the_tenants_help_text(client, db):
    await db.execute("UPDATE tenants SET help_text = 'Acme Dental: call 555-0100. Reply STOP to opt out.'")
    await say(client, "HELP", 1)
    await drain(client)
    row = await db.fetchrow("SELECT * FROM message_queue")
    assert row["reason"] == "help" and row["body"].startswith("Acme Dental")


async def test_french_opt_out_confirmation_is_in_french(client, db):
    await say(client, "Arrêtez de m'envoyer des messages s'il vous plaît", 1)
    await drain(client)
    body = await db.fetchval("SELECT body FROM message_queue")
    assert body is not None and "désinscrit" in body


async def test_tenant_can_turn_masking_off(client, db):
    await db.execute("UPDATE tenants SET mask_pii = false")
    await say(client, "my email is dana@example.com", 1)
    await drain(client)
    assert "+14155550101" in str(await db.fetchval("SELECT input FROM agent_actions_log WHERE agent = 'intent'"))


async def test_tagging_a_lead_converted_then_reverting_needs_a_reason(client, db):
    await say(client, "I'm interested, what are your prices?", 1)
    await drain(client)
    lead_id = await db.fetchval("SELECT id FROM lead_memory")
    resp = await client.post(f"/api/leads/{lead_id}/tag", json={"tag": "Converted"}, headers=AUTH)
    assert resp.status == 200
    assert (await resp.json())["current_tag"] == "Converted"
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'lead.converted'") == 1
    resp = await client.post(f"/api/leads/{lead_id}/tag", json={"tag": "Active"}, headers=AUTH)
    assert resp.status == 400 and (await resp.json())["field"] == "reason"
    resp = await client.post(f"/api/leads/{lead_id}/tag", json={"tag": "Active", "reason": "tagged by mistake"},
                             headers=AUTH)
    assert resp.status == 200
    actions = await db.fetch("SELECT action_type, tag, conversion_outcome, reversion_reason FROM lead_actions "
                             "ORDER BY id")
    assert [(a["action_type"], a["tag"], a["conversion_outcome"]) for a in actions] == [
        ("insert", None, False), ("tag", "Converted", True), ("revert", "Active", False)]
    assert actions[-1]["reversion_reason"] == "tagged by mistake"
    with pytest.raises(Exception, match="immutable"):
        await db.execute("UPDATE lead_actions SET actor = 'x'")


@pytest.mark.parametrize(("body", "field"), [({"tag": "Hot"}, "tag"), ({}, "tag"), ({"tag": "Active", "x": 1}, "x")])
async def test_bad_tag_requests_are_400(client, db, body, field):
    await say(client, "hello", 1)
    await drain(client)
    lead_id = await db.fetchval("SELECT id FROM lead_memory")
    resp = await client.post(f"/api/leads/{lead_id}/tag", json=body, headers=AUTH)
    assert resp.status == 400 and (await resp.json())["field"] == field


async def test_lead_api_returns_histories_and_actions(client, db):
    await say(client, "what time do you open on saturday?", 1)
    await drain(client)
    body = await (await client.get("/api/leads", params={"phone": "+14155550101"}, headers=AUTH)).json()
    [lead] = body["items"]
    assert lead["intent"] == "question" and lead["actions"][0]["action_type"] == "insert"
    assert isinstance(lead["tone_history"], list)
    one = await (await client.get(f"/api/leads/{lead['id']}", headers=AUTH)).json()
    assert one["id"] == lead["id"]
    assert (await client.get("/api/leads/424242", headers=AUTH)).status == 404


async def test_agent_log_api_filters_and_paginates(client, db):
    for i in range(4):
        await say(client, f"question number {i}: do you take insurance?", i)
    await drain(client)
    first = await (await client.get("/api/agent-logs", params={"agent": "intent", "limit": "3"}, headers=AUTH)).json()
    assert len(first["items"]) == 3 and all(e["agent"] == "intent" for e in first["items"])
    rest = await (await client.get("/api/agent-logs", params={"agent": "intent", "cursor": first["next_cursor"]},
                                   headers=AUTH)).json()
    ids = [e["id"] for e in first["items"] + rest["items"]]
    assert len(ids) == 4 and ids == sorted(ids, reverse=True) and rest["next_cursor"] is None
    conv = first["items"][0]["conversation_id"]
    by_conv = await (await client.get("/api/agent-logs", params={"conversation_id": str(conv), "status": "ok",
                                                                 "since": "2000-01-01T00:00:00Z"},
                                      headers=AUTH)).json()
    assert len(by_conv["items"]) == 8
    assert (await client.get("/api/agent-logs", params={"status": "weird"}, headers=AUTH)).status == 400
    assert (await client.get("/api/agent-logs", params={"since": "yesterday"}, headers=AUTH)).status == 400
    none = await (await client.get("/api/agent-logs", params={"until": "2000-01-01T00:00:00Z"}, headers=AUTH)).json()
    assert none["items"] == []
