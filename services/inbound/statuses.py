"""Delivery status callbacks: kept once each, applied to the verifying tenant's messages only."""

from __future__ import annotations

import asyncpg

from db import notify, queries
from db import pool as db_pool
from services import events
from services.channels.base import StatusUpdate

Q = queries.load(__file__, "statuses.sql")


async def record(pool: asyncpg.Pool, tenant_id: int, update: StatusUpdate) -> int | None:
    """Store a status callback for `tenant_id`, the tenant whose channel's secret verified it.

    Returns the message id when the message's status moved forward (and its event was emitted); None
    for a replay, a status that does not move it forward, or a message we do not know (yet)."""
    message_id = await db_pool.in_transaction(pool, lambda conn: record_on(conn, tenant_id, update))
    if message_id is not None:
        notify.wake(pool, notify.EVENTS)
    return message_id


async def record_on(conn: asyncpg.Connection, tenant_id: int, update: StatusUpdate) -> int | None:
    """`record` inside the caller's transaction (the caller wakes notify.EVENTS after its commit when
    this returns a message id)."""
    row = await conn.fetchrow(Q.record_status, tenant_id, update.provider.value, update.provider_message_id,
                              update.status.value, update.error_code, update.error_message,
                              update.occurred_at, update.raw)
    if row is None:
        return None
    await events.emit(conn, events.Event(row["tenant_id"], f"message.{update.status.value}",
                                         row["conversation_id"], None, row["id"],
                                         {"error_code": update.error_code} if update.error_code else {}))
    return int(row["id"])
