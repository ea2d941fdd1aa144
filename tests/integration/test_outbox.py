"""The outbox on a real database: idempotency per tenant, the opt-out guard as our own error, the
operator's cancel and requeue with their verdict rows, and who a first message goes to and from."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import asyncpg
import pytest

from db import errors as db_errors
from db import notify
from db import pool as db_pool
from services.channels.outbound import Template
from services.orchestrator import outbox
from services.orchestrator.outbox import ChannelFamily, Reason, Status
from services.orchestrator.policy import MessageClass

ACCOUNT = "AC0123456789abcdef0123456789abcdef"


async def make_tenant(db: asyncpg.Connection, slug: str, number: str) -> tuple[int, int]:
    """A tenant and its SMS number, set as its default SMS sender."""
    tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ($1, $1, 'h') RETURNING id", slug)
    channel = await db.fetchval("INSERT INTO channels (tenant_id, kind, address, account_sid) "
                                "VALUES ($1, 'twilio_sms', $2, $3) RETURNING id", tenant, number, ACCOUNT)
    await db.execute("UPDATE tenants SET default_sms_channel_id = $2 WHERE id = $1", tenant, channel)
    return tenant, channel


@pytest.fixture
async def acme(db):
    return await make_tenant(db, "acme", "+14155550100")


async def recipient(db: asyncpg.Connection, tenant: int, phone: str = "+14155550101") -> outbox.Recipient:
    async with db.transaction():
        return await outbox.resolve_recipient(db, tenant, phone, ChannelFamily.SMS)


def item(tenant: int, r: outbox.Recipient, **kw: object) -> outbox.Item:
    fields: dict[str, object] = dict(
        tenant_id=tenant, user_id=r.user_id, conversation_id=r.conversation_id, channel_id=r.channel_id,
        klass=MessageClass.TRANSACTIONAL, reason=Reason.OPERATOR, priority=50, body="Your order shipped")
    fields.update(kw)
    return outbox.Item(**fields)  # type: ignore[arg-type]


async def enqueue(db: asyncpg.Connection, it: outbox.Item) -> outbox.Enqueued:
    async with db.transaction():
        return await outbox.enqueue(db, it)


async def test_a_first_message_creates_the_user_and_a_conversation_on_the_default_sender(db, acme):
    tenant, channel = acme
    r = await recipient(db, tenant, "+1 415 555 0101")
    assert r.user_created and r.channel_id == channel and r.phone == "+14155550101"
    user = await db.fetchrow("SELECT * FROM users WHERE id = $1", r.user_id)
    assert (user["phone"], user["tenant_id"], user["consent_state"]) == ("+14155550101", tenant, "unknown")
    assert user["time_zone"] == "America/Los_Angeles"  # what the number maps to
    conv = await db.fetchrow("SELECT * FROM conversations WHERE id = $1", r.conversation_id)
    assert (conv["user_id"], conv["channel_id"], conv["last_inbound_at"]) == (r.user_id, channel, None)
    again = await recipient(db, tenant, "+14155550101")
    assert (again.user_id, again.conversation_id, again.user_created) == (r.user_id, r.conversation_id, False)


async def test_a_reply_goes_from_the_number_the_user_wrote_to(db, acme):
    tenant, default = acme
    other = await db.fetchval("INSERT INTO channels (tenant_id, kind, address, account_sid) "
                              "VALUES ($1, 'twilio_sms', '+14155550199', $2) RETURNING id", tenant, ACCOUNT)
    user = await db.fetchval("INSERT INTO users (tenant_id, phone) VALUES ($1, '+14155550101') RETURNING id", tenant)
    conv = await db.fetchval("INSERT INTO conversations (tenant_id, user_id, channel_id, last_inbound_at) "
                             "VALUES ($1, $2, $3, now()) RETURNING id", tenant, user, other)
    r = await recipient(db, tenant)
    assert (r.user_id, r.conversation_id, r.channel_id) == (user, conv, other)
    assert other != default


async def test_a_named_channel_wins_and_must_be_the_tenants_and_of_the_family(db, acme):
    tenant, _ = acme
    wa = await db.fetchval("INSERT INTO channels (tenant_id, kind, address) VALUES ($1, 'whatsapp_cloud', '1234') "
                           "RETURNING id", tenant)
    other_tenant, other_channel = await make_tenant(db, "globex", "+14155550200")
    async with db.transaction():
        r = await outbox.resolve_recipient(db, tenant, "+14155550101", ChannelFamily.WHATSAPP, wa)
    assert r.channel_id == wa
    for channel, family, problem in [(other_channel, ChannelFamily.SMS, "is not a channel of this tenant"),
                                     (wa, ChannelFamily.SMS, "is a whatsapp_cloud channel")]:
        with pytest.raises(outbox.NoSender) as refused:
            await outbox.resolve_recipient(db, tenant, "+14155550101", family, channel)
        assert refused.value.field == "channel_id" and problem in refused.value.problem


async def test_no_default_sender_is_a_clear_refusal(db, acme):
    tenant, _ = acme
    with pytest.raises(outbox.NoSender) as refused:
        await outbox.resolve_recipient(db, tenant, "+14155550101", ChannelFamily.WHATSAPP)
    assert refused.value.field == "channel" and "no default whatsapp sender" in refused.value.problem
    with pytest.raises(outbox.OutboxError) as bad:
        await outbox.resolve_recipient(db, tenant, "12", ChannelFamily.SMS)
    assert bad.value.field == "to"


async def test_the_same_key_and_request_answers_the_first_row(db, acme):
    tenant, _ = acme
    r = await recipient(db, tenant)
    first = await enqueue(db, item(tenant, r, idempotency_key="order-1"))
    again = await enqueue(db, item(tenant, r, idempotency_key="order-1"))
    assert first.created and not again.created and again.id == first.id and again.status is Status.QUEUED
    assert await db.fetchval("SELECT count(*) FROM message_queue") == 1


async def test_the_same_key_with_another_request_is_a_conflict(db, acme):
    tenant, _ = acme
    r = await recipient(db, tenant)
    first = await enqueue(db, item(tenant, r, idempotency_key="order-1"))
    for changed in [{"body": "Your order is late"}, {"priority": 51}, {"klass": MessageClass.MARKETING},
                    {"template": Template("HX" + "0" * 32, "en", {"1": "Ana"})}]:
        with pytest.raises(outbox.IdempotencyConflict) as conflict:
            await enqueue(db, item(tenant, r, idempotency_key="order-1", **changed))
        assert conflict.value.queue_id == first.id and conflict.value.field == "idempotency_key"
    assert await db.fetchval("SELECT count(*) FROM message_queue") == 1


async def test_keys_are_per_tenant(db, acme):
    tenant, _ = acme
    other, _ = await make_tenant(db, "globex", "+14155550200")
    a = await enqueue(db, item(tenant, await recipient(db, tenant), idempotency_key="k"))
    b = await enqueue(db, item(other, await recipient(db, other), idempotency_key="k"))
    assert a.created and b.created and a.id != b.id


async def test_a_row_without_a_key_is_always_new(db, acme):
    tenant, _ = acme
    r = await recipient(db, tenant)
    ids = {(await enqueue(db, item(tenant, r))).id for _ in range(3)}
    assert len(ids) == 3


async def test_the_row_holds_what_was_asked(db, acme):
    tenant, channel = acme
    r = await recipient(db, tenant)
    template = Template("HX" + "a" * 32, "en_US", {"1": "Ana", "2": "10:00"})
    queued = await enqueue(db, item(tenant, r, body=None, template=template, idempotency_key="t", max_attempts=3))
    row = await db.fetchrow("SELECT * FROM message_queue WHERE id = $1", queued.id)
    assert (row["class"], row["reason"], row["status"], row["channel_id"], row["body"]) == (
        "transactional", "operator", "queued", channel, None)
    assert (row["template_name"], row["template_language"], row["template_variables"]) == (
        template.name, "en_US", {"1": "Ana", "2": "10:00"})
    assert row["max_attempts"] == 3 and row["next_attempt_at"] == row["scheduled_for"]
    assert row["request_hash"] == item(tenant, r, body=None, template=template, idempotency_key="t",
                                       max_attempts=3).request_hash()


async def test_a_reply_without_a_channel_goes_from_its_conversations(db, acme):
    tenant, channel = acme
    r = await recipient(db, tenant)
    queued = await enqueue(db, item(tenant, r, channel_id=None, klass=MessageClass.REPLY, reason=Reason.HELP))
    assert await db.fetchval("SELECT channel_id FROM message_queue WHERE id = $1", queued.id) == channel


async def opt_out(db: asyncpg.Connection, user: int) -> None:
    await db.execute("UPDATE users SET consent_state = 'opted_out' WHERE id = $1", user)


async def test_an_opted_out_user_gets_nothing_but_the_opt_out_confirmation(db, acme):
    tenant, _ = acme
    r = await recipient(db, tenant)
    await opt_out(db, r.user_id)
    with pytest.raises(db_errors.OptedOut):
        await enqueue(db, item(tenant, r))
    confirmation = await enqueue(db, item(tenant, r, klass=MessageClass.COMPLIANCE,
                                          reason=Reason.OPT_OUT_CONFIRMATION, body="unsubscribed"))
    assert confirmation.created
    assert [r["reason"] for r in await db.fetch("SELECT reason FROM message_queue")] == ["opt_out_confirmation"]


async def verdicts(db: asyncpg.Connection, queue_id: int) -> list[tuple[str, str]]:
    return [(v["gate"], v["verdict"]) for v in await db.fetch(
        "SELECT gate, verdict FROM message_queue_verdicts WHERE queue_id = $1 ORDER BY id", queue_id)]


async def test_cancel_then_requeue_moves_the_row_and_records_each_verdict(db, acme):
    tenant, _ = acme
    queued = await enqueue(db, item(tenant, await recipient(db, tenant)))
    await db.execute("UPDATE message_queue SET attempts = 2 WHERE id = $1", queued.id)
    moved = await outbox.cancel(db, tenant, queued.id)
    assert (moved.previous, moved.status) == (Status.QUEUED, Status.CANCELED)
    assert await db.fetchval("SELECT status FROM message_queue WHERE id = $1", queued.id) == "canceled"
    back = await outbox.requeue(db, tenant, queued.id)
    assert (back.previous, back.status) == (Status.CANCELED, Status.QUEUED)
    row = await db.fetchrow("SELECT * FROM message_queue WHERE id = $1", queued.id)
    assert (row["status"], row["attempts"], row["last_error"]) == ("queued", 0, None)
    assert await verdicts(db, queued.id) == [("operator", "cancel"), ("operator", "requeue")]
    detail = await db.fetchval("SELECT detail FROM message_queue_verdicts WHERE verdict = 'cancel'")
    assert detail["previous_status"] == "queued"


@pytest.mark.parametrize("status", ["sending", "unknown", "sent", "delivered", "failed", "expired", "canceled",
                                    "suppressed", "superseded"])
async def test_only_a_waiting_row_can_be_canceled(db, acme, status):
    tenant, _ = acme
    queued = await enqueue(db, item(tenant, await recipient(db, tenant)))
    await db.execute("UPDATE message_queue SET status = $2, locked_until = CASE WHEN $2 = 'sending' THEN now() END "
                     "WHERE id = $1", queued.id, status)
    with pytest.raises(outbox.WrongStatus) as refused:
        await outbox.cancel(db, tenant, queued.id)
    assert refused.value.status == status
    assert await db.fetchval("SELECT status FROM message_queue WHERE id = $1", queued.id) == status
    assert await verdicts(db, queued.id) == []


@pytest.mark.parametrize("status", ["failed", "expired", "canceled"])
async def test_a_row_that_ended_unsent_can_be_requeued(db, acme, status):
    tenant, _ = acme
    queued = await enqueue(db, item(tenant, await recipient(db, tenant)))
    await db.execute("UPDATE message_queue SET status = $2, attempts = 5, last_error = 'x', "
                     "expires_at = now() - interval '1 minute' WHERE id = $1", queued.id, status)
    moved = await outbox.requeue(db, tenant, queued.id)
    assert moved.status is Status.QUEUED
    row = await db.fetchrow("SELECT * FROM message_queue WHERE id = $1", queued.id)
    assert (row["status"], row["attempts"], row["expires_at"]) == ("queued", 0, None)
    detail = await db.fetchval("SELECT detail FROM message_queue_verdicts WHERE queue_id = $1", queued.id)
    assert detail["previous_status"] == status and "expires_at" in detail


@pytest.mark.parametrize("status", ["queued", "deferred", "sent", "unknown", "suppressed"])
async def test_a_row_still_waiting_or_sent_is_not_requeued(db, acme, status):
    tenant, _ = acme
    queued = await enqueue(db, item(tenant, await recipient(db, tenant)))
    await db.execute("UPDATE message_queue SET status = $2 WHERE id = $1", queued.id, status)
    with pytest.raises(outbox.WrongStatus):
        await outbox.requeue(db, tenant, queued.id)


async def test_a_row_of_an_opted_out_user_is_not_requeued(db, acme):
    tenant, _ = acme
    r = await recipient(db, tenant)
    queued = await enqueue(db, item(tenant, r))
    await outbox.cancel(db, tenant, queued.id)
    await opt_out(db, r.user_id)
    with pytest.raises(db_errors.OptedOut):
        await outbox.requeue(db, tenant, queued.id)
    assert await db.fetchval("SELECT status FROM message_queue WHERE id = $1", queued.id) == "canceled"
    assert await verdicts(db, queued.id) == [("operator", "cancel")]


async def test_another_tenants_row_is_not_found(db, acme):
    tenant, _ = acme
    other, _ = await make_tenant(db, "globex", "+14155550200")
    queued = await enqueue(db, item(tenant, await recipient(db, tenant)))
    for move in (outbox.cancel, outbox.requeue):
        with pytest.raises(outbox.NotFound):
            await move(db, other, queued.id)
    assert await db.fetchval("SELECT status FROM message_queue WHERE id = $1", queued.id) == "queued"


async def test_enqueue_wakes_dispatchers_after_commit(database_url, db, acme):
    tenant, _ = acme
    listener = await db_pool.connect(database_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(notify.QUEUE, lambda *args: heard.put_nowait(args[2]))
    pool = await db_pool.create(database_url, 2)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await outbox.enqueue(conn, item(tenant, await outbox.resolve_recipient(
                conn, tenant, "+14155550101", ChannelFamily.SMS)))
        outbox.wake(pool)
        await notify.notifier(pool).flush()
        assert await asyncio.wait_for(heard.get(), 30) == notify.QUEUE  # a bound on a hang, not a timing
    finally:
        await listener.close()
        await notify.close(pool)
        await pool.close()


def test_the_request_hash_covers_the_content_but_not_the_key():
    base = outbox.Item(1, 2, 3, 4, MessageClass.MARKETING, Reason.OPERATOR, body="hi", idempotency_key="a")
    assert base.request_hash() == replace(base, idempotency_key="b").request_hash()
    assert base.request_hash() != replace(base, body="hello").request_hash()
    asked = replace(base, request='{"to": "+14155550101"}')
    assert asked.request_hash() == replace(asked, channel_id=9, conversation_id=8).request_hash()
    assert asked.request_hash() != replace(asked, request='{"to": "+14155550102"}').request_hash()
    assert asked.request_hash() != replace(asked, tenant_id=2).request_hash()


async def test_two_producers_racing_on_one_key_queue_one_row(database_url, db, acme):
    tenant, _ = acme
    r = await recipient(db, tenant)
    first, second = await db_pool.connect(database_url), await db_pool.connect(database_url)
    try:
        tx = first.transaction()
        await tx.start()
        mine = await outbox.enqueue(first, item(tenant, r, idempotency_key="race"))
        # The second waits on the first's uncommitted key, then answers its row.
        theirs = asyncio.ensure_future(enqueue(second, item(tenant, r, idempotency_key="race")))
        while not await db.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted",
                                    second.get_server_pid()):
            await asyncio.sleep(0.01)
        await tx.commit()
        answered = await theirs
    finally:
        await first.close()
        await second.close()
    assert mine.created and not answered.created and answered.id == mine.id
    assert await db.fetchval("SELECT count(*) FROM message_queue") == 1


async def test_a_retried_agent_reply_worded_otherwise_keeps_the_first(db, acme):
    from agents import replies

    tenant, channel = acme
    r = await recipient(db, tenant)
    message = await db.fetchval(
        "INSERT INTO messages (tenant_id, conversation_id, direction, provider, message_type, body, status) "
        "VALUES ($1, $2, 'inbound', 'twilio', 'text', 'STOP', 'received') RETURNING id", tenant, r.conversation_id)
    first = replies.Reply(tenant, r.conversation_id, r.user_id, "unsubscribed", replies.Reason.OPT_OUT_CONFIRMATION,
                          message, f"opt_out:message:{message}")
    async with db.transaction():
        queued = await replies.enqueue(db, first)
        # A retried task that read the message in another language: same cause, other text.
        assert await replies.enqueue(db, replace(first, body="désinscrit")) is None
        assert await replies.enqueue(db, first) is None
    row = await db.fetchrow("SELECT * FROM message_queue")
    assert (row["id"], row["body"], row["class"], row["channel_id"], row["priority"]) == (
        queued, "unsubscribed", "compliance", channel, 100)


async def test_the_enums_match_the_checks(db):
    definitions = {r["conname"]: r["def"] for r in await db.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid = 'message_queue'::regclass")}
    for constraint, enum in [("message_queue_status_check", Status), ("message_queue_reason_check", Reason),
                             ("message_queue_class_check", MessageClass)]:
        allowed = set(re.findall(r"'([a-z_]+)'::text", definitions[constraint]))
        assert allowed == {e.value for e in enum}, constraint
