"""Group commit for inbound webhooks.

Every acknowledged message must already be committed, and a commit waits for a WAL flush. Instead of
one statement and one flush per webhook, concurrent webhooks hand their messages to a few writer
tasks; each writer takes what is waiting (up to half of the webhooks in play under load, see
`batch_size`), writes it with one statement in one transaction, and only then lets each webhook
answer. Under load the batches grow on their own; an idle server writes batches of one with no delay.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

import asyncpg

from db import errors as db_errors
from db import notify, queries
from services.channels.base import InboundMessage
from services.inbound.directory import Channel

Q = queries.load(__file__)
log = logging.getLogger("parley.inbound")

# Webhooks waiting for their commit, per lane, beyond which ingest is saturated: at a steady 1,000
# requests/s about two wait at a time; under a saturating burst, dozens.
SATURATED_PER_LANE = 8
SATURATION_HOLD_S = 0.25
# Up to this many waiting webhooks always go in one statement (see batch_size).
SPLIT_FLOOR = 8


def batch_size(waiting: int, last: int, max_batch: int) -> int:
    """How many of a lane's `waiting` webhooks its next statement takes, `last` being how many the
    lane's previous statement just answered.

    A lane has one statement in the database at a time, so it goes fastest when its webhooks move as
    two equal halves: one half in the database while the event loop answers the other and reads
    those senders' next requests. Taking everything waiting can lock into alternation instead: a big
    batch, then a tiny one, during which the loop reads all the big one's follow-ups at once, so the
    next is big again, and the loop and the database each wait for the other half the time (on the
    bench: ~4,400 requests/s in that mode, ~7,000 in halves). So a batch takes at most half of the
    webhooks in play, those waiting plus those just answered, who are about to send again. Up to
    SPLIT_FLOOR waiting always go together: an unhurried server never holds a webhook back.
    """
    take = min(waiting, max_batch)
    if take <= SPLIT_FLOOR:
        return take
    return min(take, max(SPLIT_FLOOR, (waiting + last + 1) // 2))


class Overloaded(Exception):
    """A lane's queue is full: the webhook is answered 503 with Retry-After."""


@dataclass(frozen=True, slots=True)
class Known:
    """What the batch did for a known sender's message. message_id None: a redelivery."""

    user_id: int
    conversation_id: int | None
    message_id: int | None


@dataclass(slots=True)
class _Item:
    channel: Channel
    msg: InboundMessage
    payload: dict[str, object]
    max_attempts: int
    done: asyncio.Future[Known | None]


class Batcher:
    """Group commit in `writers` lanes, each one writer task with its own queue and connection.

    A sender always goes to the same lane, so its messages are written in arrival order, and
    concurrent statements never touch the same conversation row: lanes write in parallel instead of
    waiting on each other's row locks. While one lane's statement is in the database, the others
    can already send theirs.
    """

    def __init__(self, pool: asyncpg.Pool, writers: int = 1, max_batch: int = 256) -> None:
        self._pool = pool
        self._writers = max(1, writers)
        self._max_batch = max_batch
        self._lanes: list[deque[_Item]] = [deque() for _ in range(self._writers)]
        self._wakes = [asyncio.Event() for _ in range(self._writers)]
        self._stopping = False
        self._saturated_at = SATURATED_PER_LANE * self._writers
        self._saturated_until = 0.0  # event-loop time until which saturated() holds
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0  # statements written, for tests and benchmarks
        self.in_flight = 0  # webhooks waiting on this batcher: how hard ingest is pushing right now

    def start(self) -> None:
        self._stopping = False
        self._tasks = [asyncio.create_task(self._write_loop(lane), name=f"inbound-writer-{lane}")
                       for lane in range(self._writers)]

    async def stop(self) -> None:
        """Write what is queued, then stop the writers."""
        self._stopping = True
        for wake in self._wakes:
            wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, channel: Channel, msg: InboundMessage, payload: dict[str, object],
                     max_attempts: int) -> Known | None:
        """Commit a known sender's message with others; None when the sender is not known yet."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Known | None] = loop.create_future()
        lane = hash((channel.tenant_id, msg.sender.phone)) % self._writers if self._writers > 1 else 0
        self._lanes[lane].append(_Item(channel, msg, payload, max_attempts, done))
        self._wakes[lane].set()
        self.in_flight += 1
        if self.in_flight > self._saturated_at:
            self._saturated_until = loop.time() + SATURATION_HOLD_S
        try:
            return await done
        finally:
            self.in_flight -= 1

    def saturated(self) -> bool:
        """Whether ingest is, or very recently was, the process's bottleneck: more webhooks waiting for
        their commit than `SATURATED_PER_LANE` per lane. Work that can wait should.

        The count alone is a jumpy reading: under a saturating load it swings with every group commit
        (a batch's webhooks answer at once, then their senders' next messages arrive), so a reader
        that looks every few milliseconds can land in a trough. A reading therefore stays true for
        `SATURATION_HOLD_S` after the count last passed the threshold."""
        return (self.in_flight > self._saturated_at
                or asyncio.get_running_loop().time() < self._saturated_until)

    async def _write_loop(self, lane: int) -> None:
        queue, wake = self._lanes[lane], self._wakes[lane]
        last = 0  # webhooks the previous statement answered
        while True:
            if not queue:
                if self._stopping:
                    return
                wake.clear()
                await wake.wait()
                continue
            last = batch_size(len(queue), last, self._max_batch)
            batch = [queue.popleft() for _ in range(last)]
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[_Item]) -> None:
        try:
            results = await self._write(batch)
        except Exception as exc:  # noqa: BLE001 - every waiting webhook learns it, none is acknowledged
            if len(batch) > 1 and not isinstance(db_errors.translate(exc), db_errors.Unavailable):
                # One message the database refuses must not fail the webhooks batched with it: write
                # each on its own, so only that one is refused.
                log.warning("inbound batch failed; writing its messages one by one",
                            extra={"messages": len(batch), "error": type(exc).__name__})
                for item in batch:
                    await self._write_batch([item])
                return
            log.exception("inbound batch failed", extra={"messages": len(batch)})
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)
            return
        for item, result in zip(batch, results, strict=True):
            if not item.done.done():  # the webhook may have gone (client disconnected)
                item.done.set_result(result)
        _log_batch(batch, results)

    async def _write(self, batch: list[_Item]) -> list[Known | None]:
        inputs: list[dict[str, object]] = []
        for n, item in enumerate(batch, 1):
            m, s = item.msg, item.msg.sender
            row: dict[str, object] = {
                "n": n, "tenant_id": item.channel.tenant_id, "phone": s.phone, "channel_id": item.channel.id,
                "provider": m.provider.value, "provider_message_id": m.provider_message_id,
                "message_type": m.message_type.value, "body": m.body, "media": [x.as_json() for x in m.media],
                "details": m.details, "segments": m.segments, "raw": m.raw, "provider_sent_at": m.sent_at,
                "payload": item.payload, "max_attempts": item.max_attempts,
            }
            # Mostly absent (a Twilio SMS has none of them): an absent key reads as NULL.
            for key, value in (("profile_name", s.profile_name), ("wa_id", s.wa_id), ("wa_user_id", s.wa_user_id),
                               ("wa_parent_user_id", s.wa_parent_user_id), ("wa_username", s.username)):
                if value is not None:
                    row[key] = value
            inputs.append(row)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(Q.insert_inbound_batch, inputs)  # the pool encodes JSON with orjson
        self.batches += 1
        if any(r["message_id"] is not None for r in rows):
            notify.wake(self._pool, notify.AGENT_TASKS, notify.EVENTS)
        results: list[Known | None] = [None] * len(batch)
        for r in rows:
            results[r["n"] - 1] = Known(r["user_id"], r["conversation_id"], r["message_id"])
        return results


def log_entry(channel: Channel, msg: InboundMessage, message_id: int | None, conversation_id: int | None,
              user_id: int | None) -> dict[str, object]:
    """What the logs say of one inbound message, on either path: its ids, never the sender's number."""
    return {"tenant_id": channel.tenant_id, "channel_id": channel.id, "provider": msg.provider.value,
            "provider_message_id": msg.provider_message_id, "message_id": message_id,
            "conversation_id": conversation_id, "user_id": user_id}


def _log_batch(batch: list[_Item], results: list[Known | None]) -> None:
    """One line per commit, naming every message it stored or found already stored.

    A line per message (a LogRecord, a formatter pass and an encode each) was about a tenth of the
    webhook process's CPU under load; one line per group commit keeps every id searchable. Senders
    the batch did not know go on to the single-message path, which logs them itself."""
    if not log.isEnabledFor(logging.INFO):
        return
    stored: list[dict[str, object]] = []
    duplicates: list[dict[str, object]] = []
    for item, result in zip(batch, results, strict=True):
        if result is None:
            continue
        entry = log_entry(item.channel, item.msg, result.message_id, result.conversation_id, result.user_id)
        (stored if result.message_id is not None else duplicates).append(entry)
    if stored:
        log.info("inbound stored", extra={"count": len(stored), "messages": stored})
    if duplicates:
        log.info("inbound duplicate", extra={"count": len(duplicates), "messages": duplicates})
