"""The channel directory when the database is slow or down: the last good cache keeps serving, and one
request at a time retries the refresh, after a backoff."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from db import errors as db_errors
from db import pool as db_pool
from services.channels.base import ChannelKind
from services.inbound.directory import Directory
from tests import support

FAILED = "channel directory refresh failed"
NUMBER = "+14155550100"


class Clock:
    """Time the test moves by hand: backoffs pass when the test says so, never by waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db_pool.create(database_url, 3)
    yield pool
    await pool.close()


@pytest.fixture
async def seeded(db) -> int:
    tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('a', 'A', 'h') RETURNING id")
    return int(await db.fetchval(
        "INSERT INTO channels (tenant_id, kind, address, account_sid, credentials) VALUES "
        "($1, 'twilio_sms', $2, $3, $4) RETURNING id", tenant, NUMBER, support.ACCOUNT_SID,
        {"auth_token": support.AUTH_TOKEN}))


async def refusing_connections(pg_admin_dsn: str, database_url: str, refuse: bool) -> None:
    """The database goes away for us (or comes back): it refuses new connections and drops ours."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {str(not refuse).lower()}")
        if refuse:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = $1 AND pid <> pg_backend_pid()", name)
    finally:
        await admin.close()


def failures(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage() == FAILED for r in caplog.records)


async def lookup(directory: Directory, to: str = NUMBER) -> int | None:
    channel = await directory.twilio_channel(ChannelKind.TWILIO_SMS, to, None, support.ACCOUNT_SID)
    return channel.id if channel else None


async def test_a_database_outage_serves_the_cache_and_retries_one_request_at_a_time(
        pool, seeded, pg_admin_dsn, database_url, caplog):
    clock = Clock()
    # Every call wants a refresh (ttl 0), so without single flight each would try the database.
    directory = Directory(pool, ttl_s=0, miss_refresh_s=0, backoff_s=(30, 120), clock=clock)
    assert await lookup(directory) == seeded
    await refusing_connections(pg_admin_dsn, database_url, True)
    try:
        found = await asyncio.gather(*[lookup(directory) for _ in range(20)],
                                     *[lookup(directory, "+14155550177") for _ in range(5)])
        # Signatures still verify: the cached channel, with its token, is still served.
        assert found == [seeded] * 20 + [None] * 5
        assert failures(caplog) == 1
        clock.now += 29  # still backing off: nobody tries
        assert await lookup(directory) == seeded and failures(caplog) == 1
        clock.now += 2
        assert await lookup(directory) == seeded and failures(caplog) == 2
        clock.now += 31  # the backoff doubled to 60 s
        assert await lookup(directory) == seeded and failures(caplog) == 2
    finally:
        await refusing_connections(pg_admin_dsn, database_url, False)
    # Back: the next refresh after the backoff sees what changed meanwhile.
    conn = await db_pool.connect(database_url)
    try:
        await conn.execute("UPDATE channels SET address = '+14155550199' WHERE id = $1", seeded)
    finally:
        await conn.close()
    clock.now += 30
    assert await lookup(directory, "+14155550199") == seeded
    assert await lookup(directory) is None and failures(caplog) == 2


async def test_a_directory_that_never_loaded_answers_unavailable_after_one_attempt(pool, caplog):
    await pool.close()
    directory = Directory(pool, backoff_s=(30, 30), clock=Clock())
    results = await asyncio.gather(*[lookup(directory) for _ in range(10)], return_exceptions=True)
    assert all(isinstance(r, db_errors.Unavailable) for r in results)
    assert failures(caplog) == 1


async def waiting_on_a_lock(db) -> None:
    """Until some query of this database waits on a lock (the refresh behind the test's LOCK TABLE)."""
    for _ in range(500):
        if await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND wait_event_type = 'Lock'"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the refresh never reached the database")


async def test_a_slow_refresh_does_not_hold_up_requests_the_cache_can_answer(pool, seeded, database_url, db):
    directory = Directory(pool, ttl_s=0, refresh_timeout_s=60, clock=Clock())
    assert await lookup(directory) == seeded
    blocker = await db_pool.connect(database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE channels IN ACCESS EXCLUSIVE MODE")
        refreshing = asyncio.create_task(lookup(directory))
        await waiting_on_a_lock(db)
        # One request is stuck in the refresh; the others answer from the cache meanwhile.
        assert await asyncio.gather(*[lookup(directory) for _ in range(10)]) == [seeded] * 10
        assert not refreshing.done()
        await tx.rollback()
        assert await refreshing == seeded
    finally:
        await blocker.close()


async def test_a_refresh_that_times_out_serves_the_cache(pool, seeded, database_url, caplog):
    directory = Directory(pool, ttl_s=0, refresh_timeout_s=0.2, backoff_s=(30, 30), clock=Clock())
    assert await lookup(directory) == seeded
    blocker = await db_pool.connect(database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE channels IN ACCESS EXCLUSIVE MODE")
        assert await asyncio.gather(*[lookup(directory) for _ in range(10)]) == [seeded] * 10
        assert failures(caplog) == 1 and "TimeoutError" in str(
            [vars(r).get("error") for r in caplog.records if r.getMessage() == FAILED])
        await tx.rollback()
    finally:
        await blocker.close()


async def test_webhook_signatures_verify_against_the_cache_while_the_database_is_down(
        client, db, pg_admin_dsn, database_url):
    from services import appkeys
    from tests.support import sms_pairs, twilio_request

    def post(token: str, sid: str):
        body, headers = twilio_request(sms_pairs("hi", sid), token=token)
        return client.post("/webhooks/twilio", data=body, headers=headers)

    assert (await post(support.AUTH_TOKEN, "SM" + "e1" * 16)).status == 200  # loads the cache, materialises
    directory = client.app[appkeys.DIRECTORY]
    directory._loaded_at = float("-inf")  # due for a refresh, which will fail  # noqa: SLF001
    await refusing_connections(pg_admin_dsn, database_url, True)
    try:
        assert (await post("forged-token", "SM" + "e2" * 16)).status == 403
        # Verified against the cached channel: whatever storing it then meets, it is not refused.
        assert (await post(support.AUTH_TOKEN, "SM" + "e3" * 16)).status != 403
    finally:
        await refusing_connections(pg_admin_dsn, database_url, False)
