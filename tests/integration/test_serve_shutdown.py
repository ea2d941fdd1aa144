"""`parley serve` on SIGTERM, with webhooks and agent work in flight: every webhook answered 200 is
committed, the agents' in-flight work completes and the rest stays claimable, and it exits 0 in time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests import support
from tests.fakes.openai_server import delay, reply
from tests.integration.test_agents import drain
from tests.integration.test_processes import _free_port

SHUTDOWN_TIMEOUT_S = 30  # services/cli.py: web.run_app(..., shutdown_timeout=30)
LLM_DELAY_S = 1.5


def _serve(database_url: str, port: int, home: Path, openai_url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_", "TWILIO_", "WHATSAPP_"))}
    env.update(DATABASE_URL=database_url, PARLEY_HOME=str(home), PARLEY_API_KEY=support.API_KEY,
               TWILIO_ACCOUNT_SID=support.ACCOUNT_SID, TWILIO_AUTH_TOKEN=support.AUTH_TOKEN,
               PUBLIC_BASE_URL=f"http://127.0.0.1:{port}", PARLEY_POLL_INTERVAL_S="0.2",
               OPENAI_API_KEY="sk-test-key-123456", OPENAI_BASE_URL=openai_url, OPENAI_MAX_RETRIES="0",
               OPENAI_TIMEOUT_S="20")
    return subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port)], env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _sid(n: int) -> str:
    return f"SM{n:032x}"


def _signed(base: str, n: int) -> tuple[bytes, dict[str, str]]:
    # A sender per message: each is its own conversation, so the agents can take them in one batch.
    pairs = support.sms_pairs(f"do you have an opening on day {n}?", _sid(n), from_=f"+1415555{n:04d}")
    return support.twilio_request(pairs, url=base + "/webhooks/twilio")


async def _post(session: aiohttp.ClientSession, base: str, n: int) -> int | None:
    """The status of one webhook, or None if the server never answered it (it had stopped accepting)."""
    body, headers = _signed(base, n)
    try:
        async with session.post(base + "/webhooks/twilio", data=body, headers=headers) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, OSError):
        return None


async def test_sigterm_commits_every_answered_webhook_and_leaves_agent_work_done_or_claimable(
        client, db, database_url, openai_server, tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    openai_server.script(*[delay(LLM_DELAY_S, reply({"intent": "booking", "confidence": 0.9, "language": "en"}))
                           for _ in range(200)])
    proc = _serve(database_url, port, tmp_path / "home", openai_server.base_url)
    answered: dict[int, int | None] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with session.get(base + "/readyz") as resp:
                        if resp.status == 200:
                            break
                except (aiohttp.ClientError, OSError):
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "parley serve did not become ready"
                await asyncio.sleep(0.1)

            # Agent work in flight: the first messages are being classified by the (slow) LLM.
            for n in range(1, 6):
                answered[n] = await _post(session, base, n)
            assert set(answered.values()) == {200}
            while not openai_server.requests:
                assert proc.poll() is None
                await asyncio.sleep(0.02)

            # Webhooks in flight: their commits wait on a lock the test holds on `messages`.
            lock = db.transaction()
            await lock.start()
            await db.execute("LOCK TABLE messages IN EXCLUSIVE MODE")  # reads go on; inserts wait
            try:
                burst = {n: asyncio.create_task(_post(session, base, n)) for n in range(6, 56)}
                waiting = "SELECT count(*) > 0 FROM pg_locks WHERE relation = 'messages'::regclass AND NOT granted"
                while not await db.fetchval(waiting):
                    assert proc.poll() is None
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                await asyncio.sleep(0.5)  # shutdown begins while those requests wait for their commit
                late = {n: asyncio.create_task(_post(session, base, n)) for n in range(56, 61)}
            finally:
                await lock.rollback()
            for n, t in {**burst, **late}.items():
                answered[n] = await t
            while proc.poll() is None:  # keep the fake LLM serving while the agents finish
                assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT_S + 10, "parley serve did not exit in time"
                await asyncio.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert all(answered[n] == 200 for n in burst), answered  # in flight at SIGTERM: finished, not dropped
    assert set(answered.values()) <= {200, None}, answered  # never a 5xx while shutting down

    ok = {_sid(n) for n, status in answered.items() if status == 200}
    stored = {r["provider_message_id"] for r in await db.fetch("SELECT provider_message_id FROM messages")}
    assert ok <= stored
    # Every stored message has its one task: none running (its lease held by a process that is gone).
    tasks = await db.fetch("SELECT t.status, t.attempts, m.provider_message_id FROM agent_tasks t "
                           "JOIN messages m ON m.id = t.message_id")
    assert sorted(t["provider_message_id"] for t in tasks) == sorted(stored)
    assert {t["status"] for t in tasks} <= {"done", "pending"}, [dict(t) for t in tasks]
    # What was in flight at SIGTERM completed with the LLM's answer, not a cut-off fallback.
    served = await db.fetch("SELECT implementation, status FROM agent_actions_log WHERE agent = 'intent'")
    assert served and all((r["implementation"], r["status"]) == ("openai", "ok") for r in served)
    assert len(served) == len(openai_server.requests) == sum(t["status"] == "done" for t in tasks)

    # The rest is claimable now: another worker finishes it (drain fails on anything left unsettled).
    await drain(client)
    per_message = await db.fetch("SELECT m.provider_message_id, count(l.id) AS n FROM messages m "
                                 "LEFT JOIN agent_actions_log l ON l.message_id = m.id AND l.agent = 'intent' "
                                 "GROUP BY 1")
    assert {r["provider_message_id"]: r["n"] for r in per_message} == dict.fromkeys(stored, 1)
