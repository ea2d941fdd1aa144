"""Wake-ups for listeners, sent after commit by a statement of their own.

Why not a trigger: a transaction that has called NOTIFY takes a database-wide lock when it commits and
holds it through its WAL flush, so every such commit waits for the one before it. Concurrent inbound
transactions could then never share a flush (group commit), and a webhook's latency would include
every other webhook's fsync. A NOTIFY in a statement of its own writes no WAL and holds that lock for
microseconds.

A notification is only a hint: listeners read the tables (the truth) and also poll, so folding many
wake-ups into one, or losing one when the database hiccups, is harmless.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

log = logging.getLogger("parley.db.notify")

AGENT_TASKS = "parley_agent_tasks"  # new or requeued agent tasks: wakes idle workers
EVENTS = "parley_events"  # new rows in events: wakes the live log stream and reactors
QUEUE = "parley_queue"  # rows queued or put back in line in message_queue: wakes idle dispatchers


class Notifier:
    """Coalesces wake-ups: at most one NOTIFY statement in flight per pool; wake-ups that arrive
    meanwhile go out together in the next one."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0  # NOTIFY statements sent, for tests

    def wake(self, *channels: str) -> None:
        self._pending.update(channels)
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._send(), name="notify")

    async def flush(self) -> None:
        """Wait until every wake-up asked for so far has been sent (or given up on)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _send(self) -> None:
        while self._pending:
            channels = sorted(self._pending)
            self._pending.clear()
            try:
                async with self.pool.acquire() as conn:
                    await conn.execute("SELECT pg_notify(c, '') FROM unnest($1::text[]) AS c", channels)
                self.sent += 1
            except Exception:  # noqa: BLE001 - listeners poll as well; a lost hint only delays them
                log.warning("NOTIFY failed", extra={"channels": channels}, exc_info=True)
                self._pending.clear()
                return


# By id: asyncpg pools take no weak references. The identity check guards against a reused id.
_notifiers: dict[int, Notifier] = {}


def notifier(pool: asyncpg.Pool) -> Notifier:
    """The pool's notifier (one per pool, so coalescing spans every caller in the process)."""
    n = _notifiers.get(id(pool))
    if n is None or n.pool is not pool:
        n = _notifiers[id(pool)] = Notifier(pool)
    return n


async def close(pool: asyncpg.Pool) -> None:
    """Before the pool closes: send what is pending, then forget the pool."""
    n = _notifiers.pop(id(pool), None)
    if n is not None and n.pool is pool:
        await n.flush()


def wake(pool: asyncpg.Pool, *channels: str) -> None:
    """After a commit that added rows listeners care about; never inside the transaction."""
    notifier(pool).wake(*channels)
