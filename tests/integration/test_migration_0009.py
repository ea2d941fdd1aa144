"""Migration 0009 on a database that already holds what the earlier code wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg

from db import migrate
from db import pool as db_pool
from tests import support


async def test_0009_strips_copied_credentials_and_keeps_each_status_once(pg_admin_dsn, tmp_path: Path):
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(migrate.MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) < 9:
            shutil.copy(path, earlier / path.name)
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute("DROP DATABASE IF EXISTS parley_migration_0009 WITH (FORCE)")
    await admin.execute("CREATE DATABASE parley_migration_0009")
    dsn = pg_admin_dsn.replace("/postgres?", "/parley_migration_0009?")
    try:
        conn = await db_pool.connect(dsn)
        try:
            await migrate.apply(conn, earlier)
            tenant = await conn.fetchval(
                "INSERT INTO tenants (slug, name, help_text) VALUES ('default', 'D', 'h') RETURNING id")
            insert = ("INSERT INTO channels (tenant_id, kind, address, account_sid, credentials, display_address) "
                      "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
            catch_all = await conn.fetchval(insert, tenant, "twilio_sms", "*", support.ACCOUNT_SID,
                                            {"auth_token": "rotated"}, None)
            copied = await conn.fetchval(insert, tenant, "twilio_sms", "+14155550100", support.ACCOUNT_SID,
                                         {"auth_token": "stale-copy"}, None)
            named = await conn.fetchval(insert, tenant, "twilio_sms", "+14155550111", support.ACCOUNT_SID,
                                        {"auth_token": "its-own"}, "Front desk")
            meta = await conn.fetchval(insert, tenant, "whatsapp_cloud", support.PHONE_NUMBER_ID, None,
                                       {"app_secret": support.APP_SECRET}, None)
            for _ in range(2):
                await conn.execute("INSERT INTO message_statuses (tenant_id, provider, provider_message_id, status) "
                                   "VALUES ($1, 'twilio', 'SM1', 'delivered')", tenant)
            await conn.execute("INSERT INTO message_statuses (tenant_id, provider, provider_message_id, status) "
                               "VALUES ($1, 'twilio', 'SM1', 'read')", tenant)

            assert (await migrate.apply(conn))[0] == "0009_credentials_and_status_replays"  # then any later ones
            rows = {r["id"]: r for r in await conn.fetch(
                "SELECT id, credentials, parent_channel_id, from_settings FROM channels")}
            assert (rows[copied]["credentials"], rows[copied]["parent_channel_id"]) == ({}, catch_all)
            assert (rows[named]["credentials"], rows[named]["parent_channel_id"]) == ({"auth_token": "its-own"}, None)
            assert [rows[i]["from_settings"] for i in (catch_all, copied, named, meta)] == [True, False, False, True]
            assert [r["status"] for r in await conn.fetch("SELECT status FROM message_statuses ORDER BY id")] == [
                "delivered", "read"]
        finally:
            await conn.close()
    finally:
        await admin.execute("DROP DATABASE IF EXISTS parley_migration_0009 WITH (FORCE)")
        await admin.close()
