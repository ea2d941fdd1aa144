"""The schema: migrations apply once each, every named query prepares against it, constraints hold."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil

import asyncpg
import pytest

import agents
import services
from db import migrate, queries
from db import pool as db_pool


def _import_all() -> None:
    for package in (services, agents):
        for mod in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(mod.name)


async def test_every_named_query_prepares_against_the_real_schema(db):
    _import_all()
    files = queries.registered()
    assert len(files) >= 3
    for path, blocks in files.items():
        for name, sql in blocks.items():
            try:
                await db.prepare(sql)
            except asyncpg.PostgresError as exc:
                pytest.fail(f"{path}:{name}: {exc}")


async def test_migrations_are_recorded_and_reapplying_is_a_no_op(db, database_url):
    names = [m.name for m in migrate.available()]
    assert [r["name"] for r in await db.fetch("SELECT name FROM schema_migrations ORDER BY version")] == names
    conn = await db_pool.connect(database_url)
    try:
        assert await migrate.apply(conn) == []
    finally:
        await conn.close()


async def test_concurrent_start_ups_apply_each_migration_exactly_once(pg_admin_dsn):
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute("DROP DATABASE IF EXISTS parley_concurrent_migrate WITH (FORCE)")
    await admin.execute("CREATE DATABASE parley_concurrent_migrate")
    dsn = pg_admin_dsn.replace("/postgres?", "/parley_concurrent_migrate?")
    try:
        conns = [await db_pool.connect(dsn) for _ in range(4)]
        results = await asyncio.gather(*[migrate.apply(c) for c in conns])
        for c in conns:
            await c.close()
        applied = [name for r in results for name in r]
        assert sorted(applied) == sorted(m.name for m in migrate.available())
    finally:
        await admin.execute("DROP DATABASE IF EXISTS parley_concurrent_migrate WITH (FORCE)")
        await admin.close()


async def test_status_columns_reject_unknown_values(db):
    tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('t', 'T', 'h') RETURNING id")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO users (tenant_id, phone, consent_state) VALUES ($1, '+14155550101', 'maybe')",
                         tenant)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO users (tenant_id, phone) VALUES ($1, '4155550101')", tenant)


async def test_deleting_a_tenant_cascades_to_everything_it_owns(client, db):
    from tests.integration.test_twilio_webhook import post_twilio
    from tests.support import sms_pairs

    assert (await post_twilio(client, sms_pairs("hi", "SM" + "0" * 32))).status == 200
    await db.execute("DELETE FROM tenants")
    for table in ("channels", "users", "conversations", "messages", "events", "agent_tasks"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def test_event_insert_notifies_listeners(db, database_url):
    listener = await db_pool.connect(database_url)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("parley_events", lambda *args: got.put_nowait(args[3]))
    try:
        tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('n', 'N', 'h') RETURNING id")
        await db.execute("INSERT INTO events (tenant_id, type) VALUES ($1, 'test.ping')", tenant)
        payload = await asyncio.wait_for(got.get(), 5)
        assert '"type" : "test.ping"' in payload or '"type": "test.ping"' in payload
    finally:
        await listener.close()
