"""The dispatcher: claims due queue rows, runs the gates, records every verdict, and sends each message
once under a lease (docs/outbound-design.md, "The row's life").

One cycle:
1. claim (dispatcher.sql `claim`): due rows in priority order, FOR UPDATE SKIP LOCKED, with the user
   FOR SHARE (consent re-read under the lock) and the user's budget row locked, in one transaction
   with 2 below, so any number of dispatchers never exceed a budget;
2. gates 1-6 (gates.evaluate) and the body's rendering in Python, then one statement (`move`) writes
   every row's outcome, its verdict and the charged counters; passed rows are now 'sending' under
   this dispatcher's lease;
3. throughput (gate 7) per sender channel: a row whose bucket is empty goes back to 'deferred' for the
   bucket's wait, its budget charge refunded;
4. sends run concurrently (PARLEY_DISPATCH_CONCURRENCY) while a heartbeat extends the leases; results
   are recorded in batches, fenced by (locked_by, attempts), so a dispatcher that lost its lease can
   never record over a row someone else settled.

A send the provider may have accepted without our knowing (a timeout, a lost connection, a 5xx) is
never retried: the row becomes 'unknown' and services/orchestrator/reconcile.py settles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from db import listen, notify, queries
from db import pool as db_pool
from services import phone as phone_mod
from services.channels.base import ChannelKind, MessageStatus
from services.channels.outbound import ErrorKind, OutboundRequest, Sender, SenderChannel, SendError, SendResult
from services.inbound import store
from services.orchestrator import budget as budget_mod
from services.orchestrator import clock as clock_mod
from services.orchestrator import gates
from services.orchestrator import policy as policy_mod
from services.orchestrator import render as render_mod
from services.orchestrator import throughput as throughput_mod
from services.settings import Settings

Q = queries.load(__file__, "dispatcher.sql")
log = logging.getLogger("parley.orchestrator.dispatcher")

# Which provider module sends for a channel kind (services/channels/senders.py `Senders.for_kind`).
SenderFor = Callable[[ChannelKind], Sender]

REASON_MAX = gates.REASON_MAX
ERROR_MAX = 2000


def default_dispatcher_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def backoff_s(attempts: int, base_s: float = 2.0, cap_s: float = 600.0) -> float:
    """Exponential backoff with full jitter after the `attempts`-th failed send: a burst of throttled
    sends spreads out instead of coming back together."""
    return random.uniform(0.5, 1.0) * min(cap_s, base_s * 2 ** max(0, attempts - 1))


@dataclass(frozen=True, slots=True)
class Charge:
    """A budget charge to give back when its send provably did not go out."""

    user_id: int
    klass: str
    charged_at: datetime  # the claim's now: a refund gives back the window it was counted in
    zone: str
    # last_proactive_at before this charge: a refund puts it back, so that a row held by throughput
    # or refused before acceptance is not spaced against its own claim.
    previous_proactive_at: datetime | None = None
    restore_spacing: bool = False  # whether previous_proactive_at is known (not for a reconciled row)


@dataclass(frozen=True, slots=True)
class InFlight:
    """A row this dispatcher holds as 'sending': what to send, and what to give back if it does not go."""

    id: int
    tenant_id: int
    user_id: int
    klass: str
    attempts: int  # after the claim: the fence
    max_attempts: int
    request: OutboundRequest
    rendered: render_mod.Rendered
    charged_at: datetime  # the claim's now: a refund gives back the window it was counted in
    zone: str
    rate: float
    burst: float
    previous_proactive_at: datetime | None = None

    @property
    def charge(self) -> Charge:
        return Charge(self.user_id, self.klass, self.charged_at, self.zone, self.previous_proactive_at,
                      restore_spacing=True)


@dataclass(slots=True)
class _Outcomes:
    """What one statement (`move`) writes: rows, their verdicts, and budget rows by user."""

    moves: list[dict[str, Any]]
    verdicts: list[dict[str, Any]]
    budgets: dict[int, budget_mod.Counters]

    @classmethod
    def empty(cls) -> _Outcomes:
        return cls([], [], {})

    def add(self, row_id: int, attempts: int, *, claimed: bool, status: str, gate: str, verdict: str,
            reason: str, until: datetime | None = None, detail: Mapping[str, Any] | None = None,
            last_error: str | None = None, error_code: str | None = None, segments: int | None = None,
            encoding: str | None = None, locked_by: str | None = None, sends_template: bool = False) -> None:
        self.moves.append({"id": row_id, "attempts": attempts, "claimed": claimed, "status": status,
                           "locked_by": locked_by, "sends_template": sends_template,
                           "next_attempt_at": until, "last_error": _clip(last_error, ERROR_MAX),
                           "error_code": error_code, "segments": segments, "encoding": encoding})
        self.verdicts.append({"queue_id": row_id, "gate": gate, "verdict": verdict,
                              "reason": _clip(reason, REASON_MAX), "until": until, "detail": dict(detail or {})})

    async def write(self, conn: asyncpg.Connection, dispatcher_id: str, now: datetime,
                    lease_s: float) -> list[asyncpg.Record]:
        if not self.moves:
            return []
        budgets = [_counters_json(user_id, c) for user_id, c in self.budgets.items()]
        rows: list[asyncpg.Record] = await conn.fetch(Q.move, self.moves, self.verdicts, budgets, dispatcher_id,
                                                      now, lease_s, [m["id"] for m in self.moves])
        return rows


def _counters_json(user_id: int, c: budget_mod.Counters) -> dict[str, Any]:
    return {"user_id": user_id, "hour_start": c.hour_start, "hour_count": c.hour_count, "day_start": c.day_start,
            "day_count": c.day_count, "reply_hour_start": c.reply_hour_start,
            "reply_hour_count": c.reply_hour_count, "last_proactive_at": c.last_proactive_at}


class Dispatcher:
    """One claiming loop with its own in-flight sends. Run any number, in any number of processes."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, senders: SenderFor,
                 throughput: throughput_mod.Throughput, *, dsn: str | None = None,
                 clock: clock_mod.Clock = clock_mod.SYSTEM, dispatcher_id: str | None = None,
                 batch_size: int | None = None, concurrency: int | None = None,
                 poll_interval_s: float | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.senders = senders
        self.throughput = throughput
        self.dsn = dsn
        self.clock = clock
        self.dispatcher_id = dispatcher_id or default_dispatcher_id()
        self.batch_size = batch_size or settings.dispatch_batch
        self.concurrency = concurrency or settings.dispatch_concurrency
        self.lease_s = settings.send_lease_s
        self.poll_interval_s = poll_interval_s or settings.poll_interval_s
        self._policies: dict[tuple[Any, ...], policy_mod.Policy] = {}
        self._in_flight: dict[int, InFlight] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._results: list[tuple[InFlight, SendResult | SendError]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None
        self._listener: listen.Listener | None = None
        self.sent = 0  # accepted by a provider, for logs and tests
        self.claimed = 0

    # --- the loop -------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether NOTIFY wake-ups reach this dispatcher now (else it polls)."""
        return self._listener is not None and self._listener.listening

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; then stop claiming, finish the sends in flight, record them,
        and return."""
        listener = None
        if self.dsn is not None:
            # NOTIFY is only a hint: while LISTEN is down we still poll.
            listener = self._listener = listen.Listener(self.dsn, {notify.QUEUE: self._wake.set})
            await listener.start()
        self._heartbeat = asyncio.create_task(self._beat(), name="dispatch-heartbeat")
        stopper = asyncio.create_task(_relay(stop, self._wake), name="dispatch-stop")
        try:
            while not stop.is_set():
                free = self.concurrency - len(self._in_flight)
                if free <= 0:
                    await self._wait_for_slot(stop)
                    continue
                # Cleared before the claim, not after it: a NOTIFY that arrives while this claim runs
                # (rows it may have missed) leaves the event set, and the idle wait below returns at once.
                self._wake.clear()
                try:
                    claimed = await self.dispatch_once(min(self.batch_size, free))
                except Exception:  # noqa: BLE001 - a database hiccup: back off, keep the loop alive
                    log.exception("dispatch cycle failed", extra={"dispatcher_id": self.dispatcher_id})
                    claimed = 0
                if claimed == 0 and not stop.is_set():
                    await self._idle(stop)
        finally:
            stopper.cancel()
            await self.drain()
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            if listener is not None:
                await listener.close()
        log.info("dispatcher stopped", extra={"dispatcher_id": self.dispatcher_id, "sent": self.sent})

    async def _idle(self, stop: asyncio.Event) -> None:
        """Sleep until a NOTIFY, the poll interval, or the next waiting row's due time, whichever first:
        a deferred message goes out within a poll of its window opening, and usually at once."""
        timeout = self.poll_interval_s
        try:
            async with self.pool.acquire() as conn:
                due = await conn.fetchval(Q.next_due, self.clock.now())
            if due is not None:
                timeout = max(0.0, min(timeout, (due - self.clock.now()).total_seconds()))
        except Exception:  # noqa: BLE001 - the poll interval still bounds the sleep
            pass
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _wait_for_slot(self, stop: asyncio.Event) -> None:
        self._wake.clear()
        if stop.is_set() or len(self._in_flight) < self.concurrency:  # freed before the clear
            return
        waiters = [asyncio.ensure_future(self._wake.wait())] + list(self._sends)
        try:
            await asyncio.wait(waiters, timeout=self.poll_interval_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiters[0].cancel()

    async def drain(self) -> None:
        """Wait for every send in flight to finish and its result to be recorded."""
        while self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)
        await self._flush_all()

    # --- claim, gates, record --------------------------------------------------------------------

    async def dispatch_once(self, limit: int | None = None) -> int:
        """One claim: gates and verdicts committed, throughput taken, sends started (not awaited; see
        `drain`). Returns how many rows the claim took."""
        now = self.clock.now()
        in_flight = await self._claim(limit or self.batch_size, now)
        if in_flight is None:
            return 0
        claimed, sending = in_flight
        self.claimed += claimed
        if sending:
            sending = await self._pace(sending, now)
        for item in sending:
            self._start(item)
        return claimed

    async def _claim(self, limit: int, now: datetime) -> tuple[int, list[InFlight]] | None:
        for attempt in range(1, 4):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(Q.claim, limit, now)
                    if not rows:
                        return None
                    outcomes, pending = self._decide(rows, now)
                    moved = await outcomes.write(conn, self.dispatcher_id, now, self.lease_s)
            except asyncpg.DeadlockDetectedError:
                # A STOP's cancellation and this claim lock the same user and queue rows in opposite
                # orders; the database broke the cycle by failing this side. Nothing was written.
                if attempt == 3:
                    raise
                await asyncio.sleep(random.uniform(0, 0.02 * attempt))
                continue
            sending = {r["id"] for r in moved if r["status"] == "sending"}
            return len(rows), [p for p in pending if p.id in sending]
        return None

    def _decide(self, rows: Sequence[asyncpg.Record], now: datetime) -> tuple[_Outcomes, list[InFlight]]:
        outcomes = _Outcomes.empty()
        pending: list[InFlight] = []
        counters: dict[int, budget_mod.Counters] = {}
        for r in rows:
            user_id = r["user_id"]
            current = counters.get(user_id)
            if current is None:
                current = counters[user_id] = budget_mod.Counters.from_row(r)
            policy = self._policy(r)
            candidate = gates.Candidate(
                queue_id=r["id"], klass=r["class"], reason=r["reason"], status=r["status"],
                created_at=r["created_at"], expires_at=r["expires_at"],
                has_template=r["template_name"] is not None, channel_kind=r["channel_kind"],
                consent_state=r["consent_state"], time_zone=r["time_zone"], phone=r["phone"],
                quiet_hours_enabled=r["quiet_hours_enabled"], last_inbound_at=r["last_inbound_at"],
                newer_reply_queued=r["newer_reply_queued"], counters=current, tenant_id=r["tenant_id"],
                user_id=user_id, conversation_id=r["conversation_id"])
            decision = gates.evaluate(candidate, policy, now)
            detail: dict[str, Any] = {"passed": decision.passed, "zone": decision.zone, "by": self.dispatcher_id}
            if decision.action is not gates.Action.SEND:
                outcomes.add(r["id"], r["attempts"], claimed=True, status=decision.status, gate=decision.gate.value,
                             verdict=decision.verdict, reason=decision.reason, until=decision.until, detail=detail,
                             last_error=None if decision.action is gates.Action.DEFER else decision.reason)
                continue
            try:
                item = self._prepare(r, decision, now, policy, current.last_proactive_at)
            except render_mod.RenderError as exc:
                outcomes.add(r["id"], r["attempts"], claimed=True, status="failed", gate="render", verdict="fail",
                             reason=exc.reason, detail=detail, last_error=exc.reason)
                continue
            counters[user_id] = decision.counters
            outcomes.budgets[user_id] = decision.counters
            outcomes.add(r["id"], r["attempts"], claimed=True, status="sending", gate=decision.gate.value,
                         verdict=decision.verdict, reason=decision.reason, detail=detail,
                         segments=item.rendered.segments, encoding=item.rendered.encoding,
                         sends_template=item.rendered.template is not None)
            pending.append(item)
        return outcomes, pending

    def _policy(self, r: Mapping[str, Any]) -> policy_mod.Policy:
        key = (r["tenant_id"], r["tenant_time_zone"], r["tenant_quiet_hours"], r["tenant_budget_hourly"],
               r["tenant_budget_daily"])
        found = self._policies.get(key)
        if found is None:
            if len(self._policies) > 10_000:
                self._policies.clear()
            found = self._policies[key] = policy_mod.tenant_policy(self.settings, {
                "id": r["tenant_id"], "time_zone": r["tenant_time_zone"], "quiet_hours": r["tenant_quiet_hours"],
                "budget_hourly": r["tenant_budget_hourly"], "budget_daily": r["tenant_budget_daily"]})
        return found

    def _prepare(self, r: Mapping[str, Any], decision: gates.Decision, now: datetime,
                 policy: policy_mod.Policy, previous_proactive_at: datetime | None = None) -> InFlight:
        kind = ChannelKind(r["channel_kind"])
        to = r["phone"]
        if not to:
            raise render_mod.RenderError("the user has no phone number to send to")
        rendered = render_mod.render(kind, r["body"], r["template_name"], r["template_language"],
                                     r["template_variables"], use_template=decision.use_template)
        channel = sender_channel(self.settings, r, r["credentials"])
        callback = None
        base = self.settings.public_base
        if base and kind is not ChannelKind.WHATSAPP_CLOUD:
            # The signature Twilio computes covers this URL with its query: the id cannot be altered.
            callback = f"{base}/webhooks/twilio/status?q={r['id']}"
        request = OutboundRequest(queue_id=r["id"], channel=channel, to=to, body=rendered.body,
                                  template=rendered.template, status_callback_url=callback)
        rate = _number(r["send_rate"]) or throughput_mod.default_rate(kind, r["channel_address"])
        burst = _number(r["send_burst"]) or throughput_mod.default_burst(rate)
        # attempts + 1: what `move` makes it, under the claim's lock (the fence of what follows).
        return InFlight(r["id"], r["tenant_id"], r["user_id"], r["class"], r["attempts"] + 1,
                        r["max_attempts"] or self.settings.send_max_attempts,
                        request, rendered, now, decision.zone, rate, burst, previous_proactive_at)

    async def _pace(self, sending: list[InFlight], now: datetime) -> list[InFlight]:
        """Gate 7: take each row's segments from its sender's bucket; rows that do not fit go back to
        'deferred' with their budget charge refunded. Held rows of one sender are spread along its rate
        (each after the tokens of those ahead of it), so a backlog is claimed again at the pace it can
        go, not all at once every time the bucket refills."""
        go: list[InFlight] = []
        held: list[tuple[InFlight, float]] = []
        queued_cost: dict[int, float] = {}  # per sender: tokens of the rows held so far in this batch
        for item in sending:
            channel_id = item.request.channel.id
            if channel_id in queued_cost:  # this sender already holds rows back in this batch: behind them
                ahead = queued_cost[channel_id]
            else:
                wait = await self.throughput.take(channel_id, item.rate, item.burst, item.rendered.cost)
                if wait <= 0:
                    go.append(item)
                    continue
                ahead = wait * item.rate  # the tokens this row is short of
            held.append((item, ahead / item.rate))
            queued_cost[channel_id] = ahead + item.rendered.cost
        if held:
            outcomes = _Outcomes.empty()
            for item, wait in held:
                until = now + timedelta(seconds=wait)
                outcomes.add(item.id, item.attempts, claimed=False, status="deferred", gate="throughput",
                             verdict="defer", reason=f"sender {item.request.channel.id} at its rate of "
                             f"{item.rate:g}/s: {item.rendered.cost} token(s) in {wait:.2f} s", until=until)
            await self._write_with_refunds(outcomes, [item for item, _ in held], now)
        return go

    # --- sending ---------------------------------------------------------------------------------

    def _start(self, item: InFlight) -> None:
        self._in_flight[item.id] = item
        task = asyncio.create_task(self._send(item), name=f"send-{item.id}")
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, item: InFlight) -> None:
        async with self._slots:
            result: SendResult | SendError
            try:
                sender = self.senders(item.request.channel.kind)
                result = await sender.send(item.request)
            except SendError as exc:
                result = exc
            except Exception as exc:  # noqa: BLE001 - a sender broke its contract: we cannot know it did not send
                log.exception("sender raised outside its contract", extra={"queue_id": item.id})
                result = SendError(ErrorKind.TRANSIENT, f"{type(exc).__name__}: {exc}", maybe_sent=True)
        self._results.append((item, result))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="dispatch-record")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            ids = list(self._in_flight)
            if not ids:
                continue
            try:
                async with self.pool.acquire() as conn:
                    await conn.execute(Q.extend_leases, ids, self.dispatcher_id, self.clock.now(), self.lease_s)
            except Exception:  # noqa: BLE001 - a lapsed lease makes the row 'unknown', never a duplicate
                log.warning("lease extension failed", extra={"dispatcher_id": self.dispatcher_id})

    async def _flush_all(self) -> None:
        while self._results or (self._flushing is not None and not self._flushing.done()):
            if self._flushing is not None and not self._flushing.done():
                await asyncio.shield(self._flushing)
            elif self._results:
                await self._flush()

    async def _flush(self) -> None:
        """Record every result that has arrived, in as few statements as there are kinds of result; at
        most one flush runs at a time, so a burst of results shares one commit."""
        while self._results:
            batch, self._results = self._results, []
            for attempt in range(1, 4):
                try:
                    await self._record(batch)
                    break
                except Exception:  # noqa: BLE001 - kept in memory and tried again; the lease covers the wait
                    log.exception("recording send results failed", extra={"results": len(batch),
                                                                           "attempt": attempt})
                    await asyncio.sleep(0.2 * attempt)
            else:
                # Still unrecorded: the leases lapse, the rows become 'unknown', and the reconciler
                # settles them by callback or lookup. A send is never repeated for it.
                log.error("send results left to the reconciler", extra={"results": len(batch)})
            for item, _ in batch:
                self._in_flight.pop(item.id, None)
            self._wake.set()  # slots are free again

    async def _record(self, batch: Sequence[tuple[InFlight, SendResult | SendError]]) -> None:
        now = self.clock.now()
        accepted = [(item, r) for item, r in batch if isinstance(r, SendResult)]
        failed = [(item, r) for item, r in batch if isinstance(r, SendError)]
        if accepted:
            async with self.pool.acquire() as conn, conn.transaction():
                await record_sent(conn, [sent_row(item, r) for item, r in accepted], self.dispatcher_id, now)
            self.sent += len(accepted)
        if failed:
            await self._record_failures(failed, now)

    async def _record_failures(self, failed: Sequence[tuple[InFlight, SendError]], now: datetime) -> None:
        outcomes = _Outcomes.empty()
        refunds: list[InFlight] = []
        opted_out: list[InFlight] = []
        for item, err in failed:
            detail = {"kind": err.kind.value, "code": err.code, "http_status": err.http_status}
            error = str(err)
            if err.maybe_sent:
                outcomes.add(item.id, item.attempts, claimed=False, status="unknown", gate="send",
                             verdict="unknown", reason=f"{err.kind.value}: the provider may have the message; "
                             "settled by its status callback or a lookup", detail=detail, last_error=error,
                             error_code=err.code)
                continue
            refunds.append(item)
            if err.retryable and item.attempts < item.max_attempts:
                delay = err.retry_after_s if err.retry_after_s is not None else backoff_s(item.attempts)
                until = now + timedelta(seconds=max(0.0, delay))
                outcomes.add(item.id, item.attempts, claimed=False, status="queued", gate="send", verdict="retry",
                             reason=f"{err.kind.value}: attempt {item.attempts} of {item.max_attempts}, "
                             f"again in {delay:.1f} s", until=until, detail=detail, last_error=error,
                             error_code=err.code)
            elif err.retryable:
                outcomes.add(item.id, item.attempts, claimed=False, status="failed", gate="send", verdict="fail",
                             reason=f"{err.kind.value}: attempts exhausted ({item.attempts} of "
                             f"{item.max_attempts}); an operator may requeue it", detail=detail,
                             last_error=error, error_code=err.code)
            else:
                if err.kind is ErrorKind.OPTED_OUT:
                    opted_out.append(item)
                outcomes.add(item.id, item.attempts, claimed=False, status="failed", gate="send", verdict="fail",
                             reason=err.kind.value, detail=detail, last_error=error, error_code=err.code)
        await self._write_with_refunds(outcomes, refunds, now, opted_out)

    async def _write_with_refunds(self, outcomes: _Outcomes, refunds: Sequence[InFlight], now: datetime,
                                  opted_out: Sequence[InFlight] = ()) -> None:
        opt_outs = [(i.id, i.user_id, i.request.to) for i in opted_out]
        await write_outcomes(self.pool, outcomes, [i.charge for i in refunds], self.dispatcher_id, now,
                             self.lease_s, opt_outs)


Outcomes = _Outcomes


async def write_outcomes(pool: asyncpg.Pool, outcomes: _Outcomes, refunds: Sequence[Charge], dispatcher_id: str,
                         now: datetime, lease_s: float,
                         opted_out: Sequence[tuple[int, int, str]] = ()) -> list[asyncpg.Record]:
    """Write outcomes for rows that provably did not go out, giving each one's budget charge back under
    the budget row's lock (the counters may have moved since the claim). `opted_out`: (queue id, user
    id, phone) the provider refused as opted out, recorded as consent changes in the same transaction."""
    async def work(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        outcomes.budgets.clear()
        users = sorted({c.user_id for c in refunds})
        if users:
            locked = {r["user_id"]: budget_mod.Counters.from_row(r) for r in await conn.fetch(Q.lock_budgets, users)}
            for c in refunds:
                counters = locked.get(c.user_id)
                if counters is not None:
                    locked[c.user_id] = budget_mod.refund(counters, c.klass, c.charged_at, ZoneInfo(c.zone),
                                                          previous_proactive_at=c.previous_proactive_at,
                                                          restore_spacing=c.restore_spacing)
            outcomes.budgets.update(locked)
        moved = await outcomes.write(conn, dispatcher_id, now, lease_s)
        for queue_id, user_id, to in opted_out:
            await _provider_opt_out(conn, queue_id, user_id, to)
        return moved

    return await db_pool.in_transaction(pool, work)


async def _provider_opt_out(conn: asyncpg.Connection, queue_id: int, user_id: int, to: str) -> None:
    """The provider refused the recipient as opted out: record it as the user's consent change (which
    also cancels what is still waiting for them), unless they already are."""
    state = await conn.fetchval(Q.lock_user, user_id)
    if state == store.ConsentState.OPTED_OUT.value:
        return
    change_id = await store.change_consent(conn, user_id, store.ConsentState.OPTED_OUT, "provider", None, None,
                                           "provider")
    log.warning("provider reports the recipient opted out: consent changed",
                extra={"queue_id": queue_id, "user_id": user_id, "consent_change_id": change_id,
                       "to": phone_mod.mask(to)})


def sender_channel(settings: Settings, r: Mapping[str, Any], credentials: Mapping[str, Any] | None) -> SenderChannel:
    """The channel a row goes out from, from its channels columns and credentials."""
    credentials = credentials or {}
    auth_token = credentials.get("auth_token")
    if settings.twilio_api_key_sid and r["account_sid"] == settings.twilio_account_sid:
        # The settings' account sends with its API key (Twilio's advice); the auth token the channel
        # carries is for checking webhook signatures. The sender takes the key from its defaults.
        auth_token = None
    return SenderChannel(id=r["channel_id"], tenant_id=r["tenant_id"], kind=ChannelKind(r["channel_kind"]),
                         address=r["channel_address"], account_sid=r["account_sid"],
                         messaging_service_sid=r["messaging_service_sid"], auth_token=auth_token,
                         access_token=credentials.get("access_token"))


def sent_row(item: InFlight, result: SendResult) -> dict[str, Any]:
    """One row of `record_sent` for a send the provider accepted."""
    template = item.rendered.template
    return {"id": item.id, "attempts": item.attempts, "provider_message_id": result.provider_message_id,
            "provider_status": _message_status(result.status).value,
            "segments": result.segments or item.rendered.segments, "body": item.rendered.body,
            "template": template.name if template is not None else None}


async def record_sent(conn: asyncpg.Connection, rows: Sequence[Mapping[str, Any]], dispatcher_id: str | None,
                      now: datetime, reason: str = "accepted by the provider as ") -> list[asyncpg.Record]:
    """Record sends a provider has (inside the caller's transaction): the rows become 'sent' (or what a
    callback already said), each with its outbound messages row. `dispatcher_id` None: the reconciler,
    which records only rows still 'unknown'."""
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    await conn.execute(Q.lock_owned, ids)
    recorded: list[asyncpg.Record] = await conn.fetch(Q.record_sent, list(rows), dispatcher_id, now, reason, ids)
    return recorded


def _message_status(status: MessageStatus | str) -> MessageStatus:
    try:
        return MessageStatus(status)
    except ValueError:
        return MessageStatus.ACCEPTED


def _number(value: Decimal | float | None) -> float | None:
    return float(value) if value is not None else None


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _relay(stop: asyncio.Event, wake: asyncio.Event) -> None:
    await stop.wait()
    wake.set()


