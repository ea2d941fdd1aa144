"""Committing an inbound message: user, conversation, message, consent, event and agent task in one
transaction, so that a webhook we acknowledge is already durable and a redelivery is stored once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from db import notify, queries
from db import pool as db_pool
from services import events, keywords, phone
from services.channels.base import InboundMessage
from services.inbound.batcher import Batcher, log_entry
from services.inbound.directory import Channel

Q = queries.load(__file__)
log = logging.getLogger("parley.inbound")


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


class _Duplicate(Exception):
    """Lost a race with a concurrent delivery of the same message: roll back, report a duplicate."""


async def ingest(pool: asyncpg.Pool, batcher: Batcher, channel: Channel, msg: InboundMessage,
                 max_attempts: int) -> Stored:
    """Commit one inbound message (or find it already stored) and log it."""
    match = keywords.match(msg.body) if msg.message_type in _KEYWORD_TYPES else None
    if match is None and msg.sender.phone:
        # The common case (a sender we know, no compliance keyword) is group-committed with others;
        # the batch logs its messages.
        known = await batcher.submit(channel, msg, _payload(channel, msg, None), max_attempts)
        if known is not None:
            return Stored(known.message_id, known.conversation_id, known.user_id)
    try:
        stored = await db_pool.in_transaction(pool, lambda conn: _ingest(conn, channel, msg, match, max_attempts))
    except _Duplicate:
        stored = Stored(None, None, None)
    else:
        notify.wake(pool, notify.AGENT_TASKS, notify.EVENTS)
    log.info("inbound duplicate" if stored.duplicate else "inbound stored", extra={
        **log_entry(channel, msg, stored.message_id, stored.conversation_id, stored.user_id),
        "keyword": stored.keyword.value if stored.keyword else None,
    })
    return stored


def _payload(channel: Channel, msg: InboundMessage, keyword: keywords.Keyword | None) -> dict[str, object]:
    return {"provider": msg.provider.value, "channel_id": channel.id, "type": msg.message_type.value,
            "keyword": keyword.value if keyword else None}


async def _ingest(conn: asyncpg.Connection, channel: Channel, msg: InboundMessage,
                  match: keywords.KeywordMatch | None, max_attempts: int) -> Stored:
    user = await _resolve_user(conn, channel.tenant_id, msg)
    new_state = _consent_after(match, ConsentState(user["consent_state"]))
    # YES from someone who is not opted out is an ordinary reply, not a keyword.
    keyword = None if match is None or (match.keyword is keywords.Keyword.YES and new_state is None) else (
        keywords.Keyword.OPT_IN if match.keyword is keywords.Keyword.YES else match.keyword)

    payload = _payload(channel, msg, keyword)
    row = await conn.fetchrow(
        Q.insert_inbound, channel.tenant_id, user["id"], channel.id, msg.provider.value,
        msg.provider_message_id, msg.message_type.value, msg.body, [m.as_json() for m in msg.media],
        msg.details, msg.segments, keyword.value if keyword else None, msg.raw, msg.sent_at, payload,
        max_attempts,
    )
    if row["message_id"] is None:
        raise _Duplicate
    message_id, conversation_id = row["message_id"], row["conversation_id"]

    if new_state is not None:
        # Honoured here, in the webhook's transaction, before any agent can act on the message.
        await change_consent(conn, user["id"], new_state, "keyword", match.word if match else None,
                             message_id, "user")
        await events.emit(conn, events.Event(channel.tenant_id, f"consent.{new_state.value}", conversation_id,
                                             user["id"], message_id,
                                             {"source": "keyword", "keyword": match.word if match else None}))
    elif keyword is keywords.Keyword.HELP:
        await events.emit(conn, events.Event(channel.tenant_id, "help.requested", conversation_id, user["id"],
                                             message_id, {"keyword": match.word if match else None}))
    return Stored(message_id, conversation_id, user["id"], keyword, new_state)


async def change_consent(conn: asyncpg.Connection, user_id: int, state: ConsentState, source: str,
                         keyword: str | None, message_id: int | None, changed_by: str) -> int:
    """Set a user's consent and append the change to its history; returns the history row's id."""
    change_id: int = await conn.fetchval(Q.set_consent, user_id, state.value, source, keyword, message_id,
                                         changed_by)
    return change_id


def _consent_after(match: keywords.KeywordMatch | None, current: ConsentState) -> ConsentState | None:
    """The consent state a keyword moves the user to, or None when nothing changes."""
    if match is None:
        return None
    if match.keyword is keywords.Keyword.OPT_OUT and current is not ConsentState.OPTED_OUT:
        return ConsentState.OPTED_OUT
    if match.keyword is keywords.Keyword.OPT_IN and current is not ConsentState.OPTED_IN:
        return ConsentState.OPTED_IN
    if match.keyword is keywords.Keyword.YES and current is ConsentState.OPTED_OUT:
        return ConsentState.OPTED_IN
    return None


async def _resolve_user(conn: asyncpg.Connection, tenant_id: int, msg: InboundMessage) -> asyncpg.Record:
    """Find or create the sender. Phone first; Meta's BSUID or username when there is no phone.
    Every path is an upsert on a unique index, so concurrent first messages make one user."""
    s = msg.sender
    if s.phone:
        user = await conn.fetchrow(Q.user_by_phone, tenant_id, s.phone)
        if user is None and s.wa_user_id:
            user = await conn.fetchrow(Q.attach_phone_to_bsuid_user, tenant_id, s.wa_user_id, s.phone,
                                       phone.time_zone_for(s.phone))
        if user is None:
            return await conn.fetchrow(Q.insert_user_by_phone, tenant_id, s.phone, s.wa_id, s.wa_user_id,
                                       s.wa_parent_user_id, s.username, s.profile_name,
                                       phone.time_zone_for(s.phone))
    elif s.wa_user_id:
        user = await conn.fetchrow(Q.user_by_bsuid, tenant_id, s.wa_user_id)
        if user is None:
            return await conn.fetchrow(Q.insert_user_by_bsuid, tenant_id, s.wa_user_id, s.wa_parent_user_id,
                                       s.username, s.profile_name)
    elif s.username:
        user = await conn.fetchrow(Q.user_by_username, tenant_id, s.username)
        if user is None:
            return await conn.fetchrow(Q.insert_user_by_username, tenant_id, s.username, s.profile_name)
    else:  # the parsers refuse such messages; this guards the invariant
        raise ValueError("sender has no identity")
    if _profile_changed(user, msg):
        await conn.execute(Q.refresh_user_profile, user["id"], s.profile_name, s.wa_id, s.wa_user_id,
                           s.wa_parent_user_id, s.username)
    return user


def _profile_changed(user: asyncpg.Record, msg: InboundMessage) -> bool:
    s = msg.sender
    return any(new is not None and new != user[col] for col, new in (
        ("profile_name", s.profile_name), ("wa_id", s.wa_id), ("wa_user_id", s.wa_user_id),
        ("wa_username", s.username)))

