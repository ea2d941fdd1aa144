"""The pool never hands out a connection whose driver state an outage broke."""

from __future__ import annotations

import asyncpg
import pytest

from db import pool as db_pool


async def test_a_connection_left_mid_operation_is_terminated_not_reused(database_url):
    pool = await db_pool.create(database_url, 2)
    try:
        with pytest.raises(asyncpg.InternalClientError):
            async with pool.acquire() as conn:
                broken = conn._con  # the connection itself; the proxy is detached on release
                raise asyncpg.InternalClientError("cannot switch to state 11; another operation (2) is in progress")
        assert broken.is_closed()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
