"""Consent cannot race: late keyword pairs, classifier opt-outs overtaken by a START, and the database
rules that hold whoever writes (CHECKs, keys, the queue's opt-out guard, STOP cancelling the queue,
append-only history), including a STOP and a queue write racing on two connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import asyncpg
import pytest

from agents import consent
from agents.pipeline import Outcome
from agents.replies import Reason, Reply
from db import pool as db_pool
from tests.integration.test_agents import drain, say


async def assert_every_task_done(db: asyncpg.Connection) -> None:
    assert [r["status"] for r in await db.fetch("SELECT DISTINCT status FROM agent_tasks")] == ["done"]


# --- through the webhook and the agents ---------------------------------------------------------------


async def test_late_start_then_stop_confirms_the_opt_out_only(client, db):
    await say(client, "START", 1)
    await say(client, "STOP", 2)  # both applied by the webhook before any agent runs
    assert await drain(client) == 2
    await assert_every_task_done(db)
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_out"
    queued = await db.fetch("SELECT reason, status FROM message_queue")
    assert [(r["reason"], r["status"]) for r in queued] == [("opt_out_confirmation", "queued")]
    [skipped] = await db.fetch("SELECT * FROM agent_actions_log WHERE agent = 'responder'"
                               " AND input->>'reason' = 'opt_in_confirmation'")
    assert skipped["status"] == "skipped" and skipped["output"]["queued"] is False
    assert "no longer the user's latest" in skipped["output"]["reason"] and skipped["error"]


async def test_late_stop_start_stop_confirms_one_opt_out(client, db):
    for n, word in enumerate(["STOP", "START", "STOP"], 1):
        await say(client, word, n)
    await drain(client)
    await assert_every_task_done(db)
    assert [r["reason"] for r in await db.fetch("SELECT reason FROM message_queue")] == ["opt_out_confirmation"]
    assert await db.fetchval("SELECT count(*) FROM agent_actions_log WHERE status = 'skipped'"
                             " AND agent = 'responder'") == 2


async def test_classifier_opt_out_does_not_override_a_newer_start(client, db):
    await say(client, "please stop texting me", 1)
    await say(client, "START", 2)  # sent after the message the classifier reads
    await drain(client)
    await assert_every_task_done(db)
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_in"
    assert [r["source"] for r in await db.fetch("SELECT source FROM consent_changes")] == ["keyword"]
    start_change = await db.fetchval("SELECT id FROM consent_changes")
    [opt_out] = await db.fetch("SELECT * FROM agent_actions_log WHERE agent = 'consent' AND action = 'opt_out'")
    assert opt_out["status"] == "skipped" and opt_out["output"]["applied"] is False
    assert f"consent change {start_change} (opted_in) was recorded after this message" == opt_out["error"]
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'consent.opted_out'") == 0
    assert [r["reason"] for r in await db.fetch("SELECT reason FROM message_queue")] == ["opt_in_confirmation"]


async def test_classifier_opt_out_after_a_start_acts_and_cancels_the_stale_opt_in_confirmation(client, db):
    await say(client, "START", 1)
    await say(client, "please stop texting me", 2)
    await drain(client)
    await assert_every_task_done(db)
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_out"
    rows = await db.fetch("SELECT reason, status, last_error FROM message_queue ORDER BY id")
    assert [(r["reason"], r["status"]) for r in rows] == [("opt_in_confirmation", "canceled"),
                                                        ("opt_out_confirmation", "queued")]
    classifier_change = await db.fetchval("SELECT id FROM consent_changes WHERE source = 'classifier'")
    assert f"consent change {classifier_change} opted the user out (classifier)" in rows[0]["last_error"]


async def test_the_batch_holds_the_users_lock_so_a_stop_waits_for_its_commit(client, db, database_url):
    """A reply checked under the lock cannot be overtaken by a STOP before the batch commits: the STOP
    waits, then cancels what the batch queued."""
    await say(client, "hello", 1)
    await drain(client)
    tenant, conv, user, message = await db.fetchrow(
        "SELECT tenant_id, conversation_id, (SELECT id FROM users), id FROM messages")
    batch = await db_pool.connect(database_url)
    stop = await db_pool.connect(database_url)
    try:
        tx = batch.transaction()
        await tx.start()
        out = Outcome(0, tenant, conv, user, message, False)
        out.replies.append(Reply(tenant, conv, user, "help text", Reason.HELP, message, f"help:{message}"))
        await consent.settle(batch, [out])
        assert out.replies, "opted in: the reply stands"
        waiting = asyncio.ensure_future(opt_out(stop, user))
        await until_waiting_on_a_lock(db, stop, waiting)
        await batch.execute("INSERT INTO message_queue (tenant_id, conversation_id, user_id, channel_id, body, "
                            "reason, class) SELECT $1, $2, $3, channel_id, 'help text', 'help', 'reply' "
                            "FROM conversations WHERE id = $2", tenant, conv, user)
        await tx.commit()
        await waiting
    finally:
        await batch.close()
        await stop.close()
    assert await db.fetchval("SELECT status FROM message_queue") == "canceled"


# --- the database, whoever writes -----------------------------------------------------------------------


@pytest.fixture
async def one_user(db):
    """tenant, conversation, user, message ids of a fresh opted-in user with one inbound message."""
    tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('acme', 'Acme', 'h') "
                               "RETURNING id")
    channel = await db.fetchval(
        "INSERT INTO channels (tenant_id, kind, address, account_sid) VALUES ($1, 'twilio_sms', '+14155550100', "
        "'AC0123456789abcdef0123456789abcdef') RETURNING id", tenant)
    user = await db.fetchval("INSERT INTO users (tenant_id, phone, consent_state) "
                             "VALUES ($1, '+14155550101', 'opted_in') RETURNING id", tenant)
    conv = await db.fetchval("INSERT INTO conversations (tenant_id, user_id, channel_id) VALUES ($1, $2, $3) "
                             "RETURNING id", tenant, user, channel)
    message = await db.fetchval(
        "INSERT INTO messages (tenant_id, conversation_id, direction, provider, message_type, body, status) "
        "VALUES ($1, $2, 'inbound', 'twilio', 'text', 'STOP', 'received') RETURNING id", tenant, conv)
    return tenant, conv, user, message


async def queue(conn: asyncpg.Connection, tenant: int, conv: int, user: int, reason: str = "agent_reply",
                compliance: bool = False, status: str = "queued") -> int:
    queued: int = await conn.fetchval(
        "INSERT INTO message_queue (tenant_id, conversation_id, user_id, channel_id, body, reason, class, status, "
        "locked_until) SELECT $1, $2, $3, channel_id, 'hi', $4, $5, $6, "
        "CASE WHEN $6 = 'sending' THEN now() + interval '30 seconds' END FROM conversations WHERE id = $2 RETURNING id",
        tenant, conv, user, reason, "compliance" if compliance else "reply", status)
    return queued


async def opt_out(conn: asyncpg.Connection, user: int, message: int | None = None) -> int:
    """A STOP as every writer records one: the user's state and its history row, in one statement."""
    change: int = await conn.fetchval(
        "WITH u AS (UPDATE users SET consent_state = 'opted_out' WHERE id = $1 RETURNING id, tenant_id) "
        "INSERT INTO consent_changes (tenant_id, user_id, state, source, keyword, message_id, changed_by) "
        "SELECT tenant_id, id, 'opted_out', 'keyword', 'STOP', $2, 'user' FROM u RETURNING id", user, message)
    return change


async def until_waiting_on_a_lock(db: asyncpg.Connection, conn: asyncpg.Connection,
                                  work: asyncio.Future[object]) -> None:
    """Return once `conn`'s backend waits on a lock, or once `work` finished without waiting (which the
    caller's assertions then catch: no test passes by waiting)."""
    pid = conn.get_server_pid()
    while not work.done():
        if await db.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.005)


async def test_compliance_is_exactly_the_confirmations(db, one_user):
    tenant, conv, user, _ = one_user
    with pytest.raises(asyncpg.CheckViolationError, match="compliance_is_confirmation"):
        await queue(db, tenant, conv, user, "help", compliance=True)
    with pytest.raises(asyncpg.CheckViolationError, match="compliance_is_confirmation"):
        await queue(db, tenant, conv, user, "opt_out_confirmation", compliance=False)
    queued = await queue(db, tenant, conv, user, "agent_reply")
    with pytest.raises(asyncpg.CheckViolationError, match="compliance_is_confirmation"):
        await db.execute("UPDATE message_queue SET class = 'compliance' WHERE id = $1", queued)


async def test_a_queued_message_belongs_to_its_conversations_user(db, one_user):
    tenant, conv, user, _ = one_user
    other = await db.fetchval("INSERT INTO users (tenant_id, phone) VALUES ($1, '+14155550102') RETURNING id",
                              tenant)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await queue(db, tenant, conv, other)
    queued = await queue(db, tenant, conv, user)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute("UPDATE message_queue SET user_id = $1 WHERE id = $2", other, queued)
    other_tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('b', 'B', 'h') "
                                     "RETURNING id")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await queue(db, other_tenant, conv, user)


async def test_the_opt_out_guard_holds_on_update(db, one_user):
    tenant, conv, user, _ = one_user
    canceled = await queue(db, tenant, conv, user, status="canceled")
    sending = await queue(db, tenant, conv, user, status="sending")
    opt_in = await queue(db, tenant, conv, user, status="canceled", reason="opt_in_confirmation", compliance=True)
    await opt_out(db, user)
    with pytest.raises(asyncpg.CheckViolationError, match="opted out"):
        await db.execute("UPDATE message_queue SET status = 'queued' WHERE id = $1", canceled)
    with pytest.raises(asyncpg.CheckViolationError, match="opted out"):
        await db.execute("UPDATE message_queue SET status = 'queued' WHERE id = $1", opt_in)
    with pytest.raises(asyncpg.CheckViolationError, match="opted out"):
        await db.execute("UPDATE message_queue SET status = 'queued', locked_until = NULL WHERE id = $1",
                         sending)
    # A send already handed to the provider is still recorded; the opt-out confirmation goes out.
    await db.execute("UPDATE message_queue SET status = 'sent', locked_until = NULL WHERE id = $1", sending)
    with pytest.raises(asyncpg.CheckViolationError, match="opted out"):
        await queue(db, tenant, conv, user, "opt_in_confirmation", compliance=True)
    confirmation = await queue(db, tenant, conv, user, "opt_out_confirmation", compliance=True)
    await db.execute("UPDATE message_queue SET status = 'sending', locked_until = now() WHERE id = $1",
                     confirmation)


async def test_a_stop_cancels_everything_queued_for_that_user_but_its_confirmation(db, one_user):
    tenant, conv, user, message = one_user
    reply = await queue(db, tenant, conv, user, "agent_reply")
    help_ = await queue(db, tenant, conv, user, "help")
    opt_in = await queue(db, tenant, conv, user, "opt_in_confirmation", compliance=True)
    earlier_confirmation = await queue(db, tenant, conv, user, "opt_out_confirmation", compliance=True)
    in_flight = await queue(db, tenant, conv, user, status="sending")
    other = await db.fetchval("INSERT INTO users (tenant_id, phone) VALUES ($1, '+14155550102') RETURNING id",
                              tenant)
    other_conv = await db.fetchval(
        "INSERT INTO conversations (tenant_id, user_id, channel_id) SELECT $1, $2, channel_id FROM conversations "
        "WHERE id = $3 RETURNING id", tenant, other, conv)
    someone_else = await queue(db, tenant, other_conv, other)

    change = await opt_out(db, user, message)
    rows = {r["id"]: r for r in await db.fetch("SELECT id, status, last_error FROM message_queue")}
    for canceled in (reply, help_, opt_in):
        assert rows[canceled]["status"] == "canceled"
        assert rows[canceled]["last_error"] == f"canceled: consent change {change} opted the user out (keyword)"
    assert [rows[i]["status"] for i in (earlier_confirmation, in_flight, someone_else)] == [
        "queued", "sending", "queued"]
    assert rows[someone_else]["last_error"] is None

    # Any writer of an opt-out, even one that records only the history row.
    again = await queue(db, tenant, other_conv, other, "help")
    await db.execute("INSERT INTO consent_changes (tenant_id, user_id, state, source, changed_by) "
                     "VALUES ($1, $2, 'opted_out', 'operator', 'operator:test')", tenant, other)
    assert await db.fetchval("SELECT status FROM message_queue WHERE id = $1", again) == "canceled"
    # An opt-in cancels nothing.
    await db.execute("UPDATE users SET consent_state = 'opted_in' WHERE id = $1", user)
    kept = await queue(db, tenant, conv, user)
    await db.execute("INSERT INTO consent_changes (tenant_id, user_id, state, source, changed_by) "
                     "VALUES ($1, $2, 'opted_in', 'keyword', 'user')", tenant, user)
    assert await db.fetchval("SELECT status FROM message_queue WHERE id = $1", kept) == "queued"


async def test_consent_changes_are_append_only(db, one_user):
    tenant, conv, user, message = one_user
    change = await opt_out(db, user, message)
    for sql in ("UPDATE consent_changes SET state = 'opted_in'", "UPDATE consent_changes SET message_id = NULL",
                "UPDATE consent_changes SET changed_by = 'someone'", "DELETE FROM consent_changes"):
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await db.execute(sql)
    # Erasing the message (here with its conversation) keeps the change and only unlinks it.
    await db.execute("DELETE FROM conversations WHERE id = $1", conv)
    kept = await db.fetchrow("SELECT * FROM consent_changes WHERE id = $1", change)
    assert kept["message_id"] is None and kept["state"] == "opted_out" and kept["keyword"] == "STOP"
    with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
        await db.execute("DELETE FROM consent_changes")


@pytest.mark.parametrize("erase", ["DELETE FROM users", "DELETE FROM tenants"])
async def test_erasing_the_user_or_tenant_erases_its_consent_history(db, one_user, erase):
    tenant, conv, user, message = one_user
    await opt_out(db, user, message)  # linked to a message, which the same erasure deletes
    await db.execute("INSERT INTO consent_changes (tenant_id, user_id, state, source, changed_by) "
                     "VALUES ($1, $2, 'opted_in', 'operator', 'operator:test')", tenant, user)
    await queue(db, tenant, conv, user, "opt_out_confirmation", compliance=True)
    await db.execute(erase)
    for table in ("consent_changes", "message_queue", "messages", "users"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def _race(db: asyncpg.Connection, database_url: str, first: str, one_user: tuple[int, ...]) -> None:
    """Two connections: one queues a non-compliance message, the other records a STOP; `first` takes
    its step and holds its transaction open while the second starts, then commits."""
    tenant, conv, user, message = one_user
    a = await db_pool.connect(database_url)
    b = await db_pool.connect(database_url)
    try:
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        steps: dict[str, tuple[asyncpg.Connection, asyncpg.transaction.Transaction, Awaitable[object]]] = {
            "queue": (a, ta, queue(a, tenant, conv, user)), "stop": (b, tb, opt_out(b, user, message))}
        second = "stop" if first == "queue" else "queue"
        conn1, tx1, step1 = steps[first]
        conn2, tx2, step2 = steps[second]
        await step1
        later = asyncio.ensure_future(step2)
        await until_waiting_on_a_lock(db, conn2, later)
        await tx1.commit()
        try:
            await later
        except asyncpg.CheckViolationError:
            await tx2.rollback()
        else:
            await tx2.commit()
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("first", ["queue", "stop"])
async def test_a_concurrent_stop_and_queue_write_never_leave_a_message_queued_for_an_opted_out_user(
        db, database_url, one_user, first):
    await _race(db, database_url, first, one_user)
    assert await db.fetchval("SELECT consent_state FROM users") == "opted_out"
    assert await db.fetchval(
        "SELECT count(*) FROM message_queue WHERE status = 'queued' AND class <> 'compliance'") == 0
    if first == "queue":  # the queued row was committed before the STOP went on: canceled, saying why
        assert await db.fetchval("SELECT status FROM message_queue") == "canceled"
    else:  # the STOP committed first: the insert saw it and was refused
        assert await db.fetchval("SELECT count(*) FROM message_queue") == 0
