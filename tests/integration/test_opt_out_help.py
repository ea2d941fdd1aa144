"""After an opt-out, HELP gets no answer: the decision is logged as skipped and every task completes."""

from __future__ import annotations

import pytest

from tests.integration.test_agents import drain, say


@pytest.mark.parametrize("help_word", ["HELP", "info"])
async def test_help_after_an_opt_out_is_not_answered_and_its_task_completes(client, db, help_word):
    await say(client, "STOP", 1)
    await drain(client)  # the opt-out is processed first, on its own
    await say(client, help_word, 2)
    assert await drain(client) == 1  # and drain fails if the HELP task failed or was left behind

    assert [r["reason"] for r in await db.fetch("SELECT reason FROM message_queue")] == ["opt_out_confirmation"]
    help_id = await db.fetchval("SELECT id FROM messages WHERE provider_message_id = $1", f"SM{2:032x}")
    [skipped] = await db.fetch("SELECT * FROM agent_actions_log WHERE agent = 'responder' AND message_id = $1",
                               help_id)
    assert skipped["status"] == "skipped" and skipped["action"] == "queue_reply"
    assert skipped["output"] == {"queued": False, "reason": "user opted out"}
    assert await db.fetchval("SELECT status FROM agent_tasks WHERE message_id = $1", help_id) == "done"


async def test_help_in_the_same_batch_as_the_opt_out_completes_too(client, db):
    await say(client, "STOP", 1)
    await say(client, "HELP", 2)
    assert await drain(client) == 2
    assert [r["reason"] for r in await db.fetch("SELECT reason FROM message_queue")] == ["opt_out_confirmation"]
    assert await db.fetchval("SELECT count(*) FROM agent_actions_log WHERE status = 'skipped' "
                             "AND agent = 'responder'") == 1
