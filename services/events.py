"""The events table: what happened, for the steps that react to it (NOTIFY wakes their listeners)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from db import queries

Q = queries.load(__file__, "events.sql")


@dataclass(frozen=True, slots=True)
class Event:
    tenant_id: int
    type: str  # dotted, e.g. "message.received", "lead.converted", "intent.booking"
    conversation_id: int | None = None
    user_id: int | None = None
    message_id: int | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)

    def row(self) -> tuple[Any, ...]:
        return (self.tenant_id, self.type, self.conversation_id, self.user_id, self.message_id, dict(self.payload))


async def emit(conn: asyncpg.Connection, event: Event) -> None:
    await conn.execute(Q.insert_event, *event.row())


async def emit_many(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    if events:
        await conn.executemany(Q.insert_event, [e.row() for e in events])
