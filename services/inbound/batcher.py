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
import random
from collections import deque
from dataclasses import dataclass

import asyncpg

from db import errors as db_errors
from db import notify, queries
from db import pool as db_pool
from services import keywords, phone
from services.channels.base import InboundMessage, Sender
from services.inbound.directory import Channel

Q = queries.load(__file__)
log = logging.getLogger("parley.inbound")

# Webhooks waiting for their commit, per lane, beyond which ingest is saturated: at a steady 1,000
# requests/s about two wait at a time; under a saturating burst, dozens.
SATURATED_PER_LANE = 8
SATURATION_HOLD_S = 0.25
# Up to this many waiting webhooks always go in one statement (see batch_size).
SPLIT_FLOOR = 8
# A batch that lost a race with another transaction (see parley_retry_if, migration 0008) runs again
# on a fresh snapshot; the race is rare and resolved by the next run, so a few runs are plenty.
RACE_RETRIES = 5


class Overloaded(Exception):
    """A lane's queue is full: the database is not keeping up. Nothing was stored; ask the provider to
    retry later rather than hold the message in memory."""

    retry_after_s = 1

    def __init__(self, lane: int, waiting: int) -> None:
        super().__init__(f"ingest lane {lane} has {waiting} messages waiting")
        self.lane = lane
        self.waiting = waiting


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


@dataclass(frozen=True, slots=True)
class Written:
    """What the batch did with one message. message_id None: a redelivery, nothing written.

    keyword: as stored (opt_out, opt_in, help; a YES that opts in is stored as opt_in); consent: the
    state the message moved its user to, if it did."""

    message_id: int | None
    conversation_id: int | None
    user_id: int | None
    keyword: str | None = None
    consent: str | None = None


DUPLICATE = Written(None, None, None)


@dataclass(slots=True)
class _Item:
    channel: Channel
    msg: InboundMessage
    match: keywords.KeywordMatch | None
    max_attempts: int
    done: asyncio.Future[Written]


def _identity(tenant_id: int, s: Sender) -> tuple[int, str | None, str | None, str | None]:
    """What finds the sender's user: a username only counts for a sender with neither phone nor BSUID."""
    return (tenant_id, s.phone, s.wa_user_id, None if s.phone or s.wa_user_id else s.username)


def lane_key(tenant_id: int, s: Sender) -> tuple[int, str | None]:
    """The sender's lane: by BSUID when there is one, so a WhatsApp user's messages with and without a
    phone number meet in one lane and are resolved to one user in order."""
    return (tenant_id, s.wa_user_id or s.phone or s.username)


def take(queue: deque[_Item], size: int) -> list[_Item]:
    """Up to `size` items from the head of `queue`, stopping before one whose sender shares a phone,
    BSUID or username with an earlier sender of the batch without being that same sender.

    One statement resolves each distinct sender against the same snapshot; two forms of one person (a
    BSUID alone, then with a phone) must be resolved one after the other, as they would be one message
    at a time: the second then sees the user the first created or changed. Such pairs are rare, so the
    cut costs almost nothing."""
    batch: list[_Item] = []
    seen: dict[tuple[int, int, str], tuple[int, str | None, str | None, str | None]] = {}
    while queue and len(batch) < size:
        item = queue[0]
        s, tenant = item.msg.sender, item.channel.tenant_id
        ident = _identity(tenant, s)
        keys = [(tenant, kind, value) for kind, value in ((0, s.phone), (1, s.wa_user_id), (2, s.username))
                if value is not None]
        if any(seen.get(k, ident) != ident for k in keys):
            break
        for k in keys:
            seen[k] = ident
        batch.append(queue.popleft())
    return batch


class Batcher:
    """Group commit in `writers` lanes, each one writer task with its own queue and connection.

    A sender always goes to the same lane, so its messages are written in arrival order, and
    concurrent statements never touch the same conversation row: lanes write in parallel instead of
    waiting on each other's row locks. While one lane's statement is in the database, the others
    can already send theirs.
    """

    def __init__(self, pool: asyncpg.Pool, writers: int = 1, max_batch: int = 256, queue_max: int = 1000) -> None:
        self._pool = pool
        self._writers = max(1, writers)
        self._max_batch = max_batch
        self._queue_max = max(1, queue_max)
        self._lanes: list[deque[_Item]] = [deque() for _ in range(self._writers)]
        self._wakes = [asyncio.Event() for _ in range(self._writers)]
        self._stopping = False
        self._saturated_at = SATURATED_PER_LANE * self._writers
        self._saturated_until = 0.0  # event-loop time until which saturated() holds
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0  # statements written, for tests and benchmarks
        self.retries = 0  # statements run again after losing a race (see _write_retrying)
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

    async def submit(self, channel: Channel, msg: InboundMessage, match: keywords.KeywordMatch | None,
                     max_attempts: int) -> Written:
        """Commit `msg` (with its compliance keyword, if it is one) together with whatever else is waiting.

        Raises Overloaded, storing nothing, when the lane already holds `queue_max` messages."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Written] = loop.create_future()
        lane = hash(lane_key(channel.tenant_id, msg.sender)) % self._writers if self._writers > 1 else 0
        queue = self._lanes[lane]
        if len(queue) >= self._queue_max:
            raise Overloaded(lane, len(queue))
        queue.append(_Item(channel, msg, match, max_attempts, done))
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
            batch = take(queue, batch_size(len(queue), last, self._max_batch))
            last = len(batch)
            try:
                await self._write_batch(batch)
            except Exception as exc:  # noqa: BLE001 - a dead writer would leave every later webhook hanging
                log.exception("inbound writer failed; its batch is refused", extra={"messages": len(batch)})
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)

    async def _write_batch(self, batch: list[_Item]) -> None:
        try:
            results = await self._write_retrying(batch)
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

    async def _write_retrying(self, batch: list[_Item]) -> list[Written]:
        """Write the batch, again on a fresh snapshot when it lost a race with another transaction (a
        sender created or a keyword stored meanwhile, a deadlock with an agent's consent change)."""
        for attempt in range(1, RACE_RETRIES + 1):
            try:
                return await self._write(batch)
            except db_pool.RETRYABLE:
                if attempt == RACE_RETRIES:
                    raise
                self.retries += 1
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
        raise AssertionError("unreachable")

    async def _write(self, batch: list[_Item]) -> list[Written]:
        inputs: list[dict[str, object]] = []
        senders: dict[tuple[int, str | None, str | None, str | None], int] = {}
        for n, item in enumerate(batch, 1):
            m, s = item.msg, item.msg.sender
            row: dict[str, object] = {
                "n": n, "s": senders.setdefault(_identity(item.channel.tenant_id, s), len(senders) + 1),
                "tenant_id": item.channel.tenant_id, "channel_id": item.channel.id,
                "provider": m.provider.value, "provider_message_id": m.provider_message_id,
                "message_type": m.message_type.value, "body": m.body, "media": [x.as_json() for x in m.media],
                "details": m.details, "segments": m.segments, "raw": m.raw, "provider_sent_at": m.sent_at,
                "max_attempts": item.max_attempts,
            }
            if s.phone is not None:
                row["phone"] = s.phone
                row["time_zone"] = phone.time_zone_for(s.phone)
            # Mostly absent (a Twilio SMS has none of them): an absent key reads as NULL.
            for key, value in (("profile_name", s.profile_name), ("wa_id", s.wa_id), ("wa_user_id", s.wa_user_id),
                               ("wa_parent_user_id", s.wa_parent_user_id), ("wa_username", s.username)):
                if value is not None:
                    row[key] = value
            if item.match is not None:
                row["kw"] = item.match.keyword.value
                row["word"] = item.match.word
            inputs.append(row)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(Q.insert_inbound_batch, inputs)  # the pool encodes JSON with orjson
        self.batches += 1
        if any(r["message_id"] is not None for r in rows):
            notify.wake(self._pool, notify.AGENT_TASKS, notify.EVENTS)
        results: list[Written] = [DUPLICATE] * len(batch)
        for r in rows:
            if r["message_id"] is not None:
                results[r["n"] - 1] = Written(r["message_id"], r["conversation_id"], r["user_id"], r["keyword"],
                                              r["consent"])
        return results


def log_entry(channel: Channel, msg: InboundMessage, written: Written) -> dict[str, object]:
    """What the logs say of one inbound message: its ids, never the sender's number."""
    entry: dict[str, object] = {
        "tenant_id": channel.tenant_id, "channel_id": channel.id, "provider": msg.provider.value,
        "provider_message_id": msg.provider_message_id, "message_id": written.message_id,
        "conversation_id": written.conversation_id, "user_id": written.user_id}
    if written.keyword is not None:
        entry["keyword"] = written.keyword
    return entry


def _log_batch(batch: list[_Item], results: list[Written]) -> None:
    """One line per commit, naming every message it stored or found already stored.

    A line per message (a LogRecord, a formatter pass and an encode each) was about a tenth of the
    webhook process's CPU under load; one line per group commit keeps every id searchable."""
    if not log.isEnabledFor(logging.INFO):
        return
    stored: list[dict[str, object]] = []
    duplicates: list[dict[str, object]] = []
    for item, result in zip(batch, results, strict=True):
        entry = log_entry(item.channel, item.msg, result)
        (stored if result.message_id is not None else duplicates).append(entry)
    if stored:
        log.info("inbound stored", extra={"count": len(stored), "messages": stored})
    if duplicates:
        log.info("inbound duplicate", extra={"count": len(duplicates), "messages": duplicates})
