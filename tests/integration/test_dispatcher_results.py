"""What the dispatcher does with each kind of provider answer, decided from SendError's flags alone, and
how the reconciler settles sends whose outcome is unknown.

The provider here is scripted (each send answers what the test says) because these tests are about the
dispatcher's decisions; the provider modules' own mapping of codes to flags is tested against the
provider simulator over HTTP (tests/integration/test_dispatch_e2e.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from db import pool as db_pool
from services.channels.base import ChannelKind, MessageStatus
from services.channels.outbound import ErrorKind, Found, OutboundRequest, Sender, SendError, SendResult
from services.orchestrator import clock as clock_mod
from services.orchestrator import dispatcher as dispatcher_mod
from services.orchestrator import reconcile
from services.orchestrator import throughput as throughput_mod
from tests import dispatching, support

T0 = datetime(2030, 6, 3, 15, 0, tzinfo=UTC)


class Scripted:
    """Answers each send with the next scripted result; an asyncio.Event holds the call until set."""

    def __init__(self, *answers: SendResult | SendError | asyncio.Event, can_lookup: bool = True) -> None:
        self.answers = list(answers)
        self.requests: list[OutboundRequest] = []
        self.can_lookup = can_lookup
        self.lookups: list[tuple[int, datetime]] = []
        self.looked_for: list[OutboundRequest] = []
        self.found: Found | None = None

    async def send(self, request: OutboundRequest) -> SendResult:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else SendResult(f"SM{len(self.requests):032x}",
                                                                     MessageStatus.QUEUED)
        if isinstance(answer, asyncio.Event):
            await answer.wait()
            return SendResult(f"SMlate{request.queue_id:028x}", MessageStatus.QUEUED)
        if isinstance(answer, SendError):
            raise answer
        return answer

    async def lookup(self, request: OutboundRequest, since: datetime) -> Found | None:
        self.lookups.append((request.queue_id, since))
        self.looked_for.append(request)
        return self.found


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db_pool.create(database_url, 6)
    yield p
    await p.close()


@pytest.fixture
def settings(database_url: str) -> Any:
    return support.make_settings(database_url, PARLEY_QUIET_HOURS="", PARLEY_SEND_LEASE_S=30,
                                 PARLEY_UNKNOWN_GRACE_S=60, PARLEY_UNKNOWN_TIMEOUT_S=3600)


@pytest.fixture
async def world(pool: asyncpg.Pool, settings: Any) -> dispatching.World:
    return await dispatching.world(pool, settings)


@pytest.fixture
def clock() -> clock_mod.ManualClock:
    return clock_mod.ManualClock(T0)


def make(pool: asyncpg.Pool, settings: Any, sender: Scripted, clock: clock_mod.Clock) -> dispatcher_mod.Dispatcher:
    def senders(kind: ChannelKind) -> Sender:
        return sender

    return dispatcher_mod.Dispatcher(pool, settings, senders, throughput_mod.Throughput(), clock=clock,
                                     dispatcher_id="d1")


def reconciler(pool: asyncpg.Pool, settings: Any, sender: Scripted, clock: clock_mod.Clock) -> reconcile.Reconciler:
    return reconcile.Reconciler(pool, settings, lambda kind: sender, clock=clock, reconciler_id="r1")


async def dispatch(d: dispatcher_mod.Dispatcher) -> None:
    await d.dispatch_once()
    await d.drain()


async def budget(pool: asyncpg.Pool, user_id: int) -> asyncpg.Record:
    [row] = await dispatching.fetch(pool, "SELECT * FROM user_message_budget WHERE user_id = $1", user_id)
    return row


async def test_throttled_goes_back_in_line_after_retry_after_with_its_budget_refunded(
        pool, settings, world, clock) -> None:
    sender = Scripted(SendError(ErrorKind.THROTTLED, "Too Many Requests", code="20429", http_status=429,
                                retry_after_s=45))
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, klass="marketing")
    await dispatch(d)
    row = await dispatching.row(pool, q)
    assert row["status"] == "queued" and row["attempts"] == 1 and row["locked_by"] is None
    assert row["next_attempt_at"] == T0 + timedelta(seconds=45) and row["error_code"] == "20429"
    assert (await dispatching.verdicts(pool, q))[-1][:2] == ("send", "retry")
    b = await budget(pool, user)
    assert b["hour_count"] == 0 and b["day_count"] == 0  # refunded: it did not go
    # Due again at 45 s (past the 30 s spacing, which a refund leaves as it was): the second attempt.
    clock.advance(45)
    await dispatch(d)
    row = await dispatching.row(pool, q)
    assert row["status"] == "sent" and row["attempts"] == 2 and len(sender.requests) == 2


async def test_transient_without_retry_after_backs_off_with_jitter(pool, settings, world, clock) -> None:
    sender = Scripted(SendError(ErrorKind.TRANSIENT, "connection refused"))
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv)
    await dispatch(d)
    row = await dispatching.row(pool, q)
    assert row["status"] == "queued"
    # First retry: 2 s base, full jitter between half and all of it.
    assert T0 + timedelta(seconds=1) <= row["next_attempt_at"] <= T0 + timedelta(seconds=2)


async def test_the_last_attempt_fails_the_row_for_an_operator(pool, settings, world, clock) -> None:
    sender = Scripted(SendError(ErrorKind.TRANSIENT, "503 Service Unavailable", http_status=503))
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, max_attempts=1)
    await dispatch(d)
    row = await dispatching.row(pool, q)
    assert row["status"] == "failed" and row["attempts"] == 1
    gate, verdict, reason = (await dispatching.verdicts(pool, q))[-1]
    assert (gate, verdict) == ("send", "fail") and "attempts exhausted" in reason


async def test_a_row_without_its_own_limit_takes_parley_send_max_attempts(pool, database_url, world, clock) -> None:
    # The outbox leaves max_attempts NULL: the setting, read when the row is attempted, decides.
    two = support.make_settings(database_url, PARLEY_QUIET_HOURS="", PARLEY_SEND_MAX_ATTEMPTS=2)
    sender = Scripted(*[SendError(ErrorKind.TRANSIENT, "503 Service Unavailable", http_status=503)] * 3)
    d = make(pool, two, sender, clock)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv)
    await dispatch(d)
    assert (await dispatching.row(pool, q))["status"] == "queued"
    clock.advance(3600)
    await dispatch(d)
    row = await dispatching.row(pool, q)
    assert row["status"] == "failed" and row["attempts"] == 2 and row["max_attempts"] is None
    assert "attempts exhausted (2 of 2" in (await dispatching.verdicts(pool, q))[-1][2]
    assert len(sender.requests) == 2


async def test_maybe_sent_becomes_unknown_and_is_never_retried_blindly(pool, settings, world, clock) -> None:
    sender = Scripted(SendError(ErrorKind.TRANSIENT, "read timeout", maybe_sent=True))
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, klass="transactional")
    await dispatch(d)
    row = await dispatching.row(pool, q)
    assert row["status"] == "unknown" and row["locked_until"] is None and row["locked_by"] == "d1"
    assert (await budget(pool, user))["hour_count"] == 1  # it may have gone: still counted
    clock.advance(3600)
    await dispatch(d)
    assert len(sender.requests) == 1


async def test_a_provider_opt_out_marks_the_user_opted_out_with_a_consent_change(pool, settings, world, clock) -> None:
    sender = Scripted(SendError(ErrorKind.OPTED_OUT, "Attempt to send to unsubscribed recipient", code="21610"))
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, klass="transactional")
    later = await dispatching.enqueue(pool, world, user, conv, klass="marketing",
                                      next_attempt_at=T0 + timedelta(hours=1))
    await dispatch(d)
    row = await dispatching.row(pool, q)
    assert row["status"] == "failed" and row["error_code"] == "21610" and row["last_error"].startswith("opted_out")
    [u] = await dispatching.fetch(pool, "SELECT consent_state FROM users WHERE id = $1", user)
    assert u["consent_state"] == "opted_out"
    [change] = await dispatching.fetch(pool, "SELECT * FROM consent_changes WHERE user_id = $1", user)
    assert change["source"] == "provider" and change["state"] == "opted_out"
    assert (await dispatching.row(pool, later))["status"] == "canceled"


async def test_a_status_that_came_before_the_send_was_recorded_is_applied_when_it_is(
        pool, settings, world, clock) -> None:
    sid = "SM" + "ab" * 16
    sender = Scripted(SendResult(sid, MessageStatus.QUEUED, 1))
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv)
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO message_statuses (tenant_id, provider, provider_message_id, status) "
                           "VALUES ($1, 'twilio', $2, 'delivered')", world.tenant_id, sid)
    await dispatch(d)
    assert (await dispatching.row(pool, q))["status"] == "delivered"
    [msg] = await dispatching.fetch(pool, "SELECT status FROM messages WHERE provider_message_id = $1", sid)
    assert msg["status"] == "delivered"


async def test_a_lapsed_lease_becomes_unknown_and_the_late_result_is_still_recorded_once(
        pool, settings, world, clock) -> None:
    hold = asyncio.Event()
    sender = Scripted(hold)
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv)
    await d.dispatch_once()
    while not sender.requests:
        await asyncio.sleep(0.01)
    clock.advance(31)
    assert await reconciler(pool, settings, sender, clock).reconcile_once() == (1, 0)
    assert (await dispatching.row(pool, q))["status"] == "unknown"
    hold.set()
    await d.drain()
    row = await dispatching.row(pool, q)
    assert row["status"] == "sent" and row["provider_message_id"] == f"SMlate{q:028x}"
    assert len(sender.requests) == 1
    assert [(g, v) for g, v, _ in await dispatching.verdicts(pool, q)] == [
        ("all", "pass"), ("reconcile", "unknown"), ("send", "sent")]


async def test_spacing_counts_from_the_providers_acceptance_not_from_the_claim(pool, settings, world, clock) -> None:
    # The send is held while the clock moves 2 s: the next proactive message may go 30 s after the
    # acceptance (T0 + 2 s), not 30 s after the claim.
    hold = asyncio.Event()
    sender = Scripted(hold)
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world)
    await dispatching.enqueue(pool, world, user, conv, klass="transactional")
    start = clock.now()
    await d.dispatch_once()
    while not sender.requests:
        await asyncio.sleep(0.01)
    clock.advance(2)
    hold.set()
    await d.drain()
    assert (await budget(pool, user))["last_proactive_at"] == start + timedelta(seconds=2)
    q2 = await dispatching.enqueue(pool, world, user, conv, klass="transactional", next_attempt_at=clock.now())
    clock.advance(29)  # 31 s after the claim, 29 s after the acceptance
    await dispatch(d)
    row = await dispatching.row(pool, q2)
    assert row["status"] == "deferred" and row["next_attempt_at"] == start + timedelta(seconds=32)
    assert len(sender.requests) == 1


async def test_an_unknown_twilio_send_found_by_lookup_is_recorded_as_sent(pool, settings, world, clock) -> None:
    sender = Scripted(SendError(ErrorKind.TRANSIENT, "read timeout", maybe_sent=True))
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv)
    await dispatch(d)
    r = reconciler(pool, settings, sender, clock)
    clock.advance(59)
    assert await r.reconcile_once() == (0, 0)  # still inside the grace: a callback may yet come
    clock.advance(1)
    sender.found = Found("SM" + "cd" * 16, MessageStatus.SENT)
    assert await r.reconcile_once() == (0, 1)
    assert sender.lookups == [(q, T0)]
    row = await dispatching.row(pool, q)
    assert row["status"] == "sent" and row["provider_message_id"] == "SM" + "cd" * 16
    assert len(await dispatching.fetch(pool, "SELECT 1 FROM messages WHERE conversation_id = $1", conv)) == 1
    assert len(sender.requests) == 1


async def test_an_unknown_send_the_provider_provably_lacks_is_sent_again(pool, settings, world, clock) -> None:
    sender = Scripted(SendError(ErrorKind.TRANSIENT, "connection reset", maybe_sent=True))
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world)
    q = await dispatching.enqueue(pool, world, user, conv, klass="marketing")
    await dispatch(d)
    clock.advance(60)
    await reconciler(pool, settings, sender, clock).reconcile_once()
    row = await dispatching.row(pool, q)
    assert row["status"] == "queued" and row["locked_by"] is None
    assert (await dispatching.verdicts(pool, q))[-1][:2] == ("reconcile", "requeue")
    assert (await budget(pool, user))["hour_count"] == 0
    await dispatch(d)
    assert (await dispatching.row(pool, q))["status"] == "sent"
    assert len(sender.requests) == 2


async def test_an_unknown_whatsapp_send_fails_unknown_after_the_timeout(pool, settings, world, clock) -> None:
    sender = Scripted(SendError(ErrorKind.TRANSIENT, "read timeout", maybe_sent=True), can_lookup=False)
    d = make(pool, settings, sender, clock)
    user, conv = await dispatching.person(pool, world, channel_id=world.whatsapp_channel_id,
                                          last_inbound_at=T0 - timedelta(minutes=5))
    q = await dispatching.enqueue(pool, world, user, conv)
    await dispatch(d)
    r = reconciler(pool, settings, sender, clock)
    clock.advance(3599)
    await r.reconcile_once()
    assert (await dispatching.row(pool, q))["status"] == "unknown"
    clock.advance(61)
    await r.reconcile_once()
    row = await dispatching.row(pool, q)
    assert row["status"] == "failed" and row["error_code"] == "failed_unknown"
    assert sender.lookups == []


async def test_the_lookup_for_an_unknown_template_send_looks_for_the_template(pool, settings, world, clock) -> None:
    sender = Scripted(SendError(ErrorKind.TRANSIENT, "read timeout", maybe_sent=True))
    d = make(pool, settings, sender, clock)
    async with pool.acquire() as conn:
        wa = await conn.fetchval("INSERT INTO channels (tenant_id, kind, address, account_sid, credentials) "
                                 "VALUES ($1, 'twilio_whatsapp', '+14155550111', $2, $3) RETURNING id",
                                 world.tenant_id, support.ACCOUNT_SID, {"auth_token": support.AUTH_TOKEN})
    user, conv = await dispatching.person(pool, world, channel_id=wa, last_inbound_at=T0 - timedelta(hours=25))
    content_sid = "HX" + "1" * 32
    await dispatching.enqueue(pool, world, user, conv, klass="transactional", body="Your order shipped",
                              template=content_sid)
    await dispatch(d)
    assert sender.requests[0].template is not None and sender.requests[0].body is None
    clock.advance(60)
    await reconciler(pool, settings, sender, clock).reconcile_once()
    [looked] = sender.looked_for
    assert looked.body is None and looked.template is not None and looked.template.name == content_sid
