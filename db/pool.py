"""Connection pools with our JSON codecs and a deadline on every acquire, and a transaction helper that
retries transient failures."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, TypeVar

import asyncpg
import orjson

from db import errors

T = TypeVar("T")

# How long a request waits for a connection before it is told the database is unavailable (503, or
# the spool): a webhook must answer well inside Twilio's 15 s, and a stalled database must not pile up
# every request behind it.
DEFAULT_ACQUIRE_TIMEOUT_S = 3.0

# asyncpg keeps a prepared statement per query text, but by default refuses to cache any text longer
# than 15 KiB: such a statement is parsed and planned again on every call. The group-commit ingest
# statement (services/inbound/queries.sql, comments included) is just over that, so every batch paid
# a full parse and plan (about half of ingest's throughput on the bench). Our statements are a fixed
# set of .sql blocks, so caching all of them costs a bounded amount of memory per connection.
MAX_CACHEABLE_STATEMENT_SIZE = 256 * 1024


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


class Pool(asyncpg.Pool):
    """An asyncpg pool whose every acquire, ours and asyncpg's own (`pool.fetch`, ...), has a deadline,
    and fails with `errors.Unavailable` when the database cannot give a connection in time.

    Without a deadline an acquire waits for ever: behind a stalled database, or a pool whose
    connections are all stuck, every request would hang and memory would grow with them."""

    _acquire_timeout_s: float = DEFAULT_ACQUIRE_TIMEOUT_S

    def acquire(self, *, timeout: float | None = None) -> _Acquire:
        return _Acquire(super().acquire(timeout=self._acquire_timeout_s if timeout is None else timeout))


class _Acquire:
    """asyncpg's acquire context (used with `async with` or `await`), failures translated."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            conn: asyncpg.Connection = await self._inner.__aenter__()
        except Exception as exc:
            raise errors.translate(exc) from exc
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if isinstance(exc, asyncpg.InternalClientError):
            # The driver lost track of this connection's protocol state (an operation interrupted while
            # the server went away): never hand it out again; the pool opens a fresh one.
            self._inner.connection.terminate()
        await self._inner.__aexit__(exc_type, exc, tb)

    def __await__(self) -> Generator[Any, None, asyncpg.Connection]:
        return self.__aenter__().__await__()


async def create(dsn: str, size: int, acquire_timeout_s: float = DEFAULT_ACQUIRE_TIMEOUT_S) -> asyncpg.Pool:
    # asyncpg.create_pool() is exactly this construction with asyncpg's own class.
    pool = Pool(dsn, min_size=min(2, size), max_size=size, max_queries=50000,
                max_inactive_connection_lifetime=300.0, init=_init, reset=_no_reset, loop=None,
                connection_class=asyncpg.Connection, record_class=asyncpg.Record, command_timeout=30,
                timeout=acquire_timeout_s,  # the connect timeout of each pooled connection
                max_cacheable_statement_size=MAX_CACHEABLE_STATEMENT_SIZE)
    pool._acquire_timeout_s = acquire_timeout_s
    try:
        await pool
    except Exception as exc:
        raise errors.translate(exc) from exc
    return pool


async def connect(dsn: str, timeout_s: float = DEFAULT_ACQUIRE_TIMEOUT_S) -> asyncpg.Connection:
    """A dedicated connection (LISTEN, migrations): never taken from the pool."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout_s,
                                     max_cacheable_statement_size=MAX_CACHEABLE_STATEMENT_SIZE)
    except Exception as exc:
        raise errors.translate(exc) from exc
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
