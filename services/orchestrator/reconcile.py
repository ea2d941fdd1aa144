"""Settling sends whose outcome we never learned (issue 11, section 4: exactly once).

A row is 'sending' under its dispatcher's lease while the provider call is in flight. When the lease
lapses (the dispatcher died) or the call ended in a way that may have created the message (a timeout,
a lost connection, a 5xx), the row is 'unknown', and only this module moves it on:
- a status callback for it (carrying our queue id) records it as sent, delivered or failed;
- for Twilio, after PARLEY_UNKNOWN_GRACE_S, a lookup (messages to that number since the attempt
  began): found, it is recorded as sent; provably absent, it goes back in line ('queued', its budget
  charge refunded) and is sent again;
- WhatsApp Cloud has no lookup: after PARLEY_UNKNOWN_TIMEOUT_S with no callback, the row fails with
  reason failed_unknown, for an operator to look at (and requeue if they know better).

Status callbacks also move recorded rows forward (sent -> delivered -> read, or failed/undelivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from db import notify, queries
from db import pool as db_pool
from services.channels.base import ChannelKind, StatusUpdate
from services.channels.outbound import OutboundRequest, SendError
from services.inbound import statuses
from services.orchestrator import clock as clock_mod
from services.orchestrator import dispatcher as dispatcher_mod
from services.orchestrator import policy as policy_mod
from services.orchestrator import render as render_mod
from services.settings import Settings

Q = queries.load(__file__, "reconcile.sql")
log = logging.getLogger("parley.orchestrator.reconcile")

FAILED_UNKNOWN = "failed_unknown"


class Reconciler:
    """Lapsed leases to 'unknown', and 'unknown' rows settled. Any number may run; each row is taken
    by one at a time (SKIP LOCKED, and a grace during which others skip it)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, senders: dispatcher_mod.SenderFor, *,
                 clock: clock_mod.Clock = clock_mod.SYSTEM, reconciler_id: str | None = None,
                 interval_s: float | None = None, batch_size: int = 100) -> None:
        self.pool = pool
        self.settings = settings
        self.senders = senders
        self.clock = clock
        self.reconciler_id = reconciler_id or "reconciler:" + dispatcher_mod.default_dispatcher_id()
        self.interval_s = interval_s or max(0.2, min(settings.send_lease_s / 3, settings.poll_interval_s))
        self.batch_size = batch_size

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.reconcile_once()
            except Exception:  # noqa: BLE001 - a database hiccup: the next round tries again
                log.exception("reconcile round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def reconcile_once(self) -> tuple[int, int]:
        """One round: (leases lapsed to unknown, unknown rows looked at)."""
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            lapsed = await conn.fetch(Q.lapse, now, self.batch_size)
        if lapsed:
            log.warning("send leases lapsed: outcomes unknown", extra={"queue_ids": [r["id"] for r in lapsed][:20]})
        async with self.pool.acquire() as conn:
            due = await conn.fetch(Q.take_unknown, now, self.settings.unknown_grace_s, self.batch_size)
        for row in due:
            try:
                await self._settle(row, now)
            except Exception:  # noqa: BLE001 - one row's trouble must not stop the others; it comes back
                log.exception("settling an unknown send failed", extra={"queue_id": row["id"]})
        return len(lapsed), len(due)

    async def _settle(self, row: asyncpg.Record, now: datetime) -> None:
        kind = ChannelKind(row["channel_kind"])
        sender = self.senders(kind)
        started = row["send_started_at"] or now
        if not sender.can_lookup:
            if now - started >= timedelta(seconds=self.settings.unknown_timeout_s):
                await self._give_up(row, now)
            return
        request = await self._request(row)
        if request is None:
            return
        try:
            found = await sender.lookup(request, started)
        except SendError as exc:
            log.warning("provider lookup failed; trying again later",
                        extra={"queue_id": row["id"], "error": str(exc)[:200]})
            return
        if found is not None:
            async with self.pool.acquire() as conn, conn.transaction():
                await dispatcher_mod.record_sent(conn, [{
                    "id": row["id"], "attempts": row["attempts"], "provider_message_id": found.provider_message_id,
                    "provider_status": found.status.value, "error_code": found.error_code,
                    "segments": row["segments"], "body": request.body,
                    "template": request.template.name if request.template else None}],
                    None, now, "found at the provider by lookup: ")
            log.info("unknown send found at the provider", extra={"queue_id": row["id"]})
            return
        await self._requeue(row, now)

    async def _give_up(self, row: asyncpg.Record, now: datetime) -> None:
        outcomes = dispatcher_mod.Outcomes.empty()
        outcomes.add(row["id"], row["attempts"], claimed=False, locked_by=row["locked_by"], status="failed",
                     gate="reconcile", verdict="fail", reason=FAILED_UNKNOWN,
                     last_error=f"{FAILED_UNKNOWN}: no status from the provider within "
                                f"{self.settings.unknown_timeout_s:g} s and no lookup to ask it; "
                                "an operator may requeue",
                     error_code=FAILED_UNKNOWN)
        await dispatcher_mod.write_outcomes(self.pool, outcomes, [], self.reconciler_id, now,
                                            self.settings.send_lease_s)
        log.warning("unknown send given up on", extra={"queue_id": row["id"], "reason": FAILED_UNKNOWN})

    async def _requeue(self, row: asyncpg.Record, now: datetime) -> None:
        """The provider provably does not have it: back in line, its budget charge given back."""
        outcomes = dispatcher_mod.Outcomes.empty()
        exhausted = row["attempts"] >= (row["max_attempts"] or self.settings.send_max_attempts)
        outcomes.add(row["id"], row["attempts"], claimed=False, locked_by=row["locked_by"],
                     status="failed" if exhausted else "queued", gate="reconcile",
                     verdict="fail" if exhausted else "requeue",
                     reason=("the provider has no such message and attempts are exhausted" if exhausted
                             else "the provider has no such message: sending it again"),
                     until=None if exhausted else now)
        policy = policy_mod.tenant_policy(self.settings, {
            "id": row["tenant_id"], "time_zone": row["tenant_time_zone"], "quiet_hours": row["tenant_quiet_hours"],
            "budget_hourly": row["tenant_budget_hourly"], "budget_daily": row["tenant_budget_daily"]})
        zone = policy_mod.recipient_zone(row["time_zone"], row["phone"], policy)
        charge = dispatcher_mod.Charge(row["user_id"], row["class"], row["send_started_at"] or now, zone.key)
        await dispatcher_mod.write_outcomes(self.pool, outcomes, [charge], self.reconciler_id, now,
                                            self.settings.send_lease_s)
        if not exhausted:
            notify.wake(self.pool, notify.QUEUE)
        log.info("unknown send absent at the provider: requeued", extra={"queue_id": row["id"]})

    async def _request(self, row: Mapping[str, Any]) -> OutboundRequest | None:
        if not row["phone"]:
            return None
        async with self.pool.acquire() as conn:
            credentials = await conn.fetchval(Q.channel_credentials, row["channel_id"])
        kind = ChannelKind(row["channel_kind"])
        try:
            rendered = render_mod.render(kind, row["body"], row["template_name"], row["template_language"],
                                         row["template_variables"], use_template=row["sends_template"])
        except render_mod.RenderError:
            rendered = render_mod.Rendered(row["body"], None, None, None)
        channel = dispatcher_mod.sender_channel(self.settings, row, credentials)
        return OutboundRequest(queue_id=row["id"], channel=channel, to=row["phone"], body=rendered.body,
                               template=rendered.template)


async def record_status(pool: asyncpg.Pool, tenant_id: int, update: StatusUpdate,
                        clock: clock_mod.Clock = clock_mod.SYSTEM) -> int | None:
    """A verified status callback for `tenant_id`: kept (services/inbound/statuses.py), applied to its
    messages row, and to its queue row: an 'unknown' row is settled (the provider has the message), a
    recorded one moves forward. Returns what statuses.record returns."""
    now = clock.now()

    async def work(conn: asyncpg.Connection) -> int | None:
        # The queue row first: a dispatcher recording this send holds it until its commit, so either it
        # sees this callback's row in message_statuses, or this sees its messages row.
        queue = await conn.fetchrow(Q.lock_for_status, tenant_id, update.queue_id, update.provider_message_id)
        message_id = await statuses.record_on(conn, tenant_id, update)
        if queue is None:
            return message_id
        if queue["status"] == "unknown":
            await dispatcher_mod.record_sent(conn, [{
                "id": queue["id"], "attempts": queue["attempts"], "provider_message_id": update.provider_message_id,
                "provider_status": update.status.value, "error_code": update.error_code, "segments": None,
                "body": None, "template": None}], None, now, "settled by the provider's status callback: ")
        elif queue["provider_message_id"] == update.provider_message_id:
            await conn.fetchrow(Q.advance, queue["id"], update.status.value, update.error_code,
                                update.error_message, now)
        return message_id

    message_id = await db_pool.in_transaction(pool, work)
    if message_id is not None:
        notify.wake(pool, notify.EVENTS)
    return message_id
