"""Lead histories append each change in order and keep the newest HISTORY_LIMIT entries."""

from __future__ import annotations

from datetime import datetime

from agents import leads
from services import appkeys
from tests.integration.test_agents import drain, say

TONES = ["friendly", "neutral", "formal", "frustrated"]
URGENCIES = ["low", "medium", "high"]


def _enrichment(row, i: int) -> leads.Enrichment:
    return leads.Enrichment(row["tenant_id"], row["user_id"], row["conversation_id"], row["message_id"], None, None,
                            "en", f"change {i}", "question", TONES[i % 4], URGENCIES[i % 3], (i % 90) / 100, True)


async def test_histories_keep_the_newest_hundred_changes_in_order(client, db):
    await say(client, "hello", 1)
    await drain(client)
    row = await db.fetchrow("SELECT c.tenant_id, c.user_id, c.id AS conversation_id, m.id AS message_id "
                            "FROM conversations c JOIN messages m ON m.conversation_id = c.id")
    pool = client.app[appkeys.RUNTIME].pool
    changes = 130
    assert changes > leads.HISTORY_LIMIT == 100
    for i in range(changes):
        async with pool.acquire() as conn, conn.transaction():
            await leads.apply_many(conn, [_enrichment(row, i)], actor="test")
        if i == 40:
            lead = await db.fetchrow("SELECT tone_history FROM lead_memory")
            # Appended, not overwritten: the first message's tone and every change since (i = 0 may repeat it).
            assert [h["value"] for h in lead["tone_history"]][-41:] == [TONES[j % 4] for j in range(41)]

    lead = await db.fetchrow("SELECT * FROM lead_memory")
    expected = {
        "tone_history": [TONES[i % 4] for i in range(changes)],
        "urgency_history": [URGENCIES[i % 3] for i in range(changes)],
        "confidence_history": [round((i % 90) / 100, 2) for i in range(changes)],
    }
    for history, values in expected.items():
        entries = lead[history]
        assert len(entries) == leads.HISTORY_LIMIT, history
        assert [float(h["value"]) if history == "confidence_history" else h["value"] for h in entries] \
            == values[-leads.HISTORY_LIMIT:], history
        stamps = [datetime.fromisoformat(h["timestamp"]) for h in entries]
        assert stamps == sorted(stamps), history
    assert (lead["tone"], lead["urgency"]) == (TONES[(changes - 1) % 4], URGENCIES[(changes - 1) % 3])


async def test_an_unchanged_value_adds_no_entry_even_when_the_history_is_full(client, db):
    await say(client, "hello", 1)
    await drain(client)
    row = await db.fetchrow("SELECT c.tenant_id, c.user_id, c.id AS conversation_id, m.id AS message_id "
                            "FROM conversations c JOIN messages m ON m.conversation_id = c.id")
    pool = client.app[appkeys.RUNTIME].pool
    for i in range(leads.HISTORY_LIMIT + 5):
        async with pool.acquire() as conn, conn.transaction():
            await leads.apply_many(conn, [_enrichment(row, i)], actor="test")
    full = await db.fetchval("SELECT tone_history FROM lead_memory")
    async with pool.acquire() as conn, conn.transaction():
        await leads.apply_many(conn, [_enrichment(row, leads.HISTORY_LIMIT + 4)], actor="test")  # the same again
    assert await db.fetchval("SELECT tone_history FROM lead_memory") == full
