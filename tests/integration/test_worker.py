"""The task runtime: leases survive kill -9, order per conversation, retries, dead letters, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from agents import service, worker
from services import appkeys
from tests.fakes.openai_server import delay, reply
from tests.integration.test_agents import AUTH, drain, say


def _worker_process(database_url: str, **env: str) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_", "TWILIO_", "WHATSAPP_"))}
    base.update({"DATABASE_URL": database_url, "PARLEY_POLL_INTERVAL_S": "0.2"}, **env)
    return subprocess.Popen([sys.executable, "-m", "services.cli", "worker"], env=base, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def _wait_for(db, sql: str, expected: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await db.fetchval(sql) == expected:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {sql!r} == {expected!r} (last: {await db.fetchval(sql)!r})")


async def test_worker_killed_mid_task_leaves_it_to_another_which_completes_it_exactly_once(
        client, db, database_url, openai_server):
    await say(client, "Can I get a quote for a kitchen remodel?", 1)
    # The first worker's LLM call hangs: the task is in flight when the process is killed.
    openai_server.script(delay(60, reply({"intent": "question", "confidence": 0.9, "language": "en"})))
    proc = _worker_process(database_url, OPENAI_API_KEY="sk-test-key-123456", OPENAI_BASE_URL=openai_server.base_url,
                           OPENAI_TIMEOUT_S="60", PARLEY_TASK_LEASE_S="1.5")
    try:
        await _wait_for(db, "SELECT status FROM agent_tasks", "running")
        deadline = time.monotonic() + 20
        while not openai_server.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert openai_server.requests, "the first worker never reached the LLM"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=20)
    assert await db.fetchval("SELECT status FROM agent_tasks") == "running"

    # Another worker (local classifier) takes it over once the lease lapses.
    deadline = time.monotonic() + 20
    while await db.fetchval("SELECT status FROM agent_tasks") != "done" and time.monotonic() < deadline:
        await drain(client, settled=False)  # the task is held by the dead worker until its lease lapses
        await asyncio.sleep(0.2)
    task = await db.fetchrow("SELECT status, attempts FROM agent_tasks")
    assert (task["status"], task["attempts"]) == ("done", 2)
    assert await db.fetchval("SELECT count(*) FROM agent_actions_log WHERE agent = 'intent'") == 1
    assert await db.fetchval("SELECT count(*) FROM lead_actions") == 1
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'lead.created'") == 1


async def test_two_worker_processes_keep_each_conversations_order(client, db, database_url):
    texts = ["hi", "what are your hours?", "do you take insurance?", "ok thanks", "can I book for friday?"]
    n = 0
    for round_ in range(6):
        for who in ("+14155550101", "+14155550102", "+14155550103"):
            n += 1
            await say(client, f"{texts[round_ % len(texts)]} ({round_})", n, from_=who)
    procs = [_worker_process(database_url, PARLEY_WORKER_CONCURRENCY="4") for _ in range(2)]
    try:
        await _wait_for(db, "SELECT count(*) FROM agent_tasks WHERE status <> 'done'", 0, timeout=60)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.communicate(timeout=30)
    rows = await db.fetch(
        "SELECT conversation_id, message_id FROM agent_actions_log WHERE agent = 'intent' ORDER BY id")
    assert len(rows) == n
    by_conv: dict[int, list[int]] = {}
    for r in rows:
        by_conv.setdefault(r["conversation_id"], []).append(r["message_id"])
    assert len(by_conv) == 3
    for messages in by_conv.values():
        assert messages == sorted(messages)


async def test_one_conversation_never_runs_on_two_workers_at_once(client, db):
    for i in range(40):
        await say(client, f"message {i}", i, from_="+14155550101" if i % 2 else "+14155550102")
    runtime = client.app[appkeys.RUNTIME]
    overlaps: list[int] = []
    order: dict[int, list[int]] = {}
    pipeline = service.pipeline(runtime.settings)

    async def watched(pool, claim):
        # Checked in the database as each claimed batch starts: a conversation with two running
        # tasks would mean two workers on it at once. (A counter in Python would race with the
        # commit that ends the previous task, which happens before the handler returns.)
        async with pool.acquire() as conn:
            for t in claim.tasks:
                running = await conn.fetchval(
                    "SELECT count(*) FROM agent_tasks WHERE conversation_id = $1 AND status = 'running'",
                    t.conversation_id)
                if running != 1:
                    overlaps.append(t.conversation_id)
                order.setdefault(t.conversation_id, []).append(t.message_id)
        await asyncio.sleep(0.01)
        return await pipeline(pool, claim)

    stop = asyncio.Event()
    workers = [worker.Worker(runtime.pool, runtime.dsn, watched, worker_id=f"w{i}", concurrency=3, batch_size=4,
                             poll_interval_s=0.05) for i in range(2)]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    await _wait_for(db, "SELECT count(*) FROM agent_tasks WHERE status <> 'done'", 0, timeout=60)
    stop.set()
    await asyncio.gather(*tasks)
    assert overlaps == []
    assert all(ids == sorted(ids) for ids in order.values())
    assert sum(w.processed for w in workers) == 40


async def test_failures_back_off_then_dead_letter_and_an_operator_can_requeue(client, db):
    await say(client, "hello there", 1)
    await db.execute("UPDATE agent_tasks SET max_attempts = 3")
    runtime = client.app[appkeys.RUNTIME]

    async def broken(pool, claim):
        raise RuntimeError("classifier exploded")

    failing = worker.Worker(runtime.pool, runtime.dsn, broken, worker_id="broken")
    assert await failing.claim_once() == 1
    task = await db.fetchrow("SELECT status, attempts, last_error, run_at - now() AS wait FROM agent_tasks")
    assert task["status"] == "pending" and task["attempts"] == 1 and "exploded" in task["last_error"]
    assert 0.4 < task["wait"].total_seconds() <= 1.0  # first backoff: 1 s with jitter

    failing.backoff = lambda attempts: 0.0
    while await db.fetchval("SELECT status FROM agent_tasks") != "dead":
        await db.execute("UPDATE agent_tasks SET run_at = now()")
        assert await failing.claim_once() == 1
    letter = await db.fetchrow("SELECT * FROM event_dead_letters")
    assert letter["attempts"] == 3 and "exploded" in letter["error"] and letter["status"] == "dead"
    listed = await (await client.get("/api/dead-letters", headers=AUTH)).json()
    assert [d["id"] for d in listed["items"]] == [letter["id"]]

    resp = await client.post(f"/api/dead-letters/{letter['id']}/requeue", headers=AUTH)
    assert resp.status == 200
    assert (await client.post(f"/api/dead-letters/{letter['id']}/requeue", headers=AUTH)).status == 404
    assert await drain(client) == 1
    assert await db.fetchval("SELECT status FROM agent_tasks") == "done"
    assert await db.fetchval("SELECT status FROM event_dead_letters") == "requeued"


async def test_one_failing_message_does_not_fail_its_batch(client, db):
    runtime = client.app[appkeys.RUNTIME]
    pipeline = service.pipeline(runtime.settings)
    real = pipeline.classifier

    class Flaky:
        async def classify(self, text, context=()):
            if "boom" in text:
                raise ValueError("cannot classify this one")
            return await real.classify(text, context)

    pipeline.classifier = Flaky()
    await say(client, "boom", 1, from_="+14155550101")
    await say(client, "what are your hours?", 2, from_="+14155550102")
    w = worker.Worker(runtime.pool, runtime.dsn, pipeline, worker_id="flaky")
    assert await w.claim_once() == 2
    statuses = dict(await db.fetch("SELECT m.body, t.status FROM agent_tasks t JOIN messages m ON m.id = t.message_id"))
    assert statuses == {"boom": "pending", "what are your hours?": "done"}


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    for attempts, ceiling in [(1, 1), (2, 2), (3, 4), (6, 32), (20, 300)]:
        values = [worker.backoff_s(attempts) for _ in range(200)]
        assert all(ceiling * 0.5 <= v <= ceiling for v in values)
        assert len(set(values)) > 1


async def test_sigterm_finishes_the_in_flight_task_then_exits(client, db, database_url, openai_server):
    await say(client, "Do you do teeth whitening?", 1)
    openai_server.script(delay(1.5, reply({"intent": "question", "confidence": 0.8, "language": "en"})))
    proc = _worker_process(database_url, OPENAI_API_KEY="sk-test-key-123456", OPENAI_BASE_URL=openai_server.base_url)
    try:
        deadline = time.monotonic() + 20
        while not openai_server.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert openai_server.requests
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.monotonic() < deadline + 20:
            await asyncio.sleep(0.1)  # keep serving the fake LLM while the worker drains
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)
    task = await db.fetchrow("SELECT status, attempts FROM agent_tasks")
    assert (task["status"], task["attempts"]) == ("done", 1)
    assert await db.fetchval("SELECT implementation FROM agent_actions_log WHERE agent = 'intent'") == "openai"


async def test_notify_wakes_an_idle_worker_long_before_its_poll_interval(client, db):
    runtime = client.app[appkeys.RUNTIME]
    stop = asyncio.Event()
    w = service.worker(runtime.settings.model_copy(update={"poll_interval_s": 3600.0}), runtime.pool, runtime.dsn)
    running = asyncio.create_task(w.run(stop))
    await asyncio.sleep(0.5)  # idle, waiting on LISTEN
    await say(client, "are you open sunday?", 1)
    await _wait_for(db, "SELECT status FROM agent_tasks", "done", timeout=20)
    stop.set()
    await running
    assert w.processed == 1


async def test_backlog_is_worked_off_without_waiting_for_a_notify_or_the_poll(client, db):
    runtime = client.app[appkeys.RUNTIME]
    w = worker.Worker(runtime.pool, runtime.dsn, service.pipeline(runtime.settings), worker_id="backlog",
                      batch_size=4, concurrency=2, poll_interval_s=3600.0)
    stop = asyncio.Event()
    running = asyncio.create_task(w.run(stop))
    try:
        await asyncio.sleep(0.3)  # listening
        # Three conversations of eight messages arriving while the worker runs: each claim finds at most
        # three heads (a short batch), and the last NOTIFY comes long before the last task is claimable.
        for i in range(24):
            await say(client, f"question {i}?", i, from_=f"+1415555010{i % 3}")
        await _wait_for(db, "SELECT count(*) FROM agent_tasks WHERE status <> 'done'", 0, timeout=20)
    finally:
        stop.set()
        await running
    assert w.processed == 24
