"""Lead histories: every change appends {value, timestamp}, oldest first; a repeat value appends nothing."""

from __future__ import annotations

from agents import leads
from services import appkeys
from tests.integration.test_agents import say

# (tone, urgency, confidence) as successive messages enrich the same lead.
STEPS = [
    ("neutral", "low", 0.5),
    ("friendly", "low", 0.6),  # tone and confidence change
    ("friendly", "high", 0.6),  # urgency changes
    ("frustrated", "high", 0.9),  # tone and confidence change
    ("frustrated", "high", 0.9),  # nothing changes
    ("neutral", "medium", 0.5),  # everything changes, back to earlier values
]


async def test_each_history_keeps_every_change_in_order_with_its_time(client, db):
    await say(client, "hello", 1)  # a user, conversation and message; the lead is made by the steps below
    msg = await db.fetchrow("SELECT m.id, m.tenant_id, c.user_id, c.id AS conversation_id FROM messages m "
                            "JOIN conversations c ON c.id = m.conversation_id")
    pool = client.app[appkeys.RUNTIME].pool
    for tone, urgency, confidence in STEPS:
        enrichment = leads.Enrichment(msg["tenant_id"], msg["user_id"], msg["conversation_id"], msg["id"], None,
                                      None, "en", "summary", "question", tone, urgency, confidence, True)
        async with pool.acquire() as conn, conn.transaction():  # one transaction per message, as the pipeline
            await leads.apply_many(conn, [enrichment], actor="test")

    lead = await db.fetchrow("SELECT * FROM lead_memory")
    assert [h["value"] for h in lead["tone_history"]] == ["neutral", "friendly", "frustrated", "neutral"]
    assert [h["value"] for h in lead["urgency_history"]] == ["low", "high", "medium"]
    assert [h["value"] for h in lead["confidence_history"]] == [0.5, 0.6, 0.9, 0.5]
    assert (lead["tone"], lead["urgency"], float(lead["confidence_score"])) == ("neutral", "medium", 0.5)
    for history in ("tone_history", "urgency_history", "confidence_history"):
        stamps = [h["timestamp"] for h in lead[history]]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), (history, stamps)
    # The tone's third entry is the fourth step's change, not the fifth's repeat: same time as that step's
    # confidence change.
    assert lead["tone_history"][2]["timestamp"] == lead["confidence_history"][2]["timestamp"]
    assert lead["tone_history"][1]["timestamp"] == lead["confidence_history"][1]["timestamp"]
    assert lead["urgency_history"][1]["timestamp"] not in {h["timestamp"] for h in lead["tone_history"]}

    actions = await db.fetch("SELECT action_type, changes FROM lead_actions WHERE actor = 'test' ORDER BY id")
    assert [(a["action_type"], sorted(a["changes"])) for a in actions] == [
        ("insert", ["confidence_score", "intent", "language", "tone", "urgency"]),
        ("update", ["confidence_score", "tone"]),
        ("update", ["urgency"]),
        ("update", ["confidence_score", "tone"]),
        ("update", ["confidence_score", "tone", "urgency"]),
    ]
    assert actions[1]["changes"]["tone"] == {"from": "neutral", "to": "friendly"}
