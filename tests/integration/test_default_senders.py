"""Default senders from the settings: who sends a first message to someone who never wrote."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from db import pool as db_pool
from services import settings as settings_mod
from services import tenants
from tests import support

SERVICE = "MG" + "ab" * 16
FROM = "+14155550100"


async def bootstrap(database_url: str, **overrides: Any) -> int:
    pool = await db_pool.create(database_url, 2)
    try:
        return await tenants.bootstrap_default(pool, support.make_settings(database_url, **overrides))
    finally:
        await pool.close()


async def senders(db: asyncpg.Connection) -> asyncpg.Record:
    return await db.fetchrow("SELECT default_sms_channel_id AS sms, default_whatsapp_channel_id AS wa FROM tenants "
                             "WHERE slug = 'default'")


async def test_the_from_number_becomes_a_number_of_the_accounts_catch_all_and_the_sms_sender(database_url, db):
    tenant = await bootstrap(database_url, TWILIO_FROM_NUMBER="+1 (415) 555-0100")
    s = await senders(db)
    number = await db.fetchrow("SELECT * FROM channels WHERE id = $1", s["sms"])
    catch_all = await db.fetchval("SELECT id FROM channels WHERE kind = 'twilio_sms' AND address = '*'")
    assert (number["tenant_id"], number["kind"], number["address"]) == (tenant, "twilio_sms", FROM)
    assert number["parent_channel_id"] == catch_all and number["account_sid"] == support.ACCOUNT_SID
    assert number["credentials"] == {}  # read from the catch-all, never copied
    wa = await db.fetchrow("SELECT kind, address FROM channels WHERE id = $1", s["wa"])
    assert (wa["kind"], wa["address"]) == ("whatsapp_cloud", support.PHONE_NUMBER_ID)


async def test_the_messaging_service_makes_the_catch_all_the_sms_sender(database_url, db):
    await bootstrap(database_url, TWILIO_MESSAGING_SERVICE_SID=SERVICE)
    s = await senders(db)
    row = await db.fetchrow("SELECT kind, address, messaging_service_sid FROM channels WHERE id = $1", s["sms"])
    assert (row["kind"], row["address"], row["messaging_service_sid"]) == ("twilio_sms", "*", SERVICE)


async def test_an_existing_number_is_reused_and_restarts_are_stable(database_url, db):
    await bootstrap(database_url)  # the catch-all first, as a deployment before this setting
    catch_all = await db.fetchval("SELECT id FROM channels WHERE kind = 'twilio_sms' AND address = '*'")
    existing = await db.fetchval(
        "INSERT INTO channels (tenant_id, kind, address, account_sid, parent_channel_id) "
        "SELECT tenant_id, kind, $2, account_sid, id FROM channels WHERE id = $1 RETURNING id", catch_all, FROM)
    await bootstrap(database_url, TWILIO_FROM_NUMBER=FROM)
    await bootstrap(database_url, TWILIO_FROM_NUMBER=FROM)
    assert (await senders(db))["sms"] == existing
    assert await db.fetchval("SELECT count(*) FROM channels WHERE address = $1", FROM) == 1


async def test_a_default_the_settings_no_longer_name_is_cleared_but_the_number_keeps_receiving(database_url, db):
    await bootstrap(database_url, TWILIO_FROM_NUMBER=FROM)
    await bootstrap(database_url, WHATSAPP_PHONE_NUMBER_ID=None)
    s = await senders(db)
    assert (s["sms"], s["wa"]) == (None, None)
    assert await db.fetchval("SELECT active FROM channels WHERE address = $1", FROM) is True


async def test_a_deactivated_from_number_is_not_made_the_sender(database_url, db):
    await bootstrap(database_url, TWILIO_FROM_NUMBER=FROM)
    await db.execute("UPDATE channels SET active = false WHERE address = $1", FROM)
    await bootstrap(database_url, TWILIO_FROM_NUMBER=FROM)
    assert (await senders(db))["sms"] is None
    assert await db.fetchval("SELECT active FROM channels WHERE address = $1", FROM) is False


async def test_another_tenants_number_is_refused_at_start_up(database_url, db):
    other = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('b', 'B', 'h') RETURNING id")
    await db.execute("INSERT INTO channels (tenant_id, kind, address, account_sid) VALUES ($1, 'twilio_sms', $2, $3)",
                     other, FROM, support.ACCOUNT_SID)
    with pytest.raises(settings_mod.SettingsError) as raised:
        await bootstrap(database_url, TWILIO_FROM_NUMBER=FROM)
    assert "TWILIO_FROM_NUMBER" in str(raised.value) and FROM not in str(raised.value)


async def test_a_sender_without_a_twilio_account_is_refused_at_start_up(database_url, db):
    with pytest.raises(settings_mod.SettingsError) as raised:
        await bootstrap(database_url, TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None, TWILIO_FROM_NUMBER=FROM)
    assert "TWILIO_FROM_NUMBER" in str(raised.value)
    assert await db.fetchval("SELECT count(*) FROM tenants") == 0
