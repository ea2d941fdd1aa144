"""Connection pools with our JSON codecs, and a transaction helper that retries transient failures."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import orjson

from db import errors

T = TypeVar("T")


async def _init(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=dumps, decoder=json.loads, schema="pg_catalog")


def dumps(value: object) -> str:
    """JSON as the database stores it (compact, UTF-8 kept). orjson encodes a webhook's raw payload
    in a tenth of the standard library's time; what it refuses (a lone surrogate, an integer beyond
    64 bits) takes the standard library's path, which PostgreSQL then judges."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pooled connections carry no session state to undo: no SET, LISTEN, advisory lock or cursor ever
    outlives an acquire (migrations and LISTEN use dedicated connections). asyncpg's default reset
    (`RESET ALL; UNLISTEN *; ...`) would cost a round trip on every release. A transaction left open
    (a task cancelled at the wrong moment) is still rolled back; that check costs nothing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create(dsn: str, size: int) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(dsn, min_size=min(2, size), max_size=size, init=_init,
                                         reset=_no_reset, command_timeout=30)
    except Exception as exc:
        raise errors.translate(exc) from exc
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    """A dedicated connection (LISTEN, migrations): never taken from the pool."""
    conn = await asyncpg.connect(dsn)
    await _init(conn)
    return conn


# Serialization failures, deadlocks, and races that surface as unique violations (two first messages
# from one new number): running the transaction again resolves them.
RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError, asyncpg.UniqueViolationError)


async def in_transaction(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]],
                         attempts: int = 4) -> T:
    """Run `work` in one transaction; rerun it on serialization failures, deadlocks and races that
    surface as unique violations (two first messages from one new number, say)."""
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await work(conn)
        except RETRYABLE:
            if attempt == attempts:
                raise
            await asyncio.sleep(random.uniform(0, 0.01 * attempt))
    raise AssertionError("unreachable")
