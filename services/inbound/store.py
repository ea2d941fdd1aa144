"""Committing an inbound message: user, conversation, message, consent, event and agent task in one
transaction, so that a webhook we acknowledge is already durable and a redelivery is stored once."""

from __future__ import annotations

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


