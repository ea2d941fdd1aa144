"""The pipeline with the OpenAI implementation: the real openai client against a local fake server."""

from __future__ import annotations

from decimal import Decimal

from tests.fakes.openai_server import reply, status
from tests.integration.test_agents import drain, say


def llm(openai_server) -> dict:
    return {"openai_api_key": "sk-test-key-123456", "openai_base_url": openai_server.base_url,
            "openai_max_retries": 0, "openai_timeout_s": 5.0}


async def _drain_llm(client, openai_server) -> int:
    from pydantic import SecretStr

    overrides = llm(openai_server)
    overrides["openai_api_key"] = SecretStr(overrides["openai_api_key"])
    return await drain(client, **overrides)


async def test_llm_decision_is_logged_with_model_tokens_and_cost(client, db, openai_server):
    await say(client, "Quiero reservar una cita para el jueves", 1)
    openai_server.script(reply({"intent": "booking", "confidence": 0.93, "language": "es"},
                               prompt_tokens=1000, completion_tokens=100))
    assert await _drain_llm(client, openai_server) == 1
    entry = await db.fetchrow("SELECT * FROM agent_actions_log WHERE agent = 'intent'")
    assert entry["implementation"] == "openai" and entry["model"] == "gpt-4o-mini"
    assert (entry["tokens_in"], entry["tokens_out"]) == (1000, 100)
    # gpt-4o-mini: $0.15 / M input tokens, $0.60 / M output tokens
    assert entry["cost_usd"] == Decimal("0.00021000")
    assert entry["output"]["intent"] == "booking" and entry["status"] == "ok"
    assert await db.fetchval("SELECT language FROM lead_memory") == "es"
    assert openai_server.requests[0].model == "gpt-4o-mini"


async def test_llm_error_falls_back_to_local_and_says_so_in_the_log(client, db, openai_server):
    await say(client, "what are your opening hours?", 1)
    openai_server.script(status(500))
    assert await _drain_llm(client, openai_server) == 1
    entry = await db.fetchrow("SELECT * FROM agent_actions_log WHERE agent = 'intent'")
    assert entry["status"] == "fallback" and entry["error"] == "http_500"
    assert entry["implementation"] in ("local", "rules")
    assert await db.fetchval("SELECT status FROM agent_tasks") == "done"


async def test_llm_opt_out_without_keyword_or_local_agreement_is_flagged_not_acted_on(client, db, openai_server):
    await say(client, "I'm good for now, thanks", 1)
    openai_server.script(reply({"intent": "opt_out", "confidence": 0.7, "language": "en"}))
    await _drain_llm(client, openai_server)
    assert await db.fetchval("SELECT consent_state FROM users") == "unknown"
    flagged = await db.fetchrow("SELECT * FROM agent_actions_log WHERE status = 'possible_opt_out'")
    assert flagged is not None and flagged["agent"] == "consent" and flagged["output"]["acted"] is False
    assert await db.fetchval("SELECT count(*) FROM message_queue") == 0


async def test_keyword_never_reaches_the_llm(client, db, openai_server):
    await say(client, "STOP", 1)
    await _drain_llm(client, openai_server)
    assert openai_server.requests == []
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_out"


async def test_llm_gets_the_latest_summary_and_recent_messages_not_the_whole_history(client, db, openai_server):
    for i in range(55):
        await say(client, f"note {i}: my dog Rex needs a grooming appointment", i)
    await drain(client)  # local pass: builds the summary at message 50
    assert await db.fetchval("SELECT count(*) FROM conversation_summaries") == 1
    await say(client, "so can we do saturday?", 100)
    openai_server.script(reply({"intent": "booking", "confidence": 0.9, "language": "en"}))
    await _drain_llm(client, openai_server)
    prompt = openai_server.requests[0].prompt_text
    assert "Summary so far" in prompt
    assert "note 54" in prompt and "note 3:" not in prompt
