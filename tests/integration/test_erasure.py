"""Erasing a conversation or a channel removes its messages even where immutable history names them."""

from __future__ import annotations

import pytest

from tests.integration.test_agents import drain, say


async def test_deleting_a_conversation_keeps_its_lead_history_and_only_unlinks_the_messages(client, db):
    await say(client, "hello, I'd like a quote", 1)
    await drain(client)
    assert await db.fetchval("SELECT count(*) FROM lead_actions WHERE message_id IS NOT NULL") >= 1
    await db.execute("DELETE FROM conversations")
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    actions = await db.fetch("SELECT action_type, message_id FROM lead_actions")
    assert actions and all(a["message_id"] is None for a in actions)


async def test_deleting_a_channel_cascades_through_its_conversations(client, db):
    await say(client, "hello", 1)
    await drain(client)
    await db.execute("DELETE FROM channels WHERE address <> '*'")
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_lead_actions_stay_immutable_otherwise(client, db):
    await say(client, "hello", 1)
    await drain(client)
    with pytest.raises(Exception, match="immutable"):
        await db.execute("UPDATE lead_actions SET message_id = NULL")  # its message still exists
    with pytest.raises(Exception, match="immutable"):
        await db.execute("UPDATE lead_actions SET actor = 'x'")
