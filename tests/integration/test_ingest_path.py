"""One write path for every inbound message (services/inbound/batcher.py, insert_inbound_batch): known and
first-time senders, BSUID and username users, keywords and their consent changes, redeliveries, and
the same rows whether messages arrive one at a time or through concurrent lanes and processes."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from services import appkeys, web
from services.channels import twilio, whatsapp_cloud
from services.channels.base import ChannelKind, InboundMessage
from services.inbound import batcher as batcher_mod
from services.inbound import store
from services.inbound.directory import Channel
from tests import support
from tests.support import sms_pairs

BSUID = "US.71829304615273849102"


def sms(body: str, sid: str, from_: str = "+14155550101") -> InboundMessage:
    return twilio.parse_inbound(sms_pairs(body, sid, from_=from_))


def meta(body: str, wamid: str, wa_id: str | None = "16505551234", bsuid: str | None = None,
         username: str | None = None, name: str | None = "Sheena Nelson") -> InboundMessage:
    payload = support.whatsapp_text(body, wamid, wa_id=wa_id or "0", name=name or "")
    value = payload["entry"][0]["changes"][0]["value"]
    contact, message = value["contacts"][0], value["messages"][0]
    if name is None:
        del contact["profile"]["name"]
    if username:
        contact["profile"]["username"] = username
    if bsuid:
        contact["user_id"] = message["from_user_id"] = bsuid
    if wa_id is None:
        del contact["wa_id"], message["from"]
    [msg] = whatsapp_cloud.parse_webhook(json.dumps(payload).encode()).messages
    return msg


async def channels(app: Any) -> tuple[Channel, Channel]:
    directory = app[appkeys.DIRECTORY]
    sms_channel = await directory.route_twilio(sms("x", "SM" + "0" * 32).channel_kind, "+14155550100", None,
                                               support.ACCOUNT_SID)
    meta_channel = await directory.whatsapp(support.PHONE_NUMBER_ID)
    assert sms_channel is not None and meta_channel is not None
    return sms_channel, meta_channel


def channel_for(msg: InboundMessage, chans: tuple[Channel, Channel]) -> Channel:
    return chans[1] if msg.provider.value == "meta" else chans[0]


async def ingest_all(b: batcher_mod.Batcher, chans: tuple[Channel, Channel],
                     msgs: list[InboundMessage]) -> list[store.Stored]:
    """Submit `msgs` at once, in order: they queue in arrival order and share batches."""
    return list(await asyncio.gather(*[store.ingest(None, b, channel_for(m, chans), m, 5)  # type: ignore[arg-type]
                                       for m in msgs]))


@pytest.fixture
async def app(client):  # type: ignore[no-untyped-def]
    return client.app


@pytest.fixture
async def lone_batcher(app) -> AsyncIterator[batcher_mod.Batcher]:  # type: ignore[no-untyped-def]
    """A batcher of its own, so a test can count its statements."""
    b = batcher_mod.Batcher(app[appkeys.RUNTIME].pool, writers=1)
    b.start()
    yield b
    await b.stop()


# --- keywords ---------------------------------------------------------------------------------------

async def test_keywords_of_one_user_in_one_batch_apply_in_arrival_order(app, lone_batcher, db):
    words = ["STOP", "START", "hi", "stop.", "Yes", "HELP", "yes", "unsubscribe"]  # eight: one batch
    msgs = [sms(w, f"SM{0xa000 + i:032x}") for i, w in enumerate(words)]
    results = await ingest_all(lone_batcher, await channels(app), msgs)
    assert lone_batcher.batches == 1  # a first-time sender, keywords and all, in one statement

    assert [(r["state"], r["keyword"]) for r in await db.fetch(
        "SELECT state, keyword FROM consent_changes ORDER BY id")] == [
        ("opted_out", "stop"), ("opted_in", "start"), ("opted_out", "stop"), ("opted_in", "yes"),
        ("opted_out", "unsubscribe")]
    # A YES while opted in is an ordinary message; STOP/START are stored as keywords even when they
    # change nothing.
    assert [r["keyword"] for r in await db.fetch("SELECT keyword FROM messages ORDER BY id")] == [
        "opt_out", "opt_in", None, "opt_out", "opt_in", "help", None, "opt_out"]
    assert [r.consent_changed_to for r in results] == [
        "opted_out", "opted_in", None, "opted_out", "opted_in", None, None, "opted_out"]
    assert results[4].keyword is store.keywords.Keyword.OPT_IN and results[6].keyword is None
    user = await db.fetchrow("SELECT * FROM users")
    assert user["consent_state"] == "opted_out" and user["consent_updated_at"] is not None
    changes = await db.fetch("SELECT c.*, m.body FROM consent_changes c JOIN messages m ON m.id = c.message_id "
                             "ORDER BY c.id")
    assert all((c["source"], c["changed_by"], c["user_id"]) == ("keyword", "user", user["id"]) for c in changes)
    assert [c["body"] for c in changes] == ["STOP", "START", "stop.", "Yes", "unsubscribe"]
    events = [(r["type"], r["body"], r["payload"]) for r in await db.fetch(
        "SELECT e.type, m.body, e.payload FROM events e JOIN messages m ON m.id = e.message_id ORDER BY e.id")]
    assert [e[:2] for e in events if e[0] != "message.received"] == [
        ("consent.opted_out", "STOP"), ("consent.opted_in", "START"), ("consent.opted_out", "stop."),
        ("consent.opted_in", "Yes"), ("help.requested", "HELP"), ("consent.opted_out", "unsubscribe")]
    assert ("consent.opted_in", "Yes", {"source": "keyword", "keyword": "yes"}) in events
    assert ("help.requested", "HELP", {"keyword": "help"}) in events
    received = [e for e in events if e[0] == "message.received"]
    assert len(received) == 8 and received[4][2]["keyword"] == "opt_in" and received[6][2]["keyword"] is None
    assert await db.fetchval("SELECT count(*) FROM agent_tasks") == 8


@pytest.mark.parametrize("state, word, expected, keyword", [
    ("opted_out", "STOP", "opted_out", "opt_out"),  # no change, no history
    ("opted_out", "YES", "opted_in", "opt_in"),
    ("opted_in", "START", "opted_in", "opt_in"),
    ("opted_in", "YES", "opted_in", None),
    ("unknown", "YES", "unknown", None),
])
async def test_a_known_users_keyword_moves_on_from_its_stored_state(app, db, state, word, expected, keyword):
    b = app[appkeys.BATCHER]
    chans = await channels(app)
    await ingest_all(b, chans, [sms("hello", "SM" + "b0" * 16)])
    await db.execute("UPDATE users SET consent_state = $1", state)
    [result] = await ingest_all(b, chans, [sms(word, "SM" + "b1" * 16)])
    assert await db.fetchval("SELECT consent_state FROM users") == expected
    assert await db.fetchval("SELECT keyword FROM messages WHERE body = $1", word) == keyword
    changed = expected != state
    assert await db.fetchval("SELECT count(*) FROM consent_changes") == int(changed)
    assert await db.fetchval("SELECT count(*) FROM events WHERE type LIKE 'consent.%'") == int(changed)
    assert result.consent_changed_to == (expected if changed else None)


async def test_a_keyword_in_a_media_caption_is_not_a_keyword(app, db):
    form = sms_pairs("STOP", "SM" + "b2" * 16) + [("NumMedia", "1"), ("MediaUrl0", "https://x.test/a.jpg"),
                                                  ("MediaContentType0", "image/jpeg")]
    msg = twilio.parse_inbound([(k, v) for k, v in form if k != "NumMedia" or v == "1"])
    await ingest_all(app[appkeys.BATCHER], await channels(app), [msg])
    assert await db.fetchval("SELECT consent_state FROM users") == "unknown"
    assert await db.fetchval("SELECT keyword FROM messages") is None


async def test_a_redelivered_stop_in_its_own_batch_is_stored_and_applied_once(app, lone_batcher, db):
    stop = sms("STOP", "SM" + "b3" * 16)
    results = await ingest_all(lone_batcher, await channels(app), [stop, sms("START", "SM" + "b4" * 16), stop])
    assert lone_batcher.batches == 1
    assert [r.duplicate for r in results] == [False, False, True]
    assert [r["state"] for r in await db.fetch("SELECT state FROM consent_changes ORDER BY id")] == [
        "opted_out", "opted_in"]
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_in"
    assert await db.fetchval("SELECT count(*) FROM messages") == 2
    assert await db.fetchval("SELECT count(*) FROM agent_tasks") == 2


# --- senders ------------------------------------------------------------------------------------------

async def test_first_time_senders_are_created_in_the_batch_that_brings_them(app, lone_batcher, db):
    senders = [f"+1415555{n:04d}" for n in range(2000, 2010)]
    msgs = [sms(f"m{i}", f"SM{0xc000 + i:032x}", from_=senders[i % 10]) for i in range(30)]
    msgs += [meta("hola", f"wamid.C{i}", wa_id=f"1650555{i:04d}", name=f"Ana {i}") for i in range(5)]
    results = await ingest_all(lone_batcher, await channels(app), msgs)
    assert lone_batcher.batches <= 2 and not any(r.duplicate for r in results)  # 35 waiting: two halves
    assert await db.fetchval("SELECT count(*) FROM users") == 15
    assert await db.fetchval("SELECT count(*) FROM conversations") == 15
    assert await db.fetchval("SELECT count(*) FROM messages") == 35
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'message.received'") == 35
    row = await db.fetchrow("SELECT * FROM users WHERE phone = '+16505550003'")
    assert (row["wa_id"], row["profile_name"], row["time_zone"]) == ("16505550003", "Ana 3", "America/Los_Angeles")
    # Every message found its own sender's user.
    assert len({r.user_id for r in results[:30]}) == 10
    assert {r.user_id for r in results[:30:10]} == {results[0].user_id}


async def test_a_new_users_profile_takes_each_fields_latest_value(app, lone_batcher, db):
    msgs = [meta("a", "wamid.P1", name="Sheena"), meta("b", "wamid.P2", name=None, username="@sheena"),
            meta("c", "wamid.P3", name="Sheena N.")]
    await ingest_all(lone_batcher, await channels(app), msgs)
    assert lone_batcher.batches == 1
    user = await db.fetchrow("SELECT * FROM users")
    assert (user["profile_name"], user["wa_username"]) == ("Sheena N.", "@sheena")


async def test_bsuid_only_user_then_with_phone_in_one_burst_stays_one_user(app, lone_batcher, db):
    chans = await channels(app)
    msgs = [meta("first", "wamid.B1", wa_id=None, bsuid=BSUID, name="Lena"),
            meta("STOP", "wamid.B2", wa_id=None, bsuid=BSUID),
            meta("again", "wamid.B3", wa_id="16505550000", bsuid=BSUID),
            meta("later", "wamid.B4", wa_id=None, bsuid=BSUID)]
    results = await ingest_all(lone_batcher, chans, msgs)
    # The phone form of the same person waits for the next statement, which finds the user the first
    # one created: one user, as one message at a time would leave it.
    assert lone_batcher.batches == 3
    users = await db.fetch("SELECT * FROM users")
    assert len(users) == 1
    u = users[0]
    assert (u["phone"], u["wa_user_id"], u["wa_id"], u["profile_name"]) == ("+16505550000", BSUID, "16505550000",
                                                                            "Sheena Nelson")
    assert u["time_zone"] == "America/Los_Angeles" and u["consent_state"] == "opted_out"
    assert {r.user_id for r in results} == {u["id"]}
    assert await db.fetchval("SELECT count(*) FROM conversations") == 1


async def test_username_only_sender_is_found_again_by_username(app, lone_batcher, db):
    chans = await channels(app)
    for n in range(2):
        payload = json.loads((support.TESTDATA / "whatsapp_cloud" / "username_only.json").read_text())
        value = payload["entry"][0]["changes"][0]["value"]
        value["contacts"] = [{"profile": {"username": "@only.handle", "name": "Only"}}]
        del value["messages"][0]["from_user_id"]
        value["messages"][0]["id"] = f"wamid.U{n}"
        [msg] = whatsapp_cloud.parse_webhook(json.dumps(payload).encode()).messages
        await ingest_all(lone_batcher, chans, [msg])
    users = await db.fetch("SELECT * FROM users")
    assert len(users) == 1 and users[0]["wa_username"] == "@only.handle" and users[0]["phone"] is None
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_a_sender_created_by_a_concurrent_transaction_makes_the_batch_run_again(app, db, database_url):
    b = batcher_mod.Batcher(app[appkeys.RUNTIME].pool, writers=1)
    b.start()
    other = await asyncpg.connect(database_url)
    try:
        tenant = await db.fetchval("SELECT id FROM tenants")
        tx = other.transaction()
        await tx.start()
        created = await other.fetchval(
            "INSERT INTO users (tenant_id, phone, consent_state) VALUES ($1, '+14155550101', 'opted_out') "
            "RETURNING id", tenant)
        waiting = asyncio.ensure_future(ingest_all(b, await channels(app), [sms("START", "SM" + "d1" * 16)]))
        while not await db.fetchval(  # the batch waits on the uncommitted user
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"):
            await asyncio.sleep(0.01)
        await tx.commit()
        [result] = await waiting
    finally:
        await other.close()
        await b.stop()
    assert b.retries >= 1
    assert result.user_id == created
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    # The keyword moved on from the state the other transaction stored.
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_in"
    assert await db.fetchval("SELECT count(*) FROM consent_changes") == 1


async def test_a_late_redelivered_keyword_stored_concurrently_is_not_applied_again(app, db, database_url):
    b = batcher_mod.Batcher(app[appkeys.RUNTIME].pool, writers=1)
    b.start()
    chans = await channels(app)
    await ingest_all(b, chans, [sms("hello", "SM" + "d2" * 16)])
    stop = sms("STOP", "SM" + "d3" * 16)
    other = await asyncpg.connect(database_url)
    try:
        # Another process stores STOP then START (the same statement, in a transaction held open here)
        # while this one receives a redelivery of the STOP.
        from db import pool as db_pool

        await db_pool._init(other)
        tx = other.transaction()
        await tx.start()
        base = {"s": 1, "tenant_id": chans[0].tenant_id, "channel_id": chans[0].id, "provider": "twilio",
                "message_type": "text", "media": [], "details": {}, "raw": {}, "max_attempts": 5,
                "phone": "+14155550101"}
        await other.fetch(batcher_mod.Q.insert_inbound_batch, [
            {**base, "n": 1, "provider_message_id": stop.provider_message_id, "body": "STOP", "kw": "opt_out",
             "word": "stop"},
            {**base, "n": 2, "provider_message_id": "SM" + "d4" * 16, "body": "START", "kw": "opt_in",
             "word": "start"}])
        waiting = asyncio.ensure_future(ingest_all(b, chans, [stop]))
        while not await db.fetchval(  # waiting for the user's row lock
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype IN ('transactionid', 'tuple')"):
            await asyncio.sleep(0.01)
        await tx.commit()
        [result] = await waiting
    finally:
        await other.close()
        await b.stop()
    # Applied again, the STOP would have opted the user out with no history row to say why.
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_in"
    assert [r["state"] for r in await db.fetch("SELECT state FROM consent_changes ORDER BY id")] == [
        "opted_out", "opted_in"]
    assert result.duplicate and b.retries >= 1


# --- bounded queues -------------------------------------------------------------------------------------

async def test_a_full_lane_refuses_more_and_stores_nothing(app, db):
    b = batcher_mod.Batcher(app[appkeys.RUNTIME].pool, writers=1, queue_max=3)  # not started: nothing drains
    chans = await channels(app)
    queued = [asyncio.ensure_future(b.submit(chans[0], sms("q", f"SM{0xe000 + i:032x}"), None, 5)) for i in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(batcher_mod.Overloaded) as refused:
        await store.ingest(None, b, chans[0], sms("one too many", "SM" + "e9" * 16), 5)  # type: ignore[arg-type]
    assert refused.value.waiting == 3 and refused.value.retry_after_s > 0
    assert b.in_flight == 3  # the refused one is not counted as waiting
    b.start()
    assert all(r.message_id is not None for r in await asyncio.gather(*queued))  # the queued ones still commit
    await b.stop()
    assert await db.fetchval("SELECT count(*) FROM messages WHERE body = 'one too many'") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 3


def test_the_queue_bound_is_a_setting():
    settings = support.make_settings("postgresql://x/y", PARLEY_INGEST_QUEUE_MAX=7)
    assert settings.ingest_queue_max == 7
    assert support.make_settings("postgresql://x/y").ingest_queue_max == 1000


def test_a_batch_stops_before_another_form_of_a_sender_it_holds():
    ch = Channel(1, 1, ChannelKind.WHATSAPP_CLOUD, support.PHONE_NUMBER_ID, None, None, {})
    items = [batcher_mod._Item(ch, m, None, 5, None) for m in (  # type: ignore[arg-type]
        meta("a", "wamid.T1", wa_id=None, bsuid=BSUID), meta("b", "wamid.T2", wa_id=None, bsuid=BSUID),
        meta("c", "wamid.T3", wa_id="16505550000", bsuid=BSUID), meta("d", "wamid.T4", wa_id="16505550001"))]
    from collections import deque

    queue = deque(items)
    assert [i.msg.body for i in batcher_mod.take(queue, 10)] == ["a", "b"]
    assert [i.msg.body for i in batcher_mod.take(queue, 10)] == ["c", "d"]


# --- the equivalence of concurrent and sequential ingest ---------------------------------------------------

def traffic(seed: int = 10) -> tuple[list[InboundMessage], list[InboundMessage], set[str]]:
    """(first contacts that make the known senders, then 2,000 messages in arrival order, the provider
    ids of senders whose messages are delivered twice, to both processes)."""
    rng = random.Random(seed)
    known = [f"+1415556{n:04d}" for n in range(250)]
    setup = [sms("hello", f"SM{0xf00000 + n:032x}", from_=p) for n, p in enumerate(known[:125])]
    setup += [meta("hello", f"wamid.S{n}", wa_id=p[1:], name=f"K{n}") for n, p in enumerate(known[125:])]
    words = ["STOP", "START", "YES", "HELP", "stop.", "Unsubscribe", "yes", "info"]
    senders: list[Callable[[int, str], InboundMessage]] = []
    for n, p in enumerate(known):  # 1,000 messages from known senders
        if n < 125:
            senders.append(lambda i, body, p=p: sms(body, f"SM{0xa00000 + i:032x}", from_=p))
        else:
            senders.append(lambda i, body, p=p, n=n: meta(body, f"wamid.K{i}", wa_id=p[1:], name=f"K{n}"))
    new_senders: list[Callable[[int, str], InboundMessage]] = []
    for n in range(500):  # 1,000 messages from first-time senders, two each
        p = f"+1415557{n:04d}"
        if n % 5 == 0:
            new_senders.append(lambda i, body, n=n: meta(body, f"wamid.N{i}", wa_id=None, bsuid=f"US.{n:020d}",
                                                         name=f"B{n}"))
        elif n % 2:
            new_senders.append(lambda i, body, p=p: sms(body, f"SM{0xb00000 + i:032x}", from_=p))
        else:
            new_senders.append(lambda i, body, p=p, n=n: meta(body, f"wamid.N{i}", wa_id=p[1:], name=f"N{n}"))
    plan = [s for s in senders for _ in range(4)] + [s for s in new_senders for _ in range(2)]
    rng.shuffle(plan)
    msgs = [make(i, rng.choice(words) if rng.random() < 0.15 else f"message {i}") for i, make in enumerate(plan)]
    twice = {m.provider_message_id for m in msgs if hash(m.sender.phone or m.sender.wa_user_id) % 4 == 0}
    return setup, msgs, twice


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[Any]]:
    """Every row ingest writes, by value: ids, timestamps and order of arrival across senders left out,
    each sender's own order kept."""
    who = "COALESCE(u.phone, u.wa_user_id, u.wa_username)"
    tables = {
        "users": f"SELECT {who}, u.phone, u.wa_id, u.wa_user_id, u.wa_parent_user_id, u.wa_username, u.profile_name,"
                 " u.time_zone, u.consent_state, u.consent_updated_at IS NOT NULL FROM users u",
        "conversations": f"SELECT {who}, ch.kind, ch.address, c.status, c.last_inbound_at IS NOT NULL"
                         " FROM conversations c JOIN users u ON u.id = c.user_id"
                         " JOIN channels ch ON ch.id = c.channel_id",
        "messages": f"SELECT {who}, m.provider, m.provider_message_id, m.direction, m.message_type, m.body,"
                    " m.media::text, m.details::text, m.status, m.segments, m.keyword, m.raw::text, m.provider_sent_at,"
                    " rank() OVER (PARTITION BY m.conversation_id ORDER BY m.id)"
                    " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
                    " JOIN users u ON u.id = c.user_id",
        "consent_changes": f"SELECT {who}, cc.state, cc.source, cc.keyword, m.provider_message_id, cc.changed_by,"
                           " rank() OVER (PARTITION BY cc.user_id ORDER BY cc.id)"
                           " FROM consent_changes cc JOIN users u ON u.id = cc.user_id"
                           " LEFT JOIN messages m ON m.id = cc.message_id",
        "events": f"SELECT e.type, {who}, m.provider_message_id, (e.payload - 'channel_id')::text, ch.address,"
                  " (e.payload->>'channel_id')::bigint IS NOT DISTINCT FROM"
                  "     CASE WHEN e.type = 'message.received' THEN c.channel_id END,"
                  " rank() OVER (PARTITION BY e.message_id ORDER BY e.id)"
                  " FROM events e JOIN users u ON u.id = e.user_id JOIN messages m ON m.id = e.message_id"
                  " JOIN conversations c ON c.id = e.conversation_id JOIN channels ch ON ch.id = c.channel_id",
        "agent_tasks": "SELECT m.provider_message_id, t.kind, t.status, t.attempts, t.max_attempts, t.priority,"
                       " t.conversation_id = m.conversation_id"
                       " FROM agent_tasks t JOIN messages m ON m.id = t.message_id",
    }
    out: dict[str, list[Any]] = {}
    for name, sql in tables.items():
        out[name] = sorted((tuple(r) for r in await conn.fetch(sql)), key=repr)
    out["counts"] = [await conn.fetchval(f"SELECT count(*) FROM {t}") for t in
                     ("users", "conversations", "messages", "consent_changes", "events", "agent_tasks")]
    return out


@pytest.fixture
async def second_database(pg_admin_dsn: str, pg_template: str) -> AsyncIterator[str]:
    from tests.conftest import cloned_database

    async with cloned_database(pg_admin_dsn, pg_template, f"parley_seq{os.getpid()}") as dsn:
        yield dsn


async def test_concurrent_lanes_and_processes_store_what_one_message_at_a_time_stores(
        aiohttp_client, database_url, second_database):
    setup, msgs, twice = traffic()
    assert len(msgs) == 2000
    assert sum(1 for m in msgs if store.keywords.match(m.body)) > 200

    async def start(dsn: str) -> Any:
        settings = support.make_settings(dsn, PARLEY_DB_POOL_SIZE=5, PARLEY_INGEST_WRITERS=3,
                                         PARLEY_INGEST_QUEUE_MAX=10_000)
        return (await aiohttp_client(web.create_app(settings))).app

    # Sequential: one message at a time, each redelivery straight after its original.
    seq_app = await start(second_database)
    chans = await channels(seq_app)
    one = seq_app[appkeys.BATCHER]
    for m in setup:
        await store.ingest(None, one, channel_for(m, chans), m, 5)  # type: ignore[arg-type]
    for m in msgs:
        for _ in range(2 if m.provider_message_id in twice else 1):
            await store.ingest(None, one, channel_for(m, chans), m, 5)  # type: ignore[arg-type]

    # Concurrent: two apps (two pools, as two processes) with three lanes each. A sender's messages go
    # to one process in order, or to both (every message delivered twice, racing itself).
    apps = [await start(database_url), await start(database_url)]
    chans = await channels(apps[0])
    await ingest_all(apps[0][appkeys.BATCHER], chans, setup)
    per_app: list[list[InboundMessage]] = [[], []]
    for m in msgs:
        key = hash(m.sender.phone or m.sender.wa_user_id)
        if m.provider_message_id in twice:
            per_app[0].append(m)
            per_app[1].append(m)
        else:
            per_app[key % 2].append(m)
    for wave in range(0, max(map(len, per_app)), 100):
        await asyncio.gather(*[ingest_all(a[appkeys.BATCHER], chans, part[wave:wave + 100])
                               for a, part in zip(apps, per_app, strict=True)])
    batchers = [a[appkeys.BATCHER] for a in apps]
    assert sum(b.batches for b in batchers) < len(msgs) / 2  # it was group-committed

    seq_conn, conc_conn = await asyncpg.connect(second_database), await asyncpg.connect(database_url)
    try:
        from db import pool as db_pool

        await db_pool._init(seq_conn)
        await db_pool._init(conc_conn)
        expected, got = await snapshot(seq_conn), await snapshot(conc_conn)
    finally:
        await seq_conn.close()
        await conc_conn.close()
    assert expected["counts"][:3] == [750, 750, 2250] and expected["counts"][3] > 50
    for table in expected:
        assert got[table] == expected[table], table

