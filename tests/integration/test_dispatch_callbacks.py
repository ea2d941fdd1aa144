"""Status callbacks settle queue rows: through the real app, signed as the providers sign them, carrying
our queue id (Twilio: ?q=<id> on the StatusCallback URL; Meta: biz_opaque_callback_data "q:<id>")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from db import pool as db_pool
from tests import dispatching, support
from tests.integration.test_twilio_webhook import post_twilio

OTHER_ACCOUNT = "AC" + "9" * 32
OTHER_TOKEN = "other-tenant-token-1a2b3c"
OTHER_FROM = "+14155550199"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db_pool.create(database_url, 4)
    yield p
    await p.close()


@pytest.fixture
async def world(client: Any, pool: asyncpg.Pool, database_url: str) -> dispatching.World:
    return await dispatching.world(pool, support.make_settings(database_url))


async def unknown_row(pool: asyncpg.Pool, world: dispatching.World, channel_id: int | None = None) -> tuple[int, int]:
    """A row whose send's outcome is unknown (its dispatcher died mid-call): (queue id, conversation id)."""
    user, conv = await dispatching.person(pool, world, channel_id=channel_id)
    q = await dispatching.enqueue(pool, world, user, conv)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE message_queue SET status = 'unknown', attempts = 1, locked_by = 'dead', "
                           "send_started_at = now() WHERE id = $1", q)
    return q, conv


def status_pairs(sid: str, status: str, from_: str = dispatching.SMS_FROM,
                 account: str = support.ACCOUNT_SID) -> list[tuple[str, str]]:
    return [("MessageSid", sid), ("SmsSid", sid), ("MessageStatus", status), ("SmsStatus", status),
            ("AccountSid", account), ("From", from_), ("To", "+14155550123"), ("ApiVersion", "2010-04-01")]


async def test_a_twilio_callback_with_our_queue_id_settles_an_unknown_row(client, pool, world) -> None:
    q, conv = await unknown_row(pool, world)
    sid = "SM" + "e1" * 16
    resp = await post_twilio(client, status_pairs(sid, "delivered"), path=f"/webhooks/twilio/status?q={q}")
    assert resp.status == 200
    row = await dispatching.row(pool, q)
    assert row["status"] == "delivered" and row["provider_message_id"] == sid
    [msg] = await dispatching.fetch(pool, "SELECT * FROM messages WHERE conversation_id = $1", conv)
    assert msg["direction"] == "outbound" and msg["status"] == "delivered" and msg["provider_message_id"] == sid
    assert (await dispatching.verdicts(pool, q))[-1][:2] == ("reconcile", "sent")


async def test_callbacks_move_a_sent_row_forward_only(client, pool, world) -> None:
    q, _ = await unknown_row(pool, world)
    sid = "SM" + "e2" * 16
    path = f"/webhooks/twilio/status?q={q}"
    for status in ["sent", "delivered", "read", "sent", "delivered"]:
        assert (await post_twilio(client, status_pairs(sid, status), path=path)).status == 200
    assert (await dispatching.row(pool, q))["status"] == "read"


async def test_a_queue_id_in_another_tenants_callback_settles_nothing(client, pool, world) -> None:
    q, _ = await unknown_row(pool, world)
    async with pool.acquire() as conn:
        other = await conn.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('other', 'Other', 'h') "
                                    "RETURNING id")
        await conn.execute("INSERT INTO channels (tenant_id, kind, address, account_sid, credentials) "
                           "VALUES ($1, 'twilio_sms', $2, $3, $4)", other, OTHER_FROM, OTHER_ACCOUNT,
                           {"auth_token": OTHER_TOKEN})
    resp = await post_twilio(client, status_pairs("SM" + "e3" * 16, "delivered", OTHER_FROM, OTHER_ACCOUNT),
                             path=f"/webhooks/twilio/status?q={q}", token=OTHER_TOKEN)
    assert resp.status == 200  # verified, so acknowledged; but not that tenant's row
    row = await dispatching.row(pool, q)
    assert row["status"] == "unknown" and row["provider_message_id"] is None


async def test_an_altered_queue_id_breaks_the_twilio_signature(client, pool, world) -> None:
    q, _ = await unknown_row(pool, world)
    pairs = status_pairs("SM" + "e4" * 16, "delivered")
    body, headers = support.twilio_request(pairs, url=f"{support.PUBLIC_BASE}/webhooks/twilio/status?q={q + 1}")
    resp = await client.post(f"/webhooks/twilio/status?q={q}", data=body, headers=headers)
    assert resp.status == 403
    assert (await dispatching.row(pool, q))["status"] == "unknown"


async def test_a_whatsapp_status_with_our_callback_data_settles_an_unknown_row(client, pool, world) -> None:
    q, _ = await unknown_row(pool, world, channel_id=world.whatsapp_channel_id)
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
               "value": {"messaging_product": "whatsapp",
                         "metadata": {"display_phone_number": "15550783881",
                                      "phone_number_id": support.PHONE_NUMBER_ID},
                         "statuses": [{"id": "wamid.Q1", "status": "sent", "timestamp": "1749416383",
                                       "recipient_id": "14155550123", "biz_opaque_callback_data": f"q:{q}"}]}}]}]}
    body, headers = support.meta_request(payload)
    resp = await client.post("/webhooks/whatsapp", data=body, headers=headers)
    assert resp.status == 200
    row = await dispatching.row(pool, q)
    assert row["status"] == "sent" and row["provider_message_id"] == "wamid.Q1"
