"""What the ingest path costs the database per batch, held so that it cannot silently regress.

The group-commit statement is prepared once per connection and then only bound and executed. asyncpg
refuses to cache a statement longer than `max_cacheable_statement_size` (15 KiB by default) and then
parses and plans it again on every call, which halved ingest throughput on the bench while every
functional test still passed."""

from __future__ import annotations

import asyncio

import asyncpg

from db import pool as db_pool
from services import appkeys
from services.inbound import batcher as batcher_mod
from tests.integration.test_twilio_webhook import post_twilio
from tests.support import sms_pairs

WEBHOOKS = 12


async def _prepared(pool: asyncpg.Pool, statement: str) -> list[int]:
    """Executions of `statement` as a named prepared statement, one entry per pooled connection that
    holds it. Every connection of the pool is held at once, so each is asked exactly once."""
    conns = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        counts: list[int] = []
        for conn in conns:
            # pg_prepared_statements lists only this session's named statements; an uncached statement
            # runs as the unnamed one and never appears here.
            rows = await conn.fetch("SELECT generic_plans + custom_plans AS runs FROM pg_prepared_statements "
                                    "WHERE statement = $1", statement)
            counts.extend(r["runs"] for r in rows)
        return counts
    finally:
        for conn in conns:
            await pool.release(conn)


async def test_the_ingest_statement_is_prepared_once_per_connection_not_per_batch(client, db):
    batcher = client.app[appkeys.BATCHER]
    for n in range(WEBHOOKS):  # one after another: one batch each
        # A first-time sender every other message, so both kinds of batch run through the statement.
        resp = await post_twilio(client, sms_pairs(f"message {n}", f"SM{n:032x}", from_=f"+1415555{n // 2:04d}"))
        assert resp.status == 200
    assert batcher.batches == WEBHOOKS
    assert await db.fetchval("SELECT count(*) FROM messages") == WEBHOOKS

    runs = await asyncio.wait_for(_prepared(client.app[appkeys.RUNTIME].pool, batcher_mod.Q.insert_inbound_batch), 30)
    # Every batch ran through a prepared statement, and it was prepared (parsed) at most once per
    # connection: fewer preparations than batches.
    assert sum(runs) == WEBHOOKS
    assert 1 <= len(runs) < WEBHOOKS


def test_every_statement_of_ours_fits_the_statement_cache():
    # A block growing beyond the limit would be parsed and planned on every call again.
    from db import queries

    longest = max((len(sql), name) for blocks in queries.registered().values() for name, sql in blocks.items())
    assert longest[0] <= db_pool.MAX_CACHEABLE_STATEMENT_SIZE, longest
