"""The task runtime's promises, each tested so that breaking it fails a test: the lease fence at commit,
the heartbeat that keeps a long task's lease, and the poll that covers a lost or missing NOTIFY."""

from __future__ import annotations

import asyncio
import time

import pytest

from agents import service, worker
from db import notify
from services import appkeys
from tests.integration.test_agents import say


async def _until(db, sql: str, expected: object, *args: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await db.fetchval(sql, *args) == expected:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out waiting for {sql!r} == {expected!r} (last: {await db.fetchval(sql, *args)!r})")


async def _results(db) -> dict[str, int]:
    """Everything a pipeline run writes, counted."""
    counts = {}
    for name, sql in {
        "intent_log": "SELECT count(*) FROM agent_actions_log WHERE agent = 'intent'",
        "enrichment_log": "SELECT count(*) FROM agent_actions_log WHERE agent = 'enrichment'",
        "reply_log": "SELECT count(*) FROM agent_actions_log WHERE agent = 'responder'",
        "lead_actions": "SELECT count(*) FROM lead_actions",
        "replies": "SELECT count(*) FROM message_queue",
        "events": "SELECT count(*) FROM events WHERE type <> 'message.received'",
    }.items():
        counts[name] = await db.fetchval(sql)
    return counts


async def test_a_worker_whose_lease_lapsed_cannot_commit_after_another_took_the_task_over(client, db):
    # HELP: the run writes a reply as well as its decision log, lead and events.
    await say(client, "HELP", 1)
    runtime = client.app[appkeys.RUNTIME]
    pipeline = service.pipeline(runtime.settings)
    resume = asyncio.Event()

    async def stalled(pool, claim):
        # Worker A is alive but stalls (a long GC pause, a partitioned host) past its lease.
        await resume.wait()
        return await pipeline(pool, claim)

    a = worker.Worker(runtime.pool, runtime.dsn, stalled, worker_id="A", lease_s=60)
    running_a = asyncio.create_task(a.claim_once())
    await _until(db, "SELECT locked_by FROM agent_tasks", "A")
    # A's heartbeat did not run in time: its lease lapsed.
    await db.execute("UPDATE agent_tasks SET lease_expires_at = now() - interval '1 second'")

    b = worker.Worker(runtime.pool, runtime.dsn, pipeline, worker_id="B")
    assert await b.claim_once() == 1
    done_by_b = await _results(db)
    assert done_by_b["intent_log"] == 1 and done_by_b["replies"] == 1 and done_by_b["lead_actions"] == 1

    resume.set()
    assert await running_a == 1
    assert await _results(db) == done_by_b  # nothing of A's run was written
    task = await db.fetchrow("SELECT status, attempts, locked_by FROM agent_tasks")
    assert (task["status"], task["attempts"], task["locked_by"]) == ("done", 2, "B")
    assert a.processed == 1  # A believes it finished; the fence, not A, kept its results out


async def test_a_worker_whose_lease_lapsed_cannot_reschedule_or_bury_a_task_another_holds(client, db):
    await say(client, "what are your hours?", 1)
    await db.execute("UPDATE agent_tasks SET max_attempts = 1")
    runtime = client.app[appkeys.RUNTIME]
    resume = asyncio.Event()
    b_holds = asyncio.Event()

    async def stalled_then_fails(pool, claim):
        await resume.wait()
        raise RuntimeError("A fails late")

    async def holds(pool, claim):
        b_holds.set()
        await asyncio.Event().wait()  # never finishes: B is still working when A gives up
        return []

    a = worker.Worker(runtime.pool, runtime.dsn, stalled_then_fails, worker_id="A", lease_s=60)
    running_a = asyncio.create_task(a.claim_once())
    await _until(db, "SELECT locked_by FROM agent_tasks", "A")
    await db.execute("UPDATE agent_tasks SET lease_expires_at = now() - interval '1 second', max_attempts = 5")
    b = worker.Worker(runtime.pool, runtime.dsn, holds, worker_id="B", lease_s=60)
    running_b = asyncio.create_task(b.claim_once())
    await b_holds.wait()
    resume.set()
    await running_a
    task = await db.fetchrow("SELECT status, attempts, locked_by, last_error FROM agent_tasks")
    assert (task["status"], task["attempts"], task["locked_by"], task["last_error"]) == ("running", 2, "B", None)
    assert await db.fetchval("SELECT count(*) FROM event_dead_letters") == 0
    running_b.cancel()


async def test_the_heartbeat_keeps_a_task_slower_than_its_lease_from_being_taken_over(client, db):
    await say(client, "do you take insurance?", 1)
    runtime = client.app[appkeys.RUNTIME]
    pipeline = service.pipeline(runtime.settings)
    lease_s = 0.6
    claimed_at = asyncio.Event()

    async def slow(pool, claim):
        # Work for three leases (measured on the database's clock, which judges the lease).
        claimed_at.set()
        async with pool.acquire() as conn:
            until = await conn.fetchval("SELECT now() + make_interval(secs => $1)", 3 * lease_s)
            while await conn.fetchval("SELECT now() < $1", until):
                await asyncio.sleep(0.05)
        return await pipeline(pool, claim)

    taken_over: list[int] = []

    async def other(pool, claim):
        taken_over.extend(t.id for t in claim.tasks)
        return []

    a = worker.Worker(runtime.pool, runtime.dsn, slow, worker_id="A", lease_s=lease_s)
    b = worker.Worker(runtime.pool, runtime.dsn, other, worker_id="B", lease_s=lease_s)
    running_a = asyncio.create_task(a.claim_once())
    await claimed_at.wait()
    while not running_a.done():
        await b.claim_once()  # a second worker keeps trying to take the task over
        await asyncio.sleep(0.05)
    assert await running_a == 1
    assert taken_over == []
    task = await db.fetchrow("SELECT status, attempts, locked_by FROM agent_tasks")
    assert (task["status"], task["attempts"], task["locked_by"]) == ("done", 1, "A")
    assert await db.fetchval("SELECT count(*) FROM agent_actions_log WHERE agent = 'intent'") == 1


class _Claims:
    """A `pace` hook: counts the claims a worker starts."""

    def __init__(self) -> None:
        self.started = 0

    async def __call__(self) -> None:
        self.started += 1


async def _run_until_done(w: worker.Worker, db, claims: _Claims, send) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(w.run(stop))
    try:
        # A second claim proves the worker went idle after finding nothing, then looked again unprompted.
        deadline = time.monotonic() + 20
        while claims.started < 2 and time.monotonic() < deadline and not running.done():
            await asyncio.sleep(0.02)
        assert claims.started >= 2, "an idle worker never polled the queue"
        await send()
        await _until(db, "SELECT status FROM agent_tasks", "done")
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)


async def test_a_worker_without_listen_still_works_the_queue_by_polling(client, db):
    runtime = client.app[appkeys.RUNTIME]
    claims = _Claims()
    # LISTEN cannot connect (nothing listens on port 1): the worker runs on its poll alone.
    w = worker.Worker(runtime.pool, "postgresql://127.0.0.1:1/nowhere", service.pipeline(runtime.settings),
                      worker_id="deaf", concurrency=1, poll_interval_s=0.1, pace=claims)
    await _run_until_done(w, db, claims, lambda: say(client, "are you open sunday?", 1))
    assert w.processed == 1


async def test_a_lost_notification_is_covered_by_the_poll(client, db, monkeypatch):
    runtime = client.app[appkeys.RUNTIME]
    claims = _Claims()
    w = worker.Worker(runtime.pool, runtime.dsn, service.pipeline(runtime.settings), worker_id="listening",
                      concurrency=1, poll_interval_s=0.1, pace=claims)
    real_wake = notify.wake

    def lossy(pool, *channels):  # the webhook's wake-up for its new task never arrives
        return real_wake(pool, *(c for c in channels if c != notify.AGENT_TASKS))

    async def send() -> None:
        monkeypatch.setattr(notify, "wake", lossy)
        await say(client, "can I book for friday?", 1)

    await _run_until_done(w, db, claims, send)
    assert w.processed == 1


async def test_a_requeued_dead_letter_records_who_requeued_it_and_wakes_an_idle_worker(client, db):
    await say(client, "hello there", 1)
    runtime = client.app[appkeys.RUNTIME]

    async def broken(pool, claim):
        raise RuntimeError("x" * 5000)

    await db.execute("UPDATE agent_tasks SET max_attempts = 1")
    assert await worker.Worker(runtime.pool, runtime.dsn, broken, worker_id="broken").claim_once() == 1
    letter = await db.fetchrow("SELECT id, error FROM event_dead_letters")
    assert len(letter["error"]) == 2000  # a huge error is cut to a bounded size, in the letter and the task
    assert len(await db.fetchval("SELECT last_error FROM agent_tasks")) == 2000

    # An idle worker that would not poll for an hour: only the requeue's NOTIFY can wake it.
    w = worker.Worker(runtime.pool, runtime.dsn, service.pipeline(runtime.settings), worker_id="idle",
                      concurrency=1, poll_interval_s=3600)
    claim_once, finished = w.claim_once, []

    async def counted() -> int:
        finished.append(await claim_once())
        return finished[-1]

    w.claim_once = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(w.run(stop))
    try:
        deadline = time.monotonic() + 20
        while not finished and time.monotonic() < deadline:  # its first claim found nothing: it is idle
            await asyncio.sleep(0.02)
        assert finished == [0]
        assert await worker.requeue_dead_letter(runtime.pool, letter["id"], "operator:dana") is not None
        await _until(db, "SELECT status FROM agent_tasks", "done")
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)
    assert await db.fetchval("SELECT requeued_by FROM event_dead_letters") == "operator:dana"
    assert await worker.requeue_dead_letter(runtime.pool, letter["id"], "operator:dana") is None


async def test_a_claim_that_fails_does_not_stop_the_worker_which_backs_off_and_claims_again(client, db):
    await say(client, "can I reschedule?", 1)
    runtime = client.app[appkeys.RUNTIME]
    w = worker.Worker(runtime.pool, runtime.dsn, service.pipeline(runtime.settings), worker_id="hiccup",
                      concurrency=1, poll_interval_s=0.1)
    claim_once, attempts = w.claim_once, []

    async def hiccup() -> int:
        attempts.append(1)
        if len(attempts) == 1:  # the database went away for a moment
            raise ConnectionResetError("connection reset by peer")
        return await claim_once()

    w.claim_once = hiccup  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(w.run(stop))
    try:
        await _until(db, "SELECT status FROM agent_tasks", "done")
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)
    assert w.processed == 1 and len(attempts) >= 2
