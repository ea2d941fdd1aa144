"""Lead memory: one enriched record per tenant × user, and its immutable history in lead_actions.

lead_memory.intent keeps the lead's strongest commercial intent (the rank is agents/memory.py's RANK: a
booking is not overwritten by a later HELP, thanks, question or other; a not_interested, opt-out or
wrong_number after it is news and replaces it); each message's own intent is messages.intent. What the
lead wants, the requested time and the open question are merged into the row locked at commit, so two
messages of one lead in one batch, or in two batches, each build on the other."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

import asyncpg

from agents import memory
from db import notify, queries
from services import badinput, events

Q = queries.load(__file__, "leads.sql")

# Entries kept in each of a lead's histories (tone, urgency, confidence): the newest, oldest first.
# Every change rewrites the row's history, so an unbounded one would grow each write with the lead's age.
HISTORY_LIMIT = 100


class Tag(StrEnum):
    """Matches the CHECK constraint on lead_memory.current_tag."""

    ACTIVE = "Active"
    FOLLOW_UP = "Follow-Up"
    CONVERTED = "Converted"
    ARCHIVED = "Archived"
    DELETED = "Deleted"


class ActionType(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    TAG = "tag"
    ARCHIVE = "archive"
    DELETE = "delete"
    REVERT = "revert"


@dataclass(frozen=True, slots=True)
class Enrichment:
    tenant_id: int
    user_id: int
    conversation_id: int
    message_id: int
    name: str | None
    email: str | None
    language: str | None
    ai_summary: str | None
    intent: str
    tone: str
    urgency: str
    confidence: float
    is_test: bool
    # What the message says for the lead's memory; None keeps intent and ai_summary as given and the
    # memory columns as they are.
    reading: memory.Reading | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    lead_id: int
    created: bool
    changes: dict[str, dict[str, Any]]


async def apply_many(conn: asyncpg.Connection, batch: Sequence[Enrichment], actor: str) -> list[Applied]:
    """Upsert a batch of leads in a few statements; write their insert/update actions and
    lead.created / lead.updated events. Returns one Applied per enrichment, in order."""
    applied: list[Applied | None] = [None] * len(batch)
    # One user may appear twice in a batch (an SMS and a WhatsApp conversation): a single upsert
    # statement cannot touch a row twice, so such repeats go in a later round.
    rounds: list[list[int]] = []
    seen: dict[tuple[int, int], int] = {}
    for index, e in enumerate(batch):
        key = (e.tenant_id, e.user_id)
        depth = seen.get(key, 0)
        seen[key] = depth + 1
        if depth == len(rounds):
            rounds.append([])
        rounds[depth].append(index)
    actions: list[tuple[Any, ...]] = []
    evts: list[events.Event] = []
    for indexes in rounds:
        items = [batch[i] for i in indexes]
        keys = ([e.tenant_id for e in items], [e.user_id for e in items])
        previous = {(r["tenant_id"], r["user_id"]): r for r in await conn.fetch(Q.lock_leads, *keys)}
        mems: list[tuple[Any, ...]] = []
        for n, e in enumerate(items):
            old = previous.get((e.tenant_id, e.user_id))
            if e.reading is None:
                mems.append((old["requested_time"], old["wants"], old["open_question"], old["intent_message_id"])
                            if old is not None else (None, None, None, None))
                continue
            m = memory.merge(old, e.reading, e.message_id, e.language or (old["language"] if old else None))
            items[n] = replace(e, intent=m.intent.value, ai_summary=m.ai_summary)
            mems.append((m.requested_time, m.wants, m.open_question, m.intent_message_id))
        confidences = [Decimal(str(round(e.confidence, 2))) for e in items]
        rows = await conn.fetch(Q.upsert_leads, *keys, [e.name for e in items], [e.email for e in items],
                                [e.language for e in items], [e.ai_summary for e in items],
                                [e.intent for e in items], [e.tone for e in items], [e.urgency for e in items],
                                confidences, [e.is_test for e in items], [e.message_id for e in items],
                                HISTORY_LIMIT, [m[0] for m in mems], [m[1] for m in mems],
                                [m[2] for m in mems], [m[3] for m in mems])
        ids = {(r["tenant_id"], r["user_id"]): r["id"] for r in rows}
        for i, e in zip(indexes, items, strict=True):
            old = previous.get((e.tenant_id, e.user_id))
            lead_id = ids[(e.tenant_id, e.user_id)]
            changes = _changes(old, e)
            action, event = (ActionType.INSERT, "lead.created") if old is None else (ActionType.UPDATE, "lead.updated")
            if old is None or changes:
                actions.append((e.tenant_id, lead_id, action.value, None, None, False, None, changes, actor,
                                e.message_id, e.is_test))
                evts.append(events.Event(e.tenant_id, event, e.conversation_id, e.user_id, e.message_id,
                                         {"lead_id": lead_id, "changes": sorted(changes)}))
            applied[i] = Applied(lead_id, old is None, changes)
    if actions:
        await conn.executemany(Q.insert_action, actions)
    await events.emit_many(conn, evts)
    return [a for a in applied if a is not None]


def _changes(old: Mapping[str, Any] | None, e: Enrichment) -> dict[str, dict[str, Any]]:
    new = {"name": e.name, "email": e.email, "language": e.language, "intent": e.intent, "tone": e.tone,
           "urgency": e.urgency, "confidence_score": round(e.confidence, 2)}
    if old is None:
        return {k: {"from": None, "to": v} for k, v in new.items() if v is not None}
    return {k: {"from": _plain(old[k]), "to": v} for k, v in new.items() if v is not None and _differs(old[k], v)}


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


def _differs(old: Any, new: Any) -> bool:
    if isinstance(new, float) and old is not None:
        return abs(float(old) - new) > 1e-9
    return bool(old != new)


async def set_tag(pool: asyncpg.Pool, lead_id: int, tag: Tag, actor: str, reason: str | None) -> dict[str, Any] | None:
    """Change a lead's tag. Leaving Converted is a revert and needs a reason. None: no such lead.
    BadInput names `reason` or `actor` when one is missing or cannot be stored."""
    badinput.storable("actor", actor)
    if reason is not None:
        badinput.storable("reason", reason)
    async with pool.acquire() as conn, conn.transaction():
        lead = await conn.fetchrow(Q.lock_lead, lead_id)
        if lead is None:
            return None
        previous = Tag(lead["current_tag"])
        if previous is Tag.CONVERTED and tag is not Tag.CONVERTED:
            if not reason or not reason.strip():
                raise badinput.BadInput("reason", "is required to revert a converted lead")
            action = ActionType.REVERT
        elif tag is Tag.ARCHIVED:
            action = ActionType.ARCHIVE
        elif tag is Tag.DELETED:
            action = ActionType.DELETE
        else:
            action = ActionType.TAG
        await conn.execute(Q.set_tag, lead_id, tag.value)
        await conn.execute(Q.insert_action, lead["tenant_id"], lead_id, action.value, tag.value, previous.value,
                           tag is Tag.CONVERTED, reason.strip() if reason else None, {}, actor, None,
                           lead["is_test"])
        payload = {"lead_id": lead_id, "tag": tag.value, "previous_tag": previous.value, "action": action.value}
        await events.emit(conn, events.Event(lead["tenant_id"], "lead.tagged", None, lead["user_id"], None, payload))
        if tag is Tag.CONVERTED and previous is not Tag.CONVERTED:
            await events.emit(conn, events.Event(lead["tenant_id"], "lead.converted", None, lead["user_id"], None,
                                                 payload))
    notify.wake(pool, notify.EVENTS)
    return await get(pool, lead_id)


async def get(pool: asyncpg.Pool, lead_id: int) -> dict[str, Any] | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(Q.lead_by_id, lead_id)
        if row is None:
            return None
        return _with_actions(dict(row), await conn.fetch(Q.lead_actions, lead_id))


async def by_phone(pool: asyncpg.Pool, phone: str, after: int, limit: int) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(Q.leads_by_phone, phone, after, limit)
        return [_with_actions(dict(r), await conn.fetch(Q.lead_actions, r["id"])) for r in rows]


def _with_actions(lead: dict[str, Any], actions: list[asyncpg.Record]) -> dict[str, Any]:
    lead["actions"] = [dict(a) for a in actions]
    lead["opted_out"] = lead.get("consent_state") == "opted_out"
    return lead
