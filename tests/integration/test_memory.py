"""Conversation memory: a stored summary every 50 messages."""

from __future__ import annotations

from tests.integration.test_agents import drain, say


async def test_summary_is_stored_every_fifty_messages(client, db):
    for i in range(49):
        await say(client, f"message {i}: I need a plumber for my kitchen sink", i)
    await drain(client)
    assert await db.fetchval("SELECT count(*) FROM conversation_summaries") == 0
    await say(client, "My name is Alex and I live at 12 Oak Street", 49)
    await drain(client)
    summary = await db.fetchrow("SELECT * FROM conversation_summaries")
    assert summary["message_count"] == 50 and summary["implementation"] == "local"
    assert summary["up_to_message_id"] == await db.fetchval("SELECT max(id) FROM messages")
    assert "Alex" in summary["summary"] or "sink" in summary["summary"]
    log = await db.fetchrow("SELECT * FROM agent_actions_log WHERE agent = 'memory'")
    assert log["action"] == "summarize" and log["status"] == "ok"
    for i in range(50, 100):
        await say(client, f"message {i}: still waiting on that quote", i)
    await drain(client)
    rows = await db.fetch("SELECT message_count FROM conversation_summaries ORDER BY id")
    counts = [r["message_count"] for r in rows]
    assert counts == [50, 50]
    # Once a conversation summary exists, the lead's summary carries the latest one before its last message.
    assert summary["summary"] in await db.fetchval("SELECT ai_summary FROM lead_memory")
