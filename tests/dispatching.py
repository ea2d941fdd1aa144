"""Seeding for dispatcher tests: a tenant with an SMS and a WhatsApp sender, users, conversations, and
queue rows written with plain SQL (the outbox owns the real INSERT; these tests only need rows)."""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services import tenants
from services.settings import Settings
from tests import support

SMS_FROM = "+14155550100"
_phones = itertools.count(1)


@dataclass(frozen=True)
class World:
    tenant_id: int
    sms_channel_id: int
    whatsapp_channel_id: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def world(pool: asyncpg.Pool, settings: Settings) -> World:
    tenant_id = await tenants.bootstrap_default(pool, settings)
    async with pool.acquire() as conn:
        sms = await conn.fetchval(
            "INSERT INTO channels (tenant_id, kind, address, account_sid, credentials, send_rate, send_burst) "
            "VALUES ($1, 'twilio_sms', $2, $3, $4, 1000, 1000) RETURNING id",
            tenant_id, SMS_FROM, support.ACCOUNT_SID, {"auth_token": support.AUTH_TOKEN})
        wa = await conn.fetchval("SELECT id FROM channels WHERE tenant_id = $1 AND kind = 'whatsapp_cloud'", tenant_id)
        await conn.execute("UPDATE channels SET send_rate = 1000, send_burst = 1000 WHERE id = $1", wa)
    return World(tenant_id, sms, wa)


async def person(pool: asyncpg.Pool, w: World, *, channel_id: int | None = None, phone: str | None = None,
                 consent: str = "opted_in", time_zone: str | None = "UTC", last_inbound_at: datetime | None = None,
                 quiet_hours_enabled: bool = True) -> tuple[int, int]:
    """A user and their conversation on `channel_id` (default the SMS sender): (user id, conversation id)."""
    phone = phone or f"+1415555{next(_phones):04d}"
    async with pool.acquire() as conn:
        user_id = await conn.fetchval(
            "INSERT INTO users (tenant_id, phone, consent_state, time_zone, quiet_hours_enabled) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id", w.tenant_id, phone, consent, time_zone, quiet_hours_enabled)
        conversation_id = await conn.fetchval(
            "INSERT INTO conversations (tenant_id, user_id, channel_id, last_inbound_at) VALUES ($1, $2, $3, $4) "
            "RETURNING id", w.tenant_id, user_id, channel_id or w.sms_channel_id, last_inbound_at)
    return user_id, conversation_id


_REASON = {"compliance": "opt_out_confirmation", "reply": "agent_reply", "transactional": "operator",
           "marketing": "operator"}


async def enqueue(pool: asyncpg.Pool, w: World, user_id: int, conversation_id: int, *, klass: str = "reply",
                  body: str | None = "Hello there", priority: int = 0, reason: str | None = None,
                  next_attempt_at: datetime | None = None, created_at: datetime | None = None,
                  expires_at: datetime | None = None, template: str | None = None,
                  max_attempts: int | None = None) -> int:
    async with pool.acquire() as conn:
        row_id: int = await conn.fetchval(
            "INSERT INTO message_queue (tenant_id, conversation_id, user_id, channel_id, body, priority, reason, "
            "class, next_attempt_at, created_at, expires_at, template_name, template_language, max_attempts) "
            "SELECT $1, $2, $3, c.channel_id, $4, $5, $6, $7, COALESCE($8, now()), COALESCE($9, now()), $10, $11, "
            "CASE WHEN $11::text IS NOT NULL THEN 'en' END, $12 FROM conversations c WHERE c.id = $2 RETURNING id",
            w.tenant_id, conversation_id, user_id, body, priority, reason or _REASON[klass], klass, next_attempt_at,
            created_at, expires_at, template, max_attempts)
    return row_id


async def row(pool: asyncpg.Pool, queue_id: int) -> asyncpg.Record:
    async with pool.acquire() as conn:
        found: asyncpg.Record = await conn.fetchrow("SELECT * FROM message_queue WHERE id = $1", queue_id)
    return found


async def verdicts(pool: asyncpg.Pool, queue_id: int) -> list[tuple[str, str, str]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT gate, verdict, reason FROM message_queue_verdicts WHERE queue_id = $1 "
                                "ORDER BY id", queue_id)
    return [(r["gate"], r["verdict"], r["reason"]) for r in rows]


async def fetch(pool: asyncpg.Pool, sql: str, *args: Any) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
    return rows
