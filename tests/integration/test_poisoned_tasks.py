"""One bad task harms nobody else: not a task that kills its worker, not an outcome the database refuses."""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
import pytest

from agents import service, worker
from services import appkeys
from tests.fakes.openai_server import delay, reply
from tests.integration.test_agents import say
from tests.integration.test_worker import _wait_for, _worker_process

# A second tenant's conversations, written the way ingest writes them (message, then its task).
SECOND_TENANT = """
WITH t AS (INSERT INTO tenants (slug, name, help_text) VALUES ('second', 'Second', 'Reply STOP to stop.')
           RETURNING id),
ch AS (INSERT INTO channels (tenant_id, kind, address, account_sid, credentials)
       SELECT id, 'twilio_sms', '+14155550199', 'AC0123456789abcdef0123456789abcdef', '{}' FROM t
       RETURNING id, tenant_id),
u AS (INSERT INTO users (tenant_id, phone)
      SELECT ch.tenant_id, '+1415555' || lpad((200 + g)::text, 4, '0') FROM ch, generate_series(1, $1) g
      RETURNING id, tenant_id, phone)
INSERT INTO conversations (tenant_id, user_id, channel_id) SELECT u.tenant_id, u.id, ch.id FROM u, ch
"""
SECOND_TENANT_MESSAGES = """
WITH c AS (
    SELECT cv.id, cv.tenant_id, row_number() OVER (ORDER BY cv.id) AS n
    FROM conversations cv JOIN tenants t ON t.id = cv.tenant_id WHERE t.slug = 'second'
), m AS (
    INSERT INTO messages (tenant_id, conversation_id, direction, provider, provider_message_id, message_type,
                          body, status)
    SELECT c.tenant_id, c.id, 'inbound', 'twilio', 'SMsecond' || c.n, 'text', b.body, 'received'
    FROM c JOIN unnest($1::text[]) WITH ORDINALITY AS b (body, n) USING (n)
    RETURNING id, tenant_id, conversation_id
)
INSERT INTO agent_tasks (tenant_id, conversation_id, message_id, kind)
SELECT tenant_id, conversation_id, id, 'process_message' FROM m ORDER BY id
"""


async def test_a_task_that_kills_every_worker_is_dead_lettered_and_its_conversation_moves_on(
        client, db, database_url, openai_server):
    await say(client, "Can I get a quote for a kitchen remodel?", 1)
    await say(client, "what are your hours?", 2)  # same conversation: waits behind the poisoned task
    poisoned, after = [r["id"] for r in await db.fetch("SELECT id FROM agent_tasks ORDER BY id")]
    await db.execute("UPDATE agent_tasks SET max_attempts = 2")
    # Each attempt hangs in the LLM call and its worker process is killed there, as by the OOM killer.
    for attempt in (1, 2):
        openai_server.script(delay(60, reply({"intent": "question", "confidence": 0.9, "language": "en"})))
        proc = _worker_process(database_url, OPENAI_API_KEY="sk-test-key-123456",
                               OPENAI_BASE_URL=openai_server.base_url, OPENAI_TIMEOUT_S="60",
                               PARLEY_TASK_LEASE_S="1")
        try:
            deadline = time.monotonic() + 30
            while len(openai_server.requests) < attempt and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(openai_server.requests) == attempt, "the worker never reached the LLM"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=20)
        task = await db.fetchrow("SELECT status, attempts FROM agent_tasks WHERE id = $1", poisoned)
        assert (task["status"], task["attempts"]) == ("running", attempt)

    # A healthy worker (local classifier) finds the lease lapsed on the last attempt: it buries the task
    # instead of running it a third time, then works through the rest of the conversation.
    proc = _worker_process(database_url, PARLEY_TASK_LEASE_S="1")
    try:
        await _wait_for(db, f"SELECT status FROM agent_tasks WHERE id = {after}", "done", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    task = await db.fetchrow("SELECT status, attempts, finished_at FROM agent_tasks WHERE id = $1", poisoned)
    assert (task["status"], task["attempts"]) == ("dead", 2) and task["finished_at"] is not None
    letter = await db.fetchrow("SELECT * FROM event_dead_letters")
    assert letter["agent_task_id"] == poisoned and letter["attempts"] == 2 and letter["status"] == "dead"
    assert "worker lost on attempt 2 of 2" in letter["error"]
    assert letter["payload"]["message_id"] is not None
    # The poisoned message was never processed; the next one was, once.
    logged = await db.fetch("SELECT agent_task_id FROM agent_actions_log WHERE agent = 'intent'")
    assert [r["agent_task_id"] for r in logged] == [after]


async def test_a_claim_that_only_buries_reports_it_so_the_loop_claims_the_next_task_at_once(client, db):
    await say(client, "first", 1)
    await say(client, "second", 2)
    first, second = [r["id"] for r in await db.fetch("SELECT id FROM agent_tasks ORDER BY id")]
    # The first task's last attempt was lost with its worker (an earlier attempt had failed outright).
    await db.execute("UPDATE agent_tasks SET status = 'running', attempts = 3, max_attempts = 3, locked_by = 'gone', "
                     "last_error = 'RuntimeError: boom', lease_expires_at = now() - interval '1 second' "
                     "WHERE id = $1", first)
    runtime = client.app[appkeys.RUNTIME]
    w = service.worker(runtime.settings, runtime.pool, runtime.dsn)
    assert await w.claim_once() == 1  # buried, nothing run
    assert w.processed == 0
    assert await db.fetchval("SELECT status FROM agent_tasks WHERE id = $1", second) == "pending"
    assert await w.claim_once() == 1
    assert await db.fetchval("SELECT status FROM agent_tasks WHERE id = $1", second) == "done"
    letter = await db.fetchrow("SELECT error, attempts FROM event_dead_letters WHERE agent_task_id = $1", first)
    assert letter["attempts"] == 3
    assert letter["error"] == "worker lost on attempt 3 of 3 (its lease expired): earlier error: RuntimeError: boom"


async def test_a_lapsed_lease_with_attempts_left_is_claimed_again_not_buried(client, db):
    await say(client, "hello", 1)
    await db.execute("UPDATE agent_tasks SET status = 'running', attempts = 1, max_attempts = 2, locked_by = 'gone', "
                     "lease_expires_at = now() - interval '1 second'")
    runtime = client.app[appkeys.RUNTIME]
    assert await service.worker(runtime.settings, runtime.pool, runtime.dsn).claim_once() == 1
    task = await db.fetchrow("SELECT status, attempts FROM agent_tasks")
    assert (task["status"], task["attempts"]) == ("done", 2)
    assert await db.fetchval("SELECT count(*) FROM event_dead_letters") == 0


POISON_TRIGGERS = {
    # The decision log is written for the whole batch in one executemany.
    "decision log": ("agent_actions_log", "NEW.input->>'text' LIKE '%poison%'"),
    # Leads are upserted for the whole batch in one statement.
    "lead upsert": ("lead_memory", "NEW.ai_summary LIKE '%poison%'"),
}


@pytest.mark.parametrize("where", sorted(POISON_TRIGGERS))
async def test_one_outcome_the_database_refuses_fails_only_its_own_task_across_tenants(client, db, where):
    table, condition = POISON_TRIGGERS[where]
    await db.execute(f"""
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF {condition} THEN RAISE EXCEPTION 'poisoned row refused'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON {table}
            FOR EACH ROW EXECUTE FUNCTION refuse_poison();""")
    # Ten conversations of the default tenant through the webhook, ten of a second tenant; the poisoned
    # message is the second tenant's, in the middle of the batch.
    for i in range(10):
        await say(client, f"do you have an opening on day {i}?", i, from_=f"+141555501{10 + i}")
    await db.execute(SECOND_TENANT, 10)
    bodies = [f"what does treatment {i} cost?" for i in range(10)]
    bodies[4] = "is this a poison control line?"
    await db.execute(SECOND_TENANT_MESSAGES, bodies)
    assert await db.fetchval("SELECT count(DISTINCT tenant_id) FROM agent_tasks") == 2

    runtime = client.app[appkeys.RUNTIME]
    w = service.worker(runtime.settings, runtime.pool, runtime.dsn)
    assert await w.claim_once() == 20  # one batch: every task claimed together
    rows = await db.fetch("SELECT m.body, t.status, t.attempts, t.last_error FROM agent_tasks t "
                          "JOIN messages m ON m.id = t.message_id")
    done = [r["body"] for r in rows if r["status"] == "done"]
    [bad] = [r for r in rows if r["status"] != "done"]
    assert len(done) == 19 and w.processed == 19
    assert (bad["body"], bad["status"], bad["attempts"]) == ("is this a poison control line?", "pending", 1)
    assert "poisoned row refused" in bad["last_error"]
    # Everything the 19 decided is committed, in both tenants; nothing of the poisoned one.
    assert await db.fetchval("SELECT count(*) FROM lead_memory") == 19
    assert await db.fetchval("SELECT count(DISTINCT tenant_id) FROM lead_memory") == 2
    assert await db.fetchval("SELECT count(*) FROM agent_actions_log WHERE agent = 'intent'") == 19

    # Retried alone, it keeps failing until it is dead-lettered; nobody else is touched again.
    w.backoff = lambda attempts: 0.0
    while await db.fetchval("SELECT status FROM agent_tasks WHERE status <> 'done'") == "pending":
        await db.execute("UPDATE agent_tasks SET run_at = now() WHERE status = 'pending'")
        assert await w.claim_once() == 1
    letter = await db.fetchrow("SELECT * FROM event_dead_letters")
    assert letter["attempts"] == 5 and "poisoned row refused" in letter["error"]
    assert await db.fetchval("SELECT count(*) FROM agent_tasks WHERE status = 'done'") == 19


async def test_a_database_that_cannot_be_reached_fails_the_batch_without_blaming_an_outcome(client, db):
    await say(client, "hello", 1)
    await say(client, "hello again", 2, from_="+14155550102")
    runtime = client.app[appkeys.RUNTIME]
    pipeline = service.pipeline(runtime.settings)
    commits = 0
    real = pipeline._commit

    async def unreachable(pool, claim, outcomes):
        nonlocal commits
        commits += 1
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    pipeline._commit = unreachable  # type: ignore[method-assign]
    w = worker.Worker(runtime.pool, runtime.dsn, pipeline, worker_id="offline")
    assert await w.claim_once() == 2
    assert commits == 1  # not split into halves: no outcome is to blame
    assert [r["status"] for r in await db.fetch("SELECT status FROM agent_tasks")] == ["pending", "pending"]
    pipeline._commit = real  # type: ignore[method-assign]
