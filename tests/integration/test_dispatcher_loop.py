"""The dispatcher's loop on the real clock: woken by NOTIFY, bounded by the next deferred row's time,
stopping gracefully, and carrying on through a Redis outage with nothing lost.

Each test's poll interval is far longer than the test may take, so a row that arrives proves the
wake-up under test (not the poll) delivered it; the waits below only bound a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from db import pool as db_pool
from services.channels.base import ChannelKind, MessageStatus
from services.channels.outbound import OutboundRequest, Sender, SendResult
from services.orchestrator import dispatcher as dispatcher_mod
from services.orchestrator import outbox
from services.orchestrator import throughput as throughput_mod
from services.orchestrator.policy import MessageClass
from tests import dispatching, support
from tests.integration.test_throughput import OwnRedis, own_redis  # noqa: F401 - the fixture

POLL_S = 120.0
HANG_S = 60.0


class Accepting:
    can_lookup = True

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.requests: list[OutboundRequest] = []
        self.hold = hold
        self.started = asyncio.Event()

    async def send(self, request: OutboundRequest) -> SendResult:
        self.requests.append(request)
        self.started.set()
        if self.hold is not None:
            await self.hold.wait()
        return SendResult(f"SM{request.queue_id:032x}", MessageStatus.QUEUED)

    async def lookup(self, request: OutboundRequest, since: datetime) -> None:
        return None


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db_pool.create(database_url, 8)
    yield p
    await p.close()


@pytest.fixture
def settings(database_url: str) -> Any:
    return support.make_settings(database_url, PARLEY_QUIET_HOURS="", PARLEY_MIN_SPACING_S=0,
                                 PARLEY_BUDGET_HOURLY=100_000, PARLEY_BUDGET_DAILY=100_000,
                                 PARLEY_REPLY_LIMIT_HOURLY=100_000)


@pytest.fixture
async def world(pool: asyncpg.Pool, settings: Any) -> dispatching.World:
    return await dispatching.world(pool, settings)


def make(pool: asyncpg.Pool, settings: Any, database_url: str, sender: Accepting,
         throughput: throughput_mod.Throughput | None = None) -> dispatcher_mod.Dispatcher:
    def senders(kind: ChannelKind) -> Sender:
        return sender

    return dispatcher_mod.Dispatcher(pool, settings, senders, throughput or throughput_mod.Throughput(),
                                     dsn=database_url, poll_interval_s=POLL_S)


async def until_status(pool: asyncpg.Pool, queue_ids: list[int], status: str) -> None:
    async def wait() -> None:
        while True:
            rows = await dispatching.fetch(pool, "SELECT count(*) AS n FROM message_queue WHERE id = ANY($1) "
                                           "AND status = $2", queue_ids, status)
            if rows[0]["n"] == len(queue_ids):
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(wait(), HANG_S)
    except TimeoutError:
        left = await dispatching.fetch(pool, "SELECT id, status, next_attempt_at, attempts FROM message_queue "
                                       "WHERE id = ANY($1) AND status <> $2", queue_ids, status)
        raise AssertionError(f"not {status} after {HANG_S} s: {[dict(r) for r in left]}") from None


async def test_an_idle_dispatcher_is_woken_by_the_outboxs_notify(pool, settings, world, database_url) -> None:
    sender = Accepting()
    d = make(pool, settings, database_url, sender)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        # LISTEN established (a NOTIFY sent before it would be lost, and only the long poll would find
        # the row), then idle: until a NOTIFY or the poll.
        while not d.listening:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        user, conv = await dispatching.person(pool, world)
        async with pool.acquire() as conn, conn.transaction():
            queued = await outbox.enqueue(conn, outbox.Item(world.tenant_id, user, conv, None, MessageClass.REPLY,
                                                            outbox.Reason.AGENT_REPLY, body="woken"))
        outbox.wake(pool)
        await until_status(pool, [queued.id], "sent")
    finally:
        stop.set()
        await task


async def test_a_deferred_row_goes_out_when_its_time_comes_without_a_notify(
        pool, settings, world, database_url) -> None:
    sender = Accepting()
    d = make(pool, settings, database_url, sender)
    user, conv = await dispatching.person(pool, world)
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    q = await dispatching.enqueue(pool, world, user, conv, next_attempt_at=due)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        await until_status(pool, [q], "sent")
    finally:
        stop.set()
        await task
    assert (await dispatching.row(pool, q))["send_started_at"] >= due


async def test_stop_waits_for_the_send_in_flight_and_records_it(pool, settings, world, database_url) -> None:
    hold = asyncio.Event()
    sender = Accepting(hold)
    d = make(pool, settings, database_url, sender)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv)
    later = await dispatching.enqueue(pool, world, user, conv, next_attempt_at=datetime.now(UTC) + timedelta(days=1))
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    await asyncio.wait_for(sender.started.wait(), HANG_S)
    stop.set()
    await asyncio.sleep(0.2)
    assert not task.done()  # the call is still in flight: the dispatcher waits for it
    hold.set()
    await asyncio.wait_for(task, HANG_S)
    assert (await dispatching.row(pool, q))["status"] == "sent"
    assert (await dispatching.row(pool, later))["status"] == "queued"


async def test_redis_stopped_mid_run_paces_in_process_and_nothing_is_lost(
        pool, settings, world, database_url, own_redis) -> None:  # noqa: F811 - the fixture
    redis = aioredis.from_url(own_redis.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        throughput = throughput_mod.Throughput(redis, retry_after_s=0.2)
        sender = Accepting()
        d = make(pool, settings, database_url, sender, throughput)
        async with pool.acquire() as conn:
            await conn.execute("UPDATE channels SET send_rate = 40, send_burst = 5 WHERE id = $1", world.sms_channel_id)
        users = [await dispatching.person(pool, world) for _ in range(10)]
        rows = [await dispatching.enqueue(pool, world, u, c, body=f"m{i}-{j}")
                for j in range(6) for i, (u, c) in enumerate(users)]
        stop = asyncio.Event()
        task = asyncio.create_task(d.run(stop))
        try:
            while len(sender.requests) < 10:
                await asyncio.sleep(0.02)
            own_redis.kill()
            await until_status(pool, rows, "sent")
        finally:
            stop.set()
            await task
        assert throughput.degraded
        assert sorted(r.queue_id for r in sender.requests) == sorted(rows)  # each exactly once
    finally:
        await redis.aclose()
