"""The dispatcher's claim, gates and verdicts against the real schema: every gate's decision is
recorded, in the claiming transaction, with the row's move and the budget counters.

Time is a ManualClock: quiet hours, windows, budgets and spacing are walked through, not waited for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from db import pool as db_pool
from services.channels.base import ChannelKind, MessageStatus
from services.channels.outbound import OutboundRequest, Sender, SendResult
from services.orchestrator import clock as clock_mod
from services.orchestrator import dispatcher as dispatcher_mod
from services.orchestrator import throughput as throughput_mod
from tests import dispatching, support

# A Monday, 15:00 UTC: outside the default quiet hours in UTC.
T0 = datetime(2030, 6, 3, 15, 0, tzinfo=UTC)


class Accepting:
    """Stands in for a provider module in tests that are about the gates, not the provider: accepts
    everything and remembers it. Tests of sending use the provider simulator."""

    can_lookup = True

    def __init__(self) -> None:
        self.requests: list[OutboundRequest] = []

    async def send(self, request: OutboundRequest) -> SendResult:
        self.requests.append(request)
        return SendResult(f"SM{len(self.requests):032x}", MessageStatus.QUEUED, None)

    async def lookup(self, request: OutboundRequest, since: datetime) -> None:
        return None


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db_pool.create(database_url, 6)
    yield p
    await p.close()


@pytest.fixture
def settings(database_url: str) -> Any:
    return support.make_settings(database_url, PARLEY_QUIET_HOURS="21:00-08:00", PARLEY_TIME_ZONE="UTC")


@pytest.fixture
async def world(pool: asyncpg.Pool, settings: Any) -> dispatching.World:
    return await dispatching.world(pool, settings)


@pytest.fixture
def clock() -> clock_mod.ManualClock:
    return clock_mod.ManualClock(T0)


@pytest.fixture
def sender() -> Accepting:
    return Accepting()


@pytest.fixture
def dispatcher(pool: asyncpg.Pool, settings: Any, sender: Accepting,
               clock: clock_mod.ManualClock) -> dispatcher_mod.Dispatcher:
    def senders(kind: ChannelKind) -> Sender:
        return sender

    return dispatcher_mod.Dispatcher(pool, settings, senders, throughput_mod.Throughput(), clock=clock,
                                     dispatcher_id="test-dispatcher")


async def dispatch(d: dispatcher_mod.Dispatcher) -> int:
    claimed = await d.dispatch_once()
    await d.drain()
    return claimed


async def test_a_passing_reply_is_sent_once_with_one_pass_verdict_and_an_outbound_message_row(
        pool, world, dispatcher, sender) -> None:
    user, conv = await dispatching.person(pool, world, last_inbound_at=T0 - timedelta(minutes=1))
    q = await dispatching.enqueue(pool, world, user, conv, body="Hi, your table is booked")
    assert await dispatch(dispatcher) == 1
    row = await dispatching.row(pool, q)
    assert row["status"] == "sent"
    assert row["attempts"] == 1 and row["segments"] == 1 and row["encoding"] == "gsm7"
    assert row["provider_message_id"] == f"SM{1:032x}"
    verdicts = await dispatching.verdicts(pool, q)
    assert [(g, v) for g, v, _ in verdicts] == [("all", "pass"), ("send", "sent")]
    [msg] = await dispatching.fetch(pool, "SELECT * FROM messages WHERE conversation_id = $1", conv)
    assert msg["direction"] == "outbound" and msg["body"] == "Hi, your table is booked"
    assert msg["provider_message_id"] == row["provider_message_id"] and msg["details"]["queue_id"] == q
    [request] = sender.requests
    assert request.to == (await dispatching.fetch(pool, "SELECT phone FROM users WHERE id = $1", user))[0]["phone"]
    assert request.status_callback_url == f"{support.PUBLIC_BASE}/webhooks/twilio/status?q={q}"
    # Nothing is due any more: a second claim takes nothing and sends nothing.
    assert await dispatch(dispatcher) == 0
    assert len(sender.requests) == 1


async def test_an_opted_out_user_is_suppressed_at_claim_time_but_the_opt_out_confirmation_goes(
        pool, world, dispatcher, sender) -> None:
    user, conv = await dispatching.person(pool, world)
    reply = await dispatching.enqueue(pool, world, user, conv, klass="reply")
    confirmation = await dispatching.enqueue(pool, world, user, conv, klass="compliance",
                                             body="You are unsubscribed.")
    # Opted out after the rows were queued, without the STOP's own cancellation (a direct UPDATE): the
    # claim must read consent again, under the user's lock.
    async with pool.acquire() as conn:
        await conn.execute("UPDATE users SET consent_state = 'opted_out' WHERE id = $1", user)
    await dispatch(dispatcher)
    assert (await dispatching.row(pool, reply))["status"] == "suppressed"
    assert (await dispatching.verdicts(pool, reply))[0][:2] == ("opt_out", "suppress")
    assert (await dispatching.row(pool, confirmation))["status"] == "sent"
    assert [r.queue_id for r in sender.requests] == [confirmation]


async def test_a_reply_is_superseded_when_the_user_wrote_again_and_a_newer_reply_is_queued(
        pool, world, dispatcher, sender) -> None:
    user, conv = await dispatching.person(pool, world, last_inbound_at=T0 - timedelta(seconds=30))
    old = await dispatching.enqueue(pool, world, user, conv, created_at=T0 - timedelta(minutes=5), body="old answer")
    new = await dispatching.enqueue(pool, world, user, conv, created_at=T0 - timedelta(seconds=10), body="new answer")
    await dispatch(dispatcher)
    assert (await dispatching.row(pool, old))["status"] == "superseded"
    assert (await dispatching.verdicts(pool, old))[0][:2] == ("staleness", "supersede")
    assert (await dispatching.row(pool, new))["status"] == "sent"
    assert [r.body for r in sender.requests] == ["new answer"]


async def test_a_row_past_expires_at_is_expired_and_never_sent(pool, world, dispatcher, sender) -> None:
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, klass="transactional",
                                  expires_at=T0 - timedelta(seconds=1))
    await dispatch(dispatcher)
    assert (await dispatching.row(pool, q))["status"] == "expired"
    assert (await dispatching.verdicts(pool, q))[0][:2] == ("expiry", "expire")
    assert sender.requests == []


async def test_outside_the_whatsapp_window_the_template_goes_or_the_row_fails_window_closed(
        pool, world, dispatcher, sender) -> None:
    user, conv = await dispatching.person(pool, world, channel_id=world.whatsapp_channel_id,
                                          last_inbound_at=T0 - timedelta(hours=25))
    with_template = await dispatching.enqueue(pool, world, user, conv, klass="transactional",
                                              template="order_update")
    user2, conv2 = await dispatching.person(pool, world, channel_id=world.whatsapp_channel_id,
                                            last_inbound_at=T0 - timedelta(hours=25))
    without = await dispatching.enqueue(pool, world, user2, conv2, klass="transactional")
    await dispatch(dispatcher)
    assert (await dispatching.row(pool, with_template))["status"] == "sent"
    [request] = sender.requests
    assert request.queue_id == with_template and request.body is None
    assert request.template is not None and request.template.name == "order_update"
    failed = await dispatching.row(pool, without)
    assert failed["status"] == "failed" and failed["last_error"] == "window_closed"
    assert (await dispatching.verdicts(pool, without))[0] == ("window", "fail", "window_closed")


async def test_quiet_hours_defer_to_the_window_end_and_the_row_is_released_then(
        pool, world, dispatcher, sender, clock) -> None:
    clock.set(datetime(2030, 6, 3, 22, 30, tzinfo=UTC))
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, klass="marketing", next_attempt_at=clock.now())
    await dispatch(dispatcher)
    row = await dispatching.row(pool, q)
    morning = datetime(2030, 6, 4, 8, 0, tzinfo=UTC)
    assert row["status"] == "deferred" and row["next_attempt_at"] == morning
    assert (await dispatching.verdicts(pool, q))[0][:2] == ("quiet_hours", "defer")
    clock.set(morning - timedelta(seconds=1))
    assert await dispatch(dispatcher) == 0  # not due yet: not even claimed
    clock.set(morning)
    assert await dispatch(dispatcher) == 1
    assert (await dispatching.row(pool, q))["status"] == "sent"
    assert [v for _, v, _ in await dispatching.verdicts(pool, q)] == ["defer", "pass", "sent"]


async def test_budget_and_spacing_defer_and_the_counters_move_in_the_claim(
        pool, world, dispatcher, sender, clock) -> None:
    user, conv = await dispatching.person(pool, world)
    rows = [await dispatching.enqueue(pool, world, user, conv, klass="marketing", body=f"offer {i}",
                                      next_attempt_at=T0) for i in range(3)]
    await dispatch(dispatcher)
    statuses = [(await dispatching.row(pool, q))["status"] for q in rows]
    assert statuses == ["sent", "deferred", "deferred"]
    assert (await dispatching.verdicts(pool, rows[1]))[0][0] == "spacing"
    [budget] = await dispatching.fetch(pool, "SELECT * FROM user_message_budget WHERE user_id = $1", user)
    assert budget["hour_count"] == 1 and budget["day_count"] == 1 and budget["last_proactive_at"] == T0
    # 30 s later the second goes; the third then waits for the hourly budget (2 an hour).
    clock.advance(30)
    await dispatch(dispatcher)
    clock.advance(30)
    await dispatch(dispatcher)
    third = await dispatching.row(pool, rows[2])
    assert [(await dispatching.row(pool, q))["status"] for q in rows[:2]] == ["sent", "sent"]
    assert third["status"] == "deferred" and third["next_attempt_at"] == datetime(2030, 6, 3, 16, 0, tzinfo=UTC)
    assert (await dispatching.verdicts(pool, rows[2]))[-1][:2] == ("budget", "defer")
    assert len(sender.requests) == 2


async def test_a_body_over_the_providers_limit_fails_with_its_reason(pool, world, dispatcher, sender) -> None:
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, body="x" * 1601)
    await dispatch(dispatcher)
    row = await dispatching.row(pool, q)
    assert row["status"] == "failed"
    assert row["last_error"] == "body too long: 1601 characters, the provider accepts at most 1600"
    assert (await dispatching.verdicts(pool, q))[0][:2] == ("render", "fail")
    assert sender.requests == []
    # Nothing was charged for it.
    [budget] = await dispatching.fetch(pool, "SELECT * FROM user_message_budget WHERE user_id = $1", user)
    assert budget["reply_hour_count"] == 0


async def test_a_proactive_row_held_by_throughput_is_not_spaced_against_its_own_claim(
        pool, world, dispatcher, sender) -> None:
    # Found in the sandbox: an operator message held 0.2 s by the sender's rate then waited 30 s for
    # spacing, because its own claim had set last_proactive_at.
    async with pool.acquire() as conn:
        await conn.execute("UPDATE channels SET send_rate = 1, send_burst = 1 WHERE id = $1", world.sms_channel_id)
    someone, their_conv = await dispatching.person(pool, world)
    user, conv = await dispatching.person(pool, world)
    await dispatching.enqueue(pool, world, someone, their_conv, body="takes the token", priority=10)
    held = await dispatching.enqueue(pool, world, user, conv, klass="transactional", body="held")
    await dispatch(dispatcher)
    assert (await dispatching.row(pool, held))["status"] == "deferred"
    [budget] = await dispatching.fetch(pool, "SELECT * FROM user_message_budget WHERE user_id = $1", user)
    assert budget["last_proactive_at"] is None and budget["hour_count"] == 0


async def test_throughput_holds_a_row_back_as_deferred_with_its_budget_refunded(
        pool, world, dispatcher, sender) -> None:
    async with pool.acquire() as conn:
        await conn.execute("UPDATE channels SET send_rate = 1, send_burst = 1 WHERE id = $1", world.sms_channel_id)
    user, conv = await dispatching.person(pool, world)
    first = await dispatching.enqueue(pool, world, user, conv, body="one")
    second = await dispatching.enqueue(pool, world, user, conv, body="two")
    await dispatch(dispatcher)
    assert (await dispatching.row(pool, first))["status"] == "sent"
    held = await dispatching.row(pool, second)
    assert held["status"] == "deferred" and held["attempts"] == 0 and held["locked_by"] is None
    assert [(g, v) for g, v, _ in await dispatching.verdicts(pool, second)] == [("all", "pass"),
                                                                                ("throughput", "defer")]
    [budget] = await dispatching.fetch(pool, "SELECT * FROM user_message_budget WHERE user_id = $1", user)
    assert budget["reply_hour_count"] == 1  # charged twice in the claim, one given back
