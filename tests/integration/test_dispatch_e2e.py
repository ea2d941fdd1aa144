"""The dispatcher end to end: the real provider modules (the twilio package's async client, the WhatsApp
Cloud sender) over real HTTP to the provider simulator, whose signed status callbacks come back into the
real Parley app and settle the rows.

The waits only bound a hang; what is asserted is what the simulator accepted and what the database holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest

from db import pool as db_pool
from services.channels import senders as senders_mod
from services.orchestrator import clock as clock_mod
from services.orchestrator import dispatcher as dispatcher_mod
from services.orchestrator import reconcile
from services.orchestrator import throughput as throughput_mod
from services.simulator import MetaNumber, SimConfig
from tests import dispatching, support
from tests.simulation import Simulation, running

HANG_S = 60.0


def sim_config(parley_url: str | None) -> SimConfig:
    """The simulator knowing the test settings' accounts, posting its callbacks to the app under test
    (signed for the public URL Parley believes it has)."""
    return SimConfig(
        twilio_accounts={support.ACCOUNT_SID: support.AUTH_TOKEN},
        twilio_numbers={dispatching.SMS_FROM: support.ACCOUNT_SID},
        meta_numbers={support.PHONE_NUMBER_ID: MetaNumber(support.PHONE_NUMBER_ID, support.ACCESS_TOKEN,
                                                          support.APP_SECRET)},
        parley_url=parley_url, parley_public_url=support.PUBLIC_BASE, seed=7)


@pytest.fixture
async def app(make_client: Any) -> Any:
    return await make_client()


@pytest.fixture
async def sim(app: Any) -> AsyncIterator[Simulation]:
    async with running(sim_config(str(app.server.make_url("")).rstrip("/"))) as simulation:
        await simulation.configure(callback_delay_ms=1)
        yield simulation


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db_pool.create(database_url, 6)
    yield p
    await p.close()


@pytest.fixture
def settings(database_url: str, sim: Simulation) -> Any:
    return support.make_settings(database_url, PARLEY_QUIET_HOURS="", TWILIO_API_BASE_URL=sim.base_url,
                                 WHATSAPP_GRAPH_BASE_URL=sim.base_url, PARLEY_SEND_TIMEOUT_S=10,
                                 PARLEY_UNKNOWN_GRACE_S=1)


@pytest.fixture
async def world(pool: asyncpg.Pool, settings: Any) -> dispatching.World:
    return await dispatching.world(pool, settings)


@pytest.fixture
def clock() -> clock_mod.ManualClock:
    return clock_mod.ManualClock(datetime.now(UTC))


@pytest.fixture
async def senders(settings: Any) -> AsyncIterator[senders_mod.Senders]:
    async with aiohttp.ClientSession() as session:
        s = senders_mod.Senders(settings, session)
        yield s
        await s.close()


@pytest.fixture
def dispatcher(pool, settings, senders, clock) -> dispatcher_mod.Dispatcher:  # type: ignore[no-untyped-def]
    return dispatcher_mod.Dispatcher(pool, settings, senders.for_kind, throughput_mod.Throughput(), clock=clock,
                                     dispatcher_id="e2e")


async def dispatch(d: dispatcher_mod.Dispatcher) -> None:
    await d.dispatch_once()
    await d.drain()


async def phone_of(pool: asyncpg.Pool, user_id: int) -> str:
    [row] = await dispatching.fetch(pool, "SELECT phone FROM users WHERE id = $1", user_id)
    return str(row["phone"])


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    async def wait() -> None:
        while not await check():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(wait(), HANG_S)
    except TimeoutError:
        raise AssertionError(f"not {what} after {HANG_S} s") from None


async def status_is(pool: asyncpg.Pool, queue_id: int, status: str) -> bool:
    return bool((await dispatching.row(pool, queue_id))["status"] == status)


async def test_an_sms_goes_through_the_twilio_client_and_its_callbacks_settle_the_row(
        pool, world, dispatcher, sim, clock) -> None:
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, next_attempt_at=clock.now(), body="Your table is ready")
    await dispatch(dispatcher)
    [accepted] = await sim.messages(to=await phone_of(pool, user))
    assert accepted["body"] == "Your table is ready" and accepted["from"] == dispatching.SMS_FROM
    row = await dispatching.row(pool, q)
    assert row["provider_message_id"] == accepted["sid"] and row["segments"] == 1
    # The simulator's signed callbacks (?q=<id> on the StatusCallback we sent) reach the app.
    await until(lambda: status_is(pool, q, "delivered"), "delivered")
    [msg] = await dispatching.fetch(pool, "SELECT status FROM messages WHERE provider_message_id = $1", accepted["sid"])
    assert msg["status"] == "delivered"


async def test_a_whatsapp_cloud_message_carries_its_queue_id_and_is_settled_by_meta_callbacks(
        pool, world, dispatcher, sim, clock) -> None:
    user, conv = await dispatching.person(pool, world, channel_id=world.whatsapp_channel_id,
                                          last_inbound_at=clock.now())
    q = await dispatching.enqueue(pool, world, user, conv, next_attempt_at=clock.now(), body="Hola")
    await dispatch(dispatcher)
    [accepted] = await sim.messages(to=await phone_of(pool, user))
    assert (await dispatching.row(pool, q))["provider_message_id"] == accepted["sid"]
    await until(lambda: status_is(pool, q, "delivered"), "delivered")


async def test_throttled_by_the_provider_is_retried_after_its_retry_after(pool, world, dispatcher, sim, clock) -> None:
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, next_attempt_at=clock.now())
    await sim.configure(error_rates={"twilio:20429": 1.0})
    await dispatch(dispatcher)
    row = await dispatching.row(pool, q)
    assert row["status"] == "queued" and row["error_code"] == "20429" and row["attempts"] == 1
    wait = (row["next_attempt_at"] - clock.now()).total_seconds()
    assert 0 < wait <= 2  # backoff with jitter: 1-2 s on the first retry (no Retry-After given)
    await sim.configure(error_rates={})
    clock.advance(wait)
    await dispatch(dispatcher)
    assert len(await sim.messages(to=await phone_of(pool, user))) == 1
    assert (await dispatching.row(pool, q))["attempts"] == 2


async def test_a_5xx_is_settled_by_lookup_and_only_then_sent_again(
        pool, settings, world, dispatcher, senders, sim, clock) -> None:
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, next_attempt_at=clock.now(), body="once, please")
    await sim.configure(error_rates={"twilio:20503": 1.0})
    await dispatch(dispatcher)
    assert (await dispatching.row(pool, q))["status"] == "unknown"  # Twilio answered: it may have it
    await sim.configure(error_rates={})
    clock.advance(1)
    await reconcile.Reconciler(pool, settings, senders.for_kind, clock=clock).reconcile_once()
    assert (await dispatching.row(pool, q))["status"] == "queued"  # the lookup found none
    await dispatch(dispatcher)
    assert len(await sim.messages(to=await phone_of(pool, user))) == 1
    assert (await dispatching.row(pool, q))["status"] in ("sent", "delivered")


async def test_21610_marks_the_user_opted_out_with_a_consent_change(pool, world, dispatcher, sim, clock) -> None:
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, next_attempt_at=clock.now(), klass="transactional")
    await sim.configure(error_rates={"twilio:21610": 1.0})
    await dispatch(dispatcher)
    row = await dispatching.row(pool, q)
    assert row["status"] == "failed" and row["error_code"] == "21610"
    [change] = await dispatching.fetch(pool, "SELECT source, state FROM consent_changes WHERE user_id = $1", user)
    assert (change["source"], change["state"]) == ("provider", "opted_out")
    [u] = await dispatching.fetch(pool, "SELECT consent_state FROM users WHERE id = $1", user)
    assert u["consent_state"] == "opted_out"
