"""Retention: old done tasks and status callbacks go, in small batches; everything else stays."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from services import appkeys, retention
from tests.integration.test_agents import drain, say
from tests.integration.test_worker import _wait_for, _worker_process

# Tasks of the one conversation, finished (or not) `age` days ago. $1 = how many, $2 = status, $3 = age in days
TASKS = """
INSERT INTO agent_tasks (tenant_id, conversation_id, kind, status, attempts, last_error, created_at, finished_at)
SELECT c.tenant_id, c.id, 'process_message', $2, 1, CASE WHEN $2 = 'dead' THEN 'boom' END,
       now() - make_interval(days => $3), CASE WHEN $2 <> 'pending' THEN now() - make_interval(days => $3) END
FROM conversations c, generate_series(1, $1)
RETURNING id
"""
STATUSES = """
INSERT INTO message_statuses (tenant_id, provider, provider_message_id, status, received_at)
SELECT t.id, 'twilio', 'SM' || $2::int || 'd' || g, 'delivered', now() - make_interval(days => $2::int)
FROM tenants t, generate_series(1, $1) g
"""
LETTER = """
INSERT INTO event_dead_letters (tenant_id, agent_task_id, kind, error, attempts, status)
SELECT tenant_id, id, kind, 'boom', 1, $2 FROM agent_tasks WHERE id = $1
"""


async def _seed(client, db) -> dict[str, list[int]]:
    """Old and fresh rows of every kind retention must tell apart; returns task ids by kind."""
    await say(client, "hello", 1)
    await drain(client)  # the message's own task: done just now
    ids = {
        "old done": [r["id"] for r in await db.fetch(TASKS, 250, "done", 31)],
        "fresh done": [r["id"] for r in await db.fetch(TASKS, 5, "done", 29)],
        "old dead": [r["id"] for r in await db.fetch(TASKS, 3, "dead", 90)],
        "old pending": [r["id"] for r in await db.fetch(TASKS, 2, "pending", 90)],
        # Requeued from a dead letter by an operator, then done: the letter is its record.
        "old requeued": [r["id"] for r in await db.fetch(TASKS, 1, "done", 90)],
    }
    for task_id in ids["old dead"]:
        await db.execute(LETTER, task_id, "dead")
    await db.execute(LETTER, ids["old requeued"][0], "requeued")
    # The decision log outlives the task it was written for.
    await db.execute("UPDATE agent_actions_log SET agent_task_id = $1", ids["old done"][0])
    await db.execute(STATUSES, 250, 31)
    await db.execute(STATUSES, 4, 29)
    return ids


async def test_old_done_tasks_and_statuses_go_in_batches_and_nothing_else(client, db):
    ids = await _seed(client, db)
    logged = await db.fetchval("SELECT count(*) FROM agent_actions_log")
    assert logged > 0
    pool = client.app[appkeys.RUNTIME].pool

    purged = await retention.purge(pool, 30, batch=100, pause_s=0)
    assert (purged.agent_tasks, purged.message_statuses) == (250, 250)
    assert purged.batches == 3 + 3  # 100 + 100 + 50 rows, each table

    left = {r["id"] for r in await db.fetch("SELECT id FROM agent_tasks")}
    assert left.isdisjoint(ids["old done"])
    for kind in ("fresh done", "old dead", "old pending", "old requeued"):
        assert set(ids[kind]) <= left, kind
    assert await db.fetchval("SELECT count(*) FROM agent_tasks") == 1 + 5 + 3 + 2 + 1
    assert await db.fetchval("SELECT count(*) FROM event_dead_letters") == 4
    assert await db.fetchval("SELECT count(*) FROM agent_actions_log") == logged
    assert await db.fetchval("SELECT count(*) FROM agent_actions_log WHERE agent_task_id IS NULL") == logged
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 4
    assert await db.fetchval("SELECT min(received_at) > now() - interval '30 days' FROM message_statuses")

    again = await retention.purge(pool, 30, batch=100, pause_s=0)
    assert (again.agent_tasks, again.message_statuses, again.batches) == (0, 0, 2)


async def test_a_stop_ends_the_purge_between_batches(client, db):
    await _seed(client, db)
    stop = asyncio.Event()
    stop.set()
    purged = await retention.purge(client.app[appkeys.RUNTIME].pool, 30, batch=100, stop=stop)
    assert purged == retention.Purged(0, 0, 0)
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 254


async def test_zero_days_keeps_everything(client, db):
    await _seed(client, db)
    stop = asyncio.Event()
    # Returns at once (it would otherwise run until stopped).
    await asyncio.wait_for(retention.run(client.app[appkeys.RUNTIME].pool, 0, 0.01, stop, first_run_s=0), 5)
    assert await db.fetchval("SELECT count(*) FROM message_statuses") == 254


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_process(database_url: str, port: int, **env: str) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_", "TWILIO_", "WHATSAPP_"))}
    base.update({"DATABASE_URL": database_url, "PARLEY_API_KEY": "retention-test-key"}, **env)
    return subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port)], env=base,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("command", ["worker", "serve"])
async def test_parley_worker_and_serve_run_the_job_periodically(client, db, database_url, command):
    ids = await _seed(client, db)
    env = {"PARLEY_RETENTION_INTERVAL_S": "0.5"}
    proc = (_worker_process(database_url, **env) if command == "worker"
            else _serve_process(database_url, _free_port(), PARLEY_WORKERS="0", **env))
    try:
        await _wait_for(db, "SELECT count(*) FROM message_statuses", 4, timeout=60)
        await _wait_for(db, "SELECT count(*) FROM agent_tasks", 12, timeout=20)
        # Periodically, not once: rows that grow old later go on the next run.
        await db.execute(STATUSES, 7, 45)
        await _wait_for(db, "SELECT count(*) FROM message_statuses", 4, timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "retention deleted old rows" in out + err
    assert set(ids["old dead"]) <= {r["id"] for r in await db.fetch("SELECT id FROM agent_tasks")}

