"""Committing an inbound message: user, conversation, message, consent, event and agent task in one
transaction, so that a webhook we acknowledge is already durable and a redelivery is stored once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from db import queries
from services import keywords
from services.channels.base import InboundMessage
from services.inbound.batcher import Batcher
from services.inbound.directory import Channel

Q = queries.load(__file__)


class ConsentState(StrEnum):
    UNKNOWN = "unknown"
    OPTED_IN = "opted_in"
    OPTED_OUT = "opted_out"


@dataclass(frozen=True, slots=True)
class Stored:
    message_id: int | None  # None: a redelivery we already had
    conversation_id: int | None
    user_id: int | None
    keyword: keywords.Keyword | None = None
    consent_changed_to: ConsentState | None = None

    @property
    def duplicate(self) -> bool:
        return self.message_id is None


# Replies a person types or taps; a keyword in a media caption is not a reply to act on.
_KEYWORD_TYPES = frozenset({"text", "button", "interactive"})


async def ingest(pool: asyncpg.Pool, batcher: Batcher, channel: Channel, msg: InboundMessage,
                 max_attempts: int) -> Stored:
    """Commit one inbound message (or find it already stored), with any keyword's consent change.

    Every message takes the same group commit (services/inbound/batcher.py); the batch logs it.
    Raises batcher.Overloaded, storing nothing, when ingest is too far behind to queue it."""
    match = keywords.match(msg.body) if msg.message_type in _KEYWORD_TYPES else None
    w = await batcher.submit(channel, msg, match, max_attempts)
    return Stored(w.message_id, w.conversation_id, w.user_id,
                  keywords.Keyword(w.keyword) if w.keyword else None,
                  ConsentState(w.consent) if w.consent else None)


async def change_consent(conn: asyncpg.Connection, user_id: int, state: ConsentState, source: str,
                         keyword: str | None, message_id: int | None, changed_by: str) -> int:
    """Set a user's consent and append the change to its history; returns the history row's id."""
    change_id: int = await conn.fetchval(Q.set_consent, user_id, state.value, source, keyword, message_id,
                                         changed_by)
    return change_id




# --- users and conversations an outbound message starts --------------------------------------------
# This module writes users (the ingest batch, consent, and these); other modules call it.

U = queries.load(__file__, "users.sql")


@dataclass(frozen=True, slots=True)
class Person:
    user_id: int
    consent: ConsentState
    created: bool


async def user_for_phone(conn: asyncpg.Connection, tenant_id: int, e164: str, time_zone: str | None) -> Person:
    """The tenant's user with this E.164 phone, created (with the zone its number maps to) if none."""
    row = await conn.fetchrow(U.user_by_phone, tenant_id, e164)
    if row is not None:
        return Person(row["id"], ConsentState(row["consent_state"]), False)
    row = await conn.fetchrow(U.insert_user_by_phone, tenant_id, e164, time_zone)
    if row is not None:
        return Person(row["id"], ConsentState(row["consent_state"]), True)
    # Created meanwhile by a concurrent first message (its INSERT committed after our SELECT).
    row = await conn.fetchrow(U.user_by_phone, tenant_id, e164)
    assert row is not None, "a conflicting user must be visible once its insert committed"
    return Person(row["id"], ConsentState(row["consent_state"]), False)


async def conversation_for(conn: asyncpg.Connection, tenant_id: int, user_id: int, channel_id: int) -> int:
    """The conversation of this user on this channel, opened if there is none yet."""
    conversation_id: int | None = await conn.fetchval(U.open_conversation, tenant_id, user_id, channel_id)
    if conversation_id is None:  # opened by a concurrent transaction after this statement's snapshot
        conversation_id = await conn.fetchval(U.open_conversation, tenant_id, user_id, channel_id)
    assert conversation_id is not None
    return conversation_id


_UNSET = object()


async def set_preferences(conn: asyncpg.Connection, tenant_id: int, user_id: int, *,
                          time_zone: str | None | object = _UNSET,
                          quiet_hours_enabled: bool | object = _UNSET) -> asyncpg.Record | None:
    """Change what an operator names of a user's zone and quiet-hours flag; None when the tenant has
    no such user. An argument left out leaves its column as it is (None clears the zone)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        U.set_preferences, tenant_id, user_id, time_zone is not _UNSET,
        None if time_zone is _UNSET else time_zone, quiet_hours_enabled is not _UNSET,
        None if quiet_hours_enabled is _UNSET else quiet_hours_enabled)
    return row


async def set_budget_limits(conn: asyncpg.Connection, tenant_id: int, user_id: int, hourly_limit: int | None,
                            daily_limit: int | None) -> bool:
    """A user's own hourly and daily limits (None: the tenant's). False when the tenant has no such user."""
    row = await conn.fetchrow(U.set_budget_limits, tenant_id, user_id, hourly_limit, daily_limit)
    return row is not None


async def set_intents(conn: asyncpg.Connection, pairs: Sequence[tuple[int, str]]) -> None:
    """Store each message's own classified intent: [(message id, intent), ...], in one statement."""
    if pairs:
        await conn.execute(Q.set_intents, [p[0] for p in pairs], [p[1] for p in pairs])
