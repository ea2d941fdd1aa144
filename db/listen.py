"""A LISTEN connection that comes back after the database restarts.

LISTEN lives on one dedicated connection; when PostgreSQL restarts (or a proxy drops the socket) that
connection is gone and, without this, wake-ups stop for good while the workers fall back to polling.
The connection's termination callback starts a reconnect at once; a watchdog's round trip catches what
no callback reports (a half-open socket after a network cut). Reconnects back off up to
RECONNECT_MAX_S. Each (re)connect also calls every callback once: notifications sent while we were not
listening are lost, and a wake-up is only ever a hint to look at the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping

import asyncpg

from db import pool as db_pool

log = logging.getLogger("parley.db.listen")

RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
WATCHDOG_S = 15.0


class Listener:
    """LISTEN on `channels` (name -> callback taking no arguments) for as long as it is open."""

    def __init__(self, dsn: str, channels: Mapping[str, Callable[[], None]], *,
                 watchdog_s: float = WATCHDOG_S) -> None:
        self.dsn = dsn
        self.channels = dict(channels)
        self.watchdog_s = watchdog_s
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connects = 0  # successful (re)connects, for tests

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Listen now if the database answers; otherwise keep trying in the background."""
        with contextlib.suppress(Exception):
            await self._connect()
        self._task = asyncio.create_task(self._supervise(), name="listen-supervisor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            if not conn.is_closed():
                conn.terminate()

    async def _connect(self) -> None:
        conn = await db_pool.connect(self.dsn)
        try:
            for name, callback in self.channels.items():
                await conn.add_listener(name, _ignore_args(callback))
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(lambda _conn: self._lost.set())
        self._conn = conn
        self._lost.clear()
        self.connects += 1
        if self.connects > 1:
            log.info("LISTEN re-established", extra={"channels": sorted(self.channels)})
        for callback in self.channels.values():
            callback()

    async def _supervise(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            if self.listening:
                # Returns when the connection ends (its termination callback) or fails a round trip.
                await self._watch()
                log.warning("LISTEN connection lost; reconnecting", extra={"channels": sorted(self.channels)})
                conn, self._conn = self._conn, None
                if conn is not None and not conn.is_closed():
                    conn.terminate()
                delay = RECONNECT_MIN_S
            try:
                await self._connect()
            except Exception:  # noqa: BLE001 - the database is still away: try again later
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(RECONNECT_MAX_S, delay * 2)

    async def _watch(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self.watchdog_s)
                return
            except TimeoutError:
                pass
            conn = self._conn
            if conn is None or conn.is_closed():
                return
            try:
                await conn.fetchval("SELECT 1", timeout=self.watchdog_s)
            except Exception:  # noqa: BLE001 - any failure means this connection cannot be trusted
                return


def _ignore_args(callback: Callable[[], None]) -> Callable[..., None]:
    return lambda *_: callback()
