"""The schema: migrations apply once each, every named query prepares against it, constraints hold."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil

import asyncpg
import pytest

import agents
import services
from db import migrate, notify, queries
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


async def test_a_stored_message_wakes_listeners_after_its_commit(client, db, database_url):
    """Agent workers and event listeners hear of a new message, by a NOTIFY sent after the commit."""
    from tests.integration.test_twilio_webhook import post_twilio
    from tests.support import sms_pairs

    listener = await db_pool.connect(database_url)
    got: asyncio.Queue[str] = asyncio.Queue()
    for channel in (notify.AGENT_TASKS, notify.EVENTS):
        await listener.add_listener(channel, lambda *args: got.put_nowait(args[2]))
    try:
        assert (await post_twilio(client, sms_pairs("hi", "SM" + "1" * 32))).status == 200
        heard = {await asyncio.wait_for(got.get(), 5), await asyncio.wait_for(got.get(), 5)}
        assert heard == {notify.AGENT_TASKS, notify.EVENTS}
    finally:
        await listener.close()


async def test_no_trigger_notifies_inside_a_writing_transaction(db):
    """A NOTIFY inside a transaction holds a database-wide lock through its commit's WAL flush, which
    would serialise every inbound commit: wake-ups are sent after commit instead (db/notify.py)."""
    assert await db.fetchval(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prosrc ILIKE '%notify%'") == 0


async def test_notifier_folds_wake_ups_that_arrive_while_one_is_in_flight(db, database_url):
    pool = await db_pool.create(database_url, 2)
    listener = await db_pool.connect(database_url)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(notify.EVENTS, lambda *args: got.put_nowait(args[2]))
    try:
        n = notify.notifier(pool)
        for _ in range(50):
            n.wake(notify.EVENTS)
        await n.flush()
        assert 1 <= n.sent <= 2
        assert await asyncio.wait_for(got.get(), 5) == notify.EVENTS
    finally:
        await listener.close()
        await notify.close(pool)
        await pool.close()


async def test_no_index_on_conversations_covers_what_every_inbound_message_updates(db):
    """Each inbound message updates its conversation's last_message_at, last_inbound_at and status. An
    index on any of them would turn every such update into a new entry in every index of the table
    (no heap-only tuple), a cost paid on the hottest write path."""
    indexed = await db.fetch(
        "SELECT i.indexrelid::regclass::text AS index, a.attname FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
        "WHERE i.indrelid = 'conversations'::regclass")
    predicates = await db.fetch(
        "SELECT pg_get_expr(indpred, indrelid) AS pred FROM pg_index "
        "WHERE indrelid = 'conversations'::regclass AND indpred IS NOT NULL")
    updated = {"last_message_at", "last_inbound_at", "status"}
    assert not [(r["index"], r["attname"]) for r in indexed if r["attname"] in updated]
    assert not [p["pred"] for p in predicates if any(col in p["pred"] for col in updated)]
    assert "fillfactor=80" in (await db.fetchval(
        "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'conversations'::regclass") or "")


async def test_every_foreign_key_into_conversations_has_a_full_index_to_cascade_through(db):
    """Deleting a conversation cascades to its messages, events and agent tasks, done ones included: an
    index that holds only some rows (agent_tasks_conversation_live) cannot find the rest, so without a
    full index led by the conversation's id (alone, or after tenant_id in a (tenant_id, conversation_id)
    key) each deleted conversation would scan the table."""
    uncovered = await db.fetch("""
        SELECT c.conrelid::regclass::text AS tbl, c.conname FROM pg_constraint c
        WHERE c.contype = 'f' AND c.confrelid = 'conversations'::regclass
          AND NOT EXISTS (
              SELECT 1 FROM pg_index i
              WHERE i.indrelid = c.conrelid
                -- partial indexes count only when they leave out rows without a conversation
                AND (i.indpred IS NULL OR pg_get_expr(i.indpred, i.indrelid) ~ '^\\(\\w+ IS NOT NULL\\)$')
                AND (i.indkey[0] = c.conkey[cardinality(c.conkey)]
                     OR ((i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
                         AND c.conkey @> (i.indkey::int2[])[0:cardinality(c.conkey) - 1])))
        ORDER BY 1, 2""")
    assert [(r["tbl"], r["conname"]) for r in uncovered] == []
    assert await db.fetchval("SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                             "AND confrelid = 'conversations'::regclass") >= 4  # the check looked at something
