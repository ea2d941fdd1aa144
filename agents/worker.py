"""The durable task runtime: claim agent_tasks, run them, retry with backoff, dead-letter the hopeless.

Claiming is one statement with FOR UPDATE SKIP LOCKED (see queries.sql `claim`); a LISTEN connection
wakes idle workers when tasks arrive, and a poll interval covers lost notifications. Each claim carries
a lease, extended while work runs; a worker killed mid-task simply lets its lease lapse and another
worker takes the task over, unless that was the task's last attempt: then the claim dead-letters it, so
a task that kills every worker that runs it cannot block its conversation. Completion is fenced by
(locked_by, attempts), so a worker that lost its lease can never commit results twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from db import listen, notify, queries

Q = queries.load(__file__)
log = logging.getLogger("parley.agents.worker")

CHANNEL = notify.AGENT_TASKS


@dataclass(frozen=True, slots=True)
class Task:
    id: int
    tenant_id: int
    conversation_id: int
    message_id: int | None
    kind: str
    attempts: int
    max_attempts: int
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Claim:
    """Proof of ownership handed to the handler's completing transaction."""

    worker_id: str
    tasks: tuple[Task, ...]

    async def lock_owned(self, conn: asyncpg.Connection) -> set[int]:
        """Inside the completing transaction: ids of the tasks we still own (now locked)."""
        rows = await conn.fetch(Q.lock_owned, [t.id for t in self.tasks], self.worker_id,
                                [t.attempts for t in self.tasks])
        return {r["id"] for r in rows}

    @staticmethod
    async def complete(conn: asyncpg.Connection, task_ids: Sequence[int]) -> None:
        await conn.execute(Q.complete, list(task_ids))


class TaskFailed(Exception):
    """A handler's verdict on one task of a batch: retry it (or dead-letter it) with this error."""

    def __init__(self, task_id: int, error: str) -> None:
        super().__init__(error)
        self.task_id = task_id
        self.error = error


# The handler processes a claimed batch and commits its results (calling Claim.lock_owned and
# Claim.complete inside its transaction). It returns the per-task failures it did not commit.
Handler = Callable[[asyncpg.Pool, Claim], Awaitable[Sequence[TaskFailed]]]


def backoff_s(attempts: int, base_s: float = 1.0, cap_s: float = 300.0) -> float:
    """Exponential backoff with full jitter: spreads retries of a failed burst over time."""
    return random.uniform(0.5, 1.0) * min(cap_s, base_s * 2 ** (attempts - 1))


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, pool: asyncpg.Pool, dsn: str, handler: Handler, *, worker_id: str | None = None,
                 batch_size: int = 64, concurrency: int = 4, lease_s: float = 60.0,
                 poll_interval_s: float = 1.0, backoff: Callable[[int], float] = backoff_s,
                 coalesce_s: float = 0.005, pace: Callable[[], Awaitable[None]] | None = None) -> None:
        self.pool = pool
        self.dsn = dsn
        self.handler = handler
        self.worker_id = worker_id or default_worker_id()
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.backoff = backoff
        self.coalesce_s = coalesce_s
        self.pace = pace  # awaited before each claim: lets a process's more urgent work go first
        self._wake = asyncio.Event()
        # Bumped by every NOTIFY; `_drained_generation` is the newest generation at which a claim
        # started and came back short, i.e. after which the queue was seen empty.
        self._generation = 0
        self._drained_generation = 0
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; then stop claiming, finish what is in flight, and return."""
        listener = await self._listen()
        try:
            loops = [asyncio.create_task(self._loop(stop), name=f"agent-loop-{i}") for i in range(self.concurrency)]
            stopper = asyncio.create_task(self._relay_stop(stop))
            try:
                await asyncio.gather(*loops)
            finally:
                stopper.cancel()
        finally:
            if listener is not None:
                await listener.close()
        log.info("worker stopped", extra={"worker_id": self.worker_id, "processed": self.processed})

    async def _relay_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    def _notified(self) -> None:
        self._generation += 1
        self._wake.set()

    async def _listen(self) -> listen.Listener:
        # NOTIFY is only a hint: while LISTEN is down (the database restarting) we still poll, and the
        # listener reconnects by itself, waking us once when it does.
        listener = listen.Listener(self.dsn, {CHANNEL: self._notified})
        await listener.start()
        if not listener.listening:
            log.warning("LISTEN unavailable for now; polling until it connects")
        return listener

    async def _loop(self, stop: asyncio.Event) -> None:
        woke_at: int | None = None  # the generation this loop was woken at by a NOTIFY
        while not stop.is_set():
            if woke_at is not None and self._drained_generation >= woke_at:
                # Another loop already claimed after that wake-up and found the queue empty: the same
                # query from this loop would find nothing either. Wait for news instead.
                claimed = 0
            else:
                if self.pace is not None:
                    await self.pace()
                generation = self._generation
                try:
                    claimed = await self.claim_once()
                except Exception:  # noqa: BLE001 - database hiccup: back off and keep the worker alive
                    log.exception("claim failed", extra={"worker_id": self.worker_id})
                    claimed = 0
                    await _sleep_unless(stop, self.poll_interval_s)
                if claimed < self.batch_size:
                    self._drained_generation = max(self._drained_generation, generation)
            woke_at = None
            if claimed == 0 and not stop.is_set():
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
                except TimeoutError:
                    continue  # the poll: look at the queue again, whatever other loops saw
                # A burst of inserts notifies once per transaction: let it gather into a batch.
                await asyncio.sleep(self.coalesce_s)
                woke_at = self._generation

    async def claim_once(self) -> int:
        """Claim one batch, run it, settle failures. Returns how many tasks the claim took, counting
        those it dead-lettered because their last attempt's worker was lost."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(Q.claim, self.batch_size, self.lease_s, self.worker_id)
        if not rows:
            return 0
        for r in rows:
            if r["dead_letter_id"] is not None:
                log.error("task dead-lettered", extra={"task_id": r["id"], "dead_letter_id": r["dead_letter_id"],
                                                       "attempts": r["attempts"], "error": r["last_error"]})
        tasks = tuple(Task(r["id"], r["tenant_id"], r["conversation_id"], r["message_id"], r["kind"],
                           r["attempts"], r["max_attempts"], r["payload"]) for r in rows
                      if r["dead_letter_id"] is None)
        if not tasks:
            # Only buried tasks: their conversations' next tasks are claimable now; the caller claims again.
            return len(rows)
        claim = Claim(self.worker_id, tasks)
        heartbeat = asyncio.create_task(self._heartbeat(claim))
        try:
            failures: Sequence[TaskFailed] = await self.handler(self.pool, claim)
        except Exception as exc:  # noqa: BLE001 - the whole batch failed; nothing was committed
            log.exception("batch failed", extra={"worker_id": self.worker_id, "tasks": len(tasks)})
            failures = [TaskFailed(t.id, f"{type(exc).__name__}: {exc}") for t in tasks]
        finally:
            heartbeat.cancel()
        self.processed += len(tasks) - len(failures)
        by_id = {t.id: t for t in tasks}
        for failure in failures:
            await self._settle_failure(by_id[failure.task_id], failure.error)
        return len(rows)

    async def _heartbeat(self, claim: Claim) -> None:
        ids = [t.id for t in claim.tasks]
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                async with self.pool.acquire() as conn:
                    await conn.execute(Q.extend_leases, ids, self.worker_id, self.lease_s)
            except Exception:  # noqa: BLE001 - a missed heartbeat only risks a duplicate attempt
                log.warning("lease extension failed", extra={"worker_id": self.worker_id})

    async def _settle_failure(self, task: Task, error: str) -> None:
        error = error[:2000]
        async with self.pool.acquire() as conn:
            if task.attempts >= task.max_attempts:
                letter = await conn.fetchval(Q.bury, task.id, self.worker_id, task.attempts, error)
                log.error("task dead-lettered", extra={"task_id": task.id, "dead_letter_id": letter,
                                                       "attempts": task.attempts, "error": error})
            else:
                delay = self.backoff(task.attempts)
                await conn.fetchval(Q.retry_later, task.id, self.worker_id, task.attempts, delay, error)
                log.warning("task will be retried", extra={"task_id": task.id, "attempts": task.attempts,
                                                           "delay_s": round(delay, 3), "error": error})


async def requeue_dead_letter(pool: asyncpg.Pool, dead_letter_id: int, operator: str) -> int | None:
    """Put a dead-lettered task back in the queue with fresh attempts; returns the task id."""
    async with pool.acquire() as conn, conn.transaction():
        task_id: int | None = await conn.fetchval(Q.requeue_dead_letter, dead_letter_id, operator)
    if task_id is not None:
        notify.wake(pool, notify.AGENT_TASKS)
    return task_id


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
