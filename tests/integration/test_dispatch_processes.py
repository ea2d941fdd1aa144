"""`parley dispatcher` as real processes against the provider simulator over real HTTP (the real twilio
client): four processes on one user's budget never exceed it, and a dispatcher SIGKILLed while its
provider call is in flight causes no second send.

The waits only bound a hang; what is asserted is counted in the database and in what the simulator
accepted (/sim/messages), never how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from db import pool as db_pool
from services.orchestrator import outbox
from services.orchestrator.policy import MessageClass
from tests import dispatching, support
from tests.integration.test_dispatch_e2e import sim_config
from tests.simulation import Simulation, running

HANG_S = 90.0


class Proc:
    """A `parley dispatcher` (or other subcommand) process whose log lines are collected as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", *(args or ("dispatcher",))], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    async def until_logged(self, text: str) -> None:
        async def wait() -> None:
            while not self.logged(text):
                if self.proc.poll() is not None:
                    raise AssertionError(f"dispatcher exited ({self.proc.returncode}): {''.join(self.lines)[-3000:]}")
                await asyncio.sleep(0.05)

        await asyncio.wait_for(wait(), HANG_S)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def dispatcher_env(tmp_path: Path, database_url: str, sim_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "TWILIO_", "WHATSAPP_", "OPENAI_"))}
    env.update({
        "DATABASE_URL": database_url, "PARLEY_HOME": str(tmp_path / "home"), "PARLEY_API_KEY": support.API_KEY,
        "PUBLIC_BASE_URL": support.PUBLIC_BASE, "TWILIO_ACCOUNT_SID": support.ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": support.AUTH_TOKEN, "TWILIO_API_BASE_URL": sim_url,
        "WHATSAPP_APP_SECRET": support.APP_SECRET, "WHATSAPP_VERIFY_TOKEN": support.VERIFY_TOKEN,
        "WHATSAPP_ACCESS_TOKEN": support.ACCESS_TOKEN, "WHATSAPP_PHONE_NUMBER_ID": support.PHONE_NUMBER_ID,
        "WHATSAPP_GRAPH_BASE_URL": sim_url, "PARLEY_QUIET_HOURS": "", "PARLEY_LOG_LEVEL": "INFO",
        "PARLEY_DB_POOL_SIZE": "4",
    })
    env.update(extra)
    return env


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db_pool.create(database_url, 4)
    yield p
    await p.close()


@pytest.fixture
async def simulator() -> AsyncIterator[Simulation]:
    async with running(sim_config(None)) as sim:
        await sim.configure(callbacks=False)
        yield sim


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.kill()


async def until(predicate: Any, what: str) -> None:
    async def wait() -> None:
        while not await predicate():
            await asyncio.sleep(0.1)

    try:
        await asyncio.wait_for(wait(), HANG_S)
    except TimeoutError:
        raise AssertionError(f"not {what} after {HANG_S} s") from None


async def test_four_dispatcher_processes_never_exceed_one_users_budget(
        tmp_path, database_url, pool, procs, simulator) -> None:
    settings = support.make_settings(database_url, TWILIO_API_BASE_URL=simulator.base_url)
    world = await dispatching.world(pool, settings)
    env = dispatcher_env(tmp_path, database_url, simulator.base_url, PARLEY_BUDGET_HOURLY="2", PARLEY_BUDGET_DAILY="5",
                         PARLEY_MIN_SPACING_S="0", PARLEY_DISPATCH_BATCH="1", PARLEY_POLL_INTERVAL_S="0.2")
    for _ in range(4):
        procs.append(Proc(env))
    for p in procs:
        await p.until_logged("dispatchers started")
    user, conv = await dispatching.person(pool, world)
    [phone] = [r["phone"] for r in await dispatching.fetch(pool, "SELECT phone FROM users WHERE id = $1", user)]
    # All at once, with one wake-up: the four idle processes race for them.
    async with pool.acquire() as conn, conn.transaction():
        rows = [(await outbox.enqueue(conn, outbox.Item(world.tenant_id, user, conv, None,
                                                        MessageClass.MARKETING, outbox.Reason.OPERATOR,
                                                        body=f"offer {i}"))).id for i in range(24)]
    outbox.wake(pool)

    async def all_looked_at() -> bool:
        left = await dispatching.fetch(pool, "SELECT count(*) AS n FROM message_queue WHERE id = ANY($1) AND "
                                       "(status IN ('queued', 'sending') OR NOT EXISTS (SELECT 1 FROM "
                                       "message_queue_verdicts v WHERE v.queue_id = message_queue.id))", rows)
        return bool(left[0]["n"] == 0)

    await until(all_looked_at, "every row claimed")
    for p in procs:
        assert p.stop() == 0
    statuses = [r["status"] for r in await dispatching.fetch(pool, "SELECT status FROM message_queue "
                                                                    "WHERE id = ANY($1)", rows)]
    assert statuses.count("sent") + statuses.count("delivered") == 2
    assert statuses.count("deferred") == 22
    assert len(await simulator.messages(to=phone)) == 2
    # More than one process decided on these rows: the race was real.
    deciders = await dispatching.fetch(pool, "SELECT count(DISTINCT detail->>'by') AS n FROM message_queue_verdicts "
                                             "WHERE queue_id = ANY($1)", rows)
    assert deciders[0]["n"] >= 2


async def test_a_dispatcher_killed_mid_send_causes_no_second_send(
        tmp_path, database_url, pool, procs, simulator) -> None:
    settings = support.make_settings(database_url, TWILIO_API_BASE_URL=simulator.base_url)
    world = await dispatching.world(pool, settings)
    # The provider takes the message and then holds its answer back: the call is in flight.
    # (hang_s bounds only how long the simulator holds the dead connection: its shutdown waits for it.)
    await simulator.configure(error_rates={"twilio:timeout": 1.0}, hang_s=10)
    env = dispatcher_env(tmp_path, database_url, simulator.base_url, PARLEY_SEND_LEASE_S="2",
                         PARLEY_UNKNOWN_GRACE_S="1", PARLEY_SEND_TIMEOUT_S="100", PARLEY_POLL_INTERVAL_S="0.2")
    user, conv = await dispatching.person(pool, world)
    [phone] = [r["phone"] for r in await dispatching.fetch(pool, "SELECT phone FROM users WHERE id = $1", user)]
    q = await dispatching.enqueue(pool, world, user, conv, body="exactly once")
    first = Proc(env)
    procs.append(first)

    async def accepted() -> bool:
        return len(await simulator.messages(to=phone)) == 1

    await until(accepted, "accepted by the simulator")
    assert (await dispatching.row(pool, q))["status"] == "sending"
    first.kill()
    # Anything sent from now on would be answered at once, and counted.
    await simulator.configure(error_rates={})
    second = Proc(env)
    procs.append(second)

    async def settled() -> bool:
        # Found by the lookup, as far as the provider had got with it.
        return (await dispatching.row(pool, q))["status"] in ("sent", "delivered")

    await until(settled, "settled")
    assert second.stop() == 0
    [accepted_message] = await simulator.messages(to=phone)
    row = await dispatching.row(pool, q)
    assert row["provider_message_id"] == accepted_message["sid"]
    assert [(g, v) for g, v, _ in await dispatching.verdicts(pool, q)] == [
        ("all", "pass"), ("reconcile", "unknown"), ("reconcile", "sent")]


async def test_parley_dispatcher_stops_on_sigterm_and_exits_0(tmp_path, database_url, procs) -> None:
    p = Proc(dispatcher_env(tmp_path, database_url, "http://127.0.0.1:9", PARLEY_DISPATCHERS="2"))
    procs.append(p)
    await p.until_logged("dispatchers started")
    assert p.stop() == 0
    assert sum("dispatcher stopped" in line for line in p.lines) == 2


def test_parley_dispatcher_refuses_to_start_beside_a_sandbox(tmp_path, database_url) -> None:
    # No provider credentials: the sandbox's simulator is inside `parley serve`, out of this process's reach.
    env = {k: v for k, v in dispatcher_env(tmp_path, database_url, "http://127.0.0.1:9").items()
           if not k.startswith(("TWILIO_", "WHATSAPP_"))}
    done = subprocess.run([sys.executable, "-m", "services.cli", "dispatcher"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "sandbox is on" in done.stderr and "Traceback" not in done.stderr


async def test_parley_serve_answers_help_and_stop_through_its_own_dispatcher(tmp_path, database_url, procs) -> None:
    port = dispatching.free_port()
    user_phone = "+14155550123"
    async with running(sim_config(f"http://127.0.0.1:{port}")) as sim:
        env = dispatcher_env(tmp_path, database_url, sim.base_url, PARLEY_WORKERS="1", PARLEY_DISPATCHERS="1")
        serve = Proc(env, "serve", "--port", str(port))
        procs.append(serve)
        try:
            async def ready() -> bool:
                try:
                    async with sim.session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await until(ready, "serving")
            sent: list[dict[str, Any]] = []
            for body in ("HELP", "STOP"):
                answer = await sim.control("POST", "/sim/inbound", {"channel": "sms", "from": user_phone,
                                                                    "to": dispatching.SMS_FROM, "body": body})
                assert answer["status"] == 200
                before = len(sent)

                async def answered(before: int = before) -> bool:
                    sent[:] = await sim.messages(to=user_phone)
                    return len(sent) > before

                await until(answered, f"{body} answered")
        finally:
            code = serve.stop()
        assert code == 0, "".join(serve.lines)[-2000:]
    assert sent[0]["body"] == support.make_settings(database_url).help_text
    assert "unsubscribed" in sent[1]["body"]
    assert [m["from"] for m in sent] == [dispatching.SMS_FROM] * 2
