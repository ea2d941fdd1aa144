"""PostgreSQL stopped and restarted under the real app: nothing answered 200 is lost, nothing is stored
twice, no request gets a 500, and LISTEN comes back.

The session's shared PostgreSQL cannot be stopped under the other tests, so these start their own from
pgserver's binaries, on a fixed port so the DSN survives the restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import service
from db import listen
from db import pool as db_pool
from services import appkeys, web
from tests import support
from tests.integration.test_twilio_webhook import post_twilio

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pgserver
    from pgserver import utils as pg_utils

BIN = Path(pgserver.__file__).parent / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RestartablePostgres:
    """A throwaway cluster we may stop and start (pg_ctl, fast shutdown: sessions get 57P01)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="parley-outage-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: pgserver's own user, set up its way
            user = "pgserver"
            pg_utils.ensure_user_exists(user)
            pg_utils.ensure_prefix_permissions(BIN)
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, user)
            self._as = ["runuser", "-u", user, "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, str(BIN / tool), *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "log"), "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        subprocess.run([*self._as, str(BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def restartable_pg() -> Iterator[RestartablePostgres]:
    pg = RestartablePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


@pytest.fixture
async def outage_client(aiohttp_client, restartable_pg: RestartablePostgres, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = support.make_settings(restartable_pg.dsn, PARLEY_HOME=str(tmp_path / "home"),
                                     PARLEY_DB_ACQUIRE_TIMEOUT_S=1.0)
    return await aiohttp_client(web.create_app(settings))


async def _until(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await predicate():
                return
        except Exception:  # noqa: BLE001 - the database may still be coming back
            pass
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


async def test_stopping_postgres_for_10_s_under_load_loses_and_duplicates_nothing(outage_client, restartable_pg):
    client = outage_client
    senders = [f"+1415555070{i}" for i in range(4)]
    answers: list[tuple[str, str, int, bool]] = []  # (sender, sid, status, sent while the database was down)
    down = asyncio.Event()
    stop = asyncio.Event()

    async def stream(sender: str, lane: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            sid = f"SM{lane:02x}{n:030x}"
            during = down.is_set()
            resp = await post_twilio(client, support.sms_pairs(f"m{n}", sid, from_=sender))
            answers.append((sender, sid, resp.status, during))
            if n % 7 == 0:  # a redelivery of a message already answered: must collapse onto it
                resp = await post_twilio(client, support.sms_pairs(f"m{n}", sid, from_=sender))
                answers.append((sender, sid, resp.status, down.is_set()))
            await asyncio.sleep(0.02)

    # Every sender known and the number materialised while the database is up.
    for sender in senders:
        resp = await post_twilio(client, support.sms_pairs("hello", f"SM{sender[-2:]:0>32}", from_=sender))
        assert resp.status == 200
    streams = [asyncio.create_task(stream(s, i)) for i, s in enumerate(senders)]
    await asyncio.sleep(2)
    await asyncio.to_thread(restartable_pg.stop)
    down.set()
    await asyncio.sleep(10)
    down.clear()
    await asyncio.to_thread(restartable_pg.start)
    await asyncio.sleep(3)
    stop.set()
    await asyncio.gather(*streams)

    # The directory serves its cached channels while the database is away, so every signed webhook to
    # a number it knows is spooled and acknowledged: no 500, and no 503 either (Twilio would drop it).
    statuses = {status for *_, status, _ in answers}
    assert statuses == {200}, statuses
    spooled = [sid for _, sid, status, during in answers if during and status == 200]
    assert len(spooled) >= 20  # the outage really was under load
    acknowledged = {sid for _, sid, status, _ in answers if status == 200}

    conn = await db_pool.connect(restartable_pg.dsn)
    try:
        async def all_stored() -> bool:
            stored = {r["provider_message_id"] for r in await conn.fetch("SELECT provider_message_id FROM messages")}
            return acknowledged <= stored

        await _until(all_stored, "every acknowledged message to be stored")
        dupes = await conn.fetch("SELECT provider_message_id FROM messages GROUP BY 1 HAVING count(*) > 1")
        assert dupes == []
        # Each sender's messages are stored in the order they were sent, spooled or not.
        rows = await conn.fetch("""
            SELECT u.phone, m.provider_message_id FROM messages m
            JOIN conversations c ON c.id = m.conversation_id JOIN users u ON u.id = c.user_id
            WHERE m.direction = 'inbound' ORDER BY m.id""")
        for sender in senders:
            stored_order = [r["provider_message_id"] for r in rows if r["phone"] == sender][1:]
            sent_order = list(dict.fromkeys(sid for s, sid, _, _ in answers if s == sender))
            assert stored_order == [sid for sid in sent_order if sid in set(stored_order)]
        assert await conn.fetchval("SELECT count(*) FROM agent_tasks") == len(
            {r["provider_message_id"] for r in rows})
    finally:
        await conn.close()
    spool = client.app[appkeys.SPOOL]
    assert spool.replayed >= len(spooled) and not spool.pending


async def test_what_cannot_be_spooled_is_answered_503_with_retry_after_while_the_database_is_away(
        outage_client, restartable_pg):
    client = outage_client
    text = json.loads((support.TESTDATA / "whatsapp_cloud" / "text.json").read_bytes())
    # While the database is up: the Twilio number and the WhatsApp channel are routed (and cached).
    assert (await post_twilio(client, support.sms_pairs("hello", "SM" + "d" * 32))).status == 200
    assert (await client.post("/webhooks/whatsapp", data=(req := support.meta_request(text))[0],
                              headers=req[1])).status == 200
    await asyncio.to_thread(restartable_pg.stop)
    try:
        # Meta redelivers a failed delivery for hours: a 503 costs nothing, so nothing is spooled.
        text["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.outage"
        body, headers = support.meta_request(text)
        resp = await client.post("/webhooks/whatsapp", data=body, headers=headers)
        assert resp.status == 503 and resp.headers["Retry-After"].isdigit()
        # A number the cache has never seen needs the database to be routed.
        resp = await post_twilio(client, support.sms_pairs("hello", "SM" + "e" * 32, to="+14155550199"))
        assert resp.status == 503 and resp.headers["Retry-After"].isdigit()
        assert not client.app[appkeys.SPOOL].pending
    finally:
        await asyncio.to_thread(restartable_pg.start)


async def test_notify_wakes_a_worker_again_after_postgres_restarts(outage_client, restartable_pg):
    client = outage_client
    runtime = client.app[appkeys.RUNTIME]
    w = service.worker(runtime.settings.model_copy(update={"poll_interval_s": 3600.0}), runtime.pool, runtime.dsn)
    stop = asyncio.Event()
    running = asyncio.create_task(w.run(stop))
    conn = None
    try:
        await post_twilio(client, support.sms_pairs("are you open sunday?", "SM" + "1" * 32))
        check = await db_pool.connect(restartable_pg.dsn)
        await _until(lambda: _done(check, 1), "the first task")
        await check.close()

        await asyncio.to_thread(restartable_pg.stop)
        await asyncio.sleep(1)
        await asyncio.to_thread(restartable_pg.start)
        conn = await db_pool.connect(restartable_pg.dsn)
        # The worker's LISTEN connection is back (a new session listening on the channel)...
        await _until(lambda: _listening(conn), "LISTEN to be re-established")
        await asyncio.sleep(0.5)  # ...and the wake-up its reconnect gave has been spent on an empty queue
        # A poll is an hour away: only a NOTIFY can get this task done.
        resp = await post_twilio(client, support.sms_pairs("and saturday?", "SM" + "2" * 32))
        assert resp.status == 200
        await _until(lambda: _done(conn, 2), "the task sent after the restart", timeout=30)
    finally:
        stop.set()
        await running
        if conn is not None:
            await conn.close()


async def _done(conn, count: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await conn.fetchval("SELECT count(*) FROM agent_tasks WHERE status = 'done'") == count)


async def _listening(conn) -> bool:  # type: ignore[no-untyped-def]
    return bool(await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %parley_agent_tasks%'") >= 1)


async def test_a_listener_reconnects_and_wakes_once_when_it_does(restartable_pg) -> None:
    wakes: asyncio.Queue[None] = asyncio.Queue()
    listener = listen.Listener(restartable_pg.dsn, {"parley_test": lambda: wakes.put_nowait(None)})
    await listener.start()
    try:
        await asyncio.wait_for(wakes.get(), 10)  # the wake-up every connect gives
        await asyncio.to_thread(restartable_pg.stop)
        await asyncio.to_thread(restartable_pg.start)
        await asyncio.wait_for(wakes.get(), 30)  # reconnected
        assert listener.connects == 2
        conn = await db_pool.connect(restartable_pg.dsn)
        try:
            await conn.execute("NOTIFY parley_test")
        finally:
            await conn.close()
        await asyncio.wait_for(wakes.get(), 10)
    finally:
        await listener.close()



async def test_an_exhausted_pool_answers_within_the_acquire_timeout_instead_of_hanging(make_client, db, tmp_path):
    client = await make_client(PARLEY_HOME=str(tmp_path / "home"), PARLEY_DB_ACQUIRE_TIMEOUT_S=0.5)
    text = json.loads((support.TESTDATA / "whatsapp_cloud" / "text.json").read_bytes())
    assert (await post_twilio(client, support.sms_pairs("hello", "SM" + "a" * 32))).status == 200
    assert (await client.post("/webhooks/whatsapp", data=(req := support.meta_request(text))[0],
                              headers=req[1])).status == 200
    pool = client.app[appkeys.RUNTIME].pool
    held = [await pool.acquire() for _ in range(pool.get_max_size())]  # a stalled database, as the app sees it
    try:
        text["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.stalled"
        body, headers = support.meta_request(text)
        resp = await client.post("/webhooks/whatsapp", data=body, headers=headers)
        assert resp.status == 503 and resp.headers["Retry-After"].isdigit()
        # Twilio would not redeliver it: it is spooled and acknowledged.
        assert (await post_twilio(client, support.sms_pairs("still there?", "SM" + "b" * 32))).status == 200
        assert client.app[appkeys.SPOOL].pending
    finally:
        for conn in held:
            await pool.release(conn)
    await _until(lambda: _stored(db, "SM" + "b" * 32), "the spooled message to be replayed")


async def _stored(conn, sid: str) -> bool:  # type: ignore[no-untyped-def]
    return bool(await conn.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = $1", sid) == 1)


async def test_a_full_batcher_answers_503_with_retry_after_and_stores_what_it_answered_200(
        make_client, db, tmp_path):
    # One lane holding at most 2 messages while its statement is stuck behind a lock we hold: the
    # first webhook is in the database, the next two wait, every further one is refused at once.
    client = await make_client(PARLEY_HOME=str(tmp_path / "home"), PARLEY_INGEST_QUEUE_MAX=2)
    assert (await post_twilio(client, support.sms_pairs("hello", "SM" + "c" * 32))).status == 200
    blocker = await db_pool.connect(str(client.app[appkeys.RUNTIME].dsn))
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
    sids = [f"SM{n:032x}" for n in range(1, 9)]
    posts = [asyncio.create_task(post_twilio(client, support.sms_pairs("m0", sids[0])))]

    async def stuck() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

    await _until(stuck, "the first group commit to wait for the lock")
    posts += [asyncio.create_task(post_twilio(client, support.sms_pairs(f"m{n}", sid)))
              for n, sid in enumerate(sids[1:], 1)]
    await _until(_count_done(posts, 5), "the refused webhooks to be answered")
    refused = [p.result() for p in posts if p.done()]
    assert all(r.status == 503 and r.headers["Retry-After"] == "1" for r in refused)
    assert all([(await r.json())["error"] for r in refused])
    await tx.rollback()  # the stuck statement goes on
    await blocker.close()
    answers = await asyncio.gather(*posts)
    accepted = [sid for sid, r in zip(sids, answers, strict=True) if r.status == 200]
    assert len(accepted) == 3 and sum(r.status == 503 for r in answers) == 5
    stored = {r["provider_message_id"] for r in await db.fetch("SELECT provider_message_id FROM messages")}
    assert set(accepted) <= stored and not (set(sids) - set(accepted)) & stored


def _count_done(tasks: list[asyncio.Task], n: int):  # type: ignore[no-untyped-def, type-arg]
    async def enough() -> bool:
        return sum(t.done() for t in tasks) >= n
    return enough
