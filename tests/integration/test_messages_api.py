"""Operator API for outbound messages on the real app and database: sending with idempotency, opt-out
refusals, cancel and retry with their verdicts, the queue listing, tenant and user policy, budgets,
and tenant isolation."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests import support
from tests.integration.test_twilio_webhook import post_twilio
from tests.support import sms_pairs

AUTH = {"Authorization": f"Bearer {support.API_KEY}"}
FROM = "+14155550100"
TO = "+14155550101"


@pytest.fixture
async def api(make_client):
    return await make_client(TWILIO_FROM_NUMBER=FROM)


async def post(client: Any, path: str, body: object, **params: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post(path, json=body, headers=AUTH, params=params)
    return resp.status, await resp.json()


async def get(client: Any, path: str, **params: str) -> tuple[int, dict[str, Any]]:
    resp = await client.get(path, headers=AUTH, params=params)
    return resp.status, await resp.json()


async def patch(client: Any, path: str, body: object, **params: str) -> tuple[int, dict[str, Any]]:
    resp = await client.patch(path, json=body, headers=AUTH, params=params)
    return resp.status, await resp.json()


def message(**kw: object) -> dict[str, object]:
    return {"to": TO, "channel": "sms", "body": "Your order shipped", "class": "transactional", **kw}


async def test_a_message_is_queued_from_the_default_sender_and_answered_202(api, db):
    status, row = await post(api, "/api/messages", message(idempotency_key="order-1"))
    assert status == 202, row
    sender = await db.fetchval("SELECT default_sms_channel_id FROM tenants WHERE slug = 'default'")
    assert (row["status"], row["class"], row["reason"], row["channel_id"], row["phone"]) == (
        "queued", "transactional", "operator", sender, TO)
    assert row["created"] is True and row["idempotency_key"] == "order-1" and row["template"] is None
    assert row["priority"] == 50 and row["channel_kind"] == "twilio_sms"
    stored = await db.fetchrow("SELECT * FROM message_queue WHERE id = $1", row["id"])
    assert stored["idempotency_key"] == "api:order-1" and stored["body"] == "Your order shipped"
    status, found = await get(api, f"/api/messages/{row['id']}")
    assert status == 200 and found["verdicts"] == [] and found["id"] == row["id"]


async def test_a_template_message_keeps_its_template(api, db):
    template = {"name": "HX" + "a" * 32, "language": "en_US", "variables": {"1": "Ana"}}
    status, row = await post(api, "/api/messages", message(body=None, template=template, channel="whatsapp",
                                                           send_after="2030-01-01T09:00:00+01:00"))
    assert status == 202, row
    assert row["template"] == template and row["body"] is None and row["channel_kind"] == "whatsapp_cloud"
    assert row["scheduled_for"] == row["next_attempt_at"] == "2030-01-01T08:00:00+00:00"


async def test_the_same_key_and_request_answers_the_first_row_and_another_request_is_409(api, db):
    _, first = await post(api, "/api/messages", message(idempotency_key="k"))
    status, again = await post(api, "/api/messages", {**message(), "idempotency_key": "k"})
    assert status == 202 and again["id"] == first["id"] and again["created"] is False
    status, conflict = await post(api, "/api/messages", message(idempotency_key="k", body="Another text"))
    assert status == 409 and conflict["field"] == "idempotency_key"
    assert await db.fetchval("SELECT count(*) FROM message_queue") == 1


async def test_an_operator_key_never_collides_with_an_agents_key(api, db):
    _, first = await post(api, "/api/messages", message(idempotency_key="help:1"))
    assert first["created"] is True
    assert await db.fetchval("SELECT idempotency_key FROM message_queue") == "api:help:1"


async def test_a_reply_goes_from_the_number_the_user_wrote_to(api, db):
    resp = await post_twilio(api, sms_pairs("hello", "SM" + "a1" * 16, to="+14155550177"))
    assert resp.status == 200
    status, row = await post(api, "/api/messages", message(**{"class": "reply"}))
    assert status == 202, row
    assert await db.fetchval("SELECT address FROM channels WHERE id = $1", row["channel_id"]) == "+14155550177"
    assert row["conversation_id"] == await db.fetchval("SELECT id FROM conversations")


async def test_an_opted_out_recipient_is_refused_with_409(api, db):
    await post(api, "/api/messages", message())
    await db.execute("UPDATE users SET consent_state = 'opted_out'")
    status, body = await post(api, "/api/messages", message(body="another"))
    assert status == 409 and body["field"] == "to" and "opted out" in body["error"]


@pytest.mark.parametrize(("body", "status", "field"), [
    (message(**{"class": "compliance"}), 422, "class"),
    (message(**{"class": "urgent"}), 400, "class"),
    ({k: v for k, v in message().items() if k != "class"}, 400, "class"),
    ({k: v for k, v in message().items() if k != "to"}, 400, "to"),
    (message(to="12"), 422, "to"),
    (message(to="+1415\u0000555"), 400, "to"),
    (message(channel="fax"), 400, "channel"),
    (message(body=None), 422, "body"),
    (message(body=""), 400, "body"),
    (message(body="x" * 4097), 400, "body"),
    (message(body="a\u0000b"), 400, "body"),
    (message(template={"name": "x", "language": "english"}), 400, "template.language"),
    (message(template={"name": "x", "language": "en", "variables": {"1": 2}}), 400, "template.variables.1"),
    (message(send_after="2026-01-01T00:00:00"), 400, "send_after"),
    (message(expires_at="2000-01-01T00:00:00Z"), 422, "expires_at"),
    (message(send_after="2100-01-01T00:00:00Z", expires_at="2099-01-01T00:00:00Z"), 422, "expires_at"),
    (message(send_after="0001-01-01T00:00:00+01:00"), 400, "send_after"),
    (message(priority=10**6), 400, "priority"),
    (message(idempotency_key=""), 400, "idempotency_key"),
    (message(channel_id=0), 400, "channel_id"),
    (message(channel_id=999999), 422, "channel_id"),
    (message(extra=1), 400, "extra"),
    ([1, 2], 400, "body"),
])
async def test_a_refused_send_names_its_field(api, db, body, status, field):
    got, answer = await post(api, "/api/messages", body)
    assert (got, answer["field"]) == (status, field), answer
    assert await db.fetchval("SELECT count(*) FROM message_queue") == 0


async def test_whatsapp_without_a_default_sender_asks_for_a_channel(make_client, db):
    client = await make_client(WHATSAPP_PHONE_NUMBER_ID=None)
    status, body = await post(client, "/api/messages", message(channel="whatsapp"))
    assert status == 422 and body["field"] == "channel" and "no default whatsapp sender" in body["error"]
    assert await db.fetchval("SELECT count(*) FROM users") == 0  # nothing half-written


async def test_cancel_and_retry_move_the_row_and_its_verdicts_read_in_order(api, db):
    _, row = await post(api, "/api/messages", message())
    status, canceled = await post(api, f"/api/messages/{row['id']}/cancel", None)
    assert status == 200 and canceled["status"] == "canceled" and canceled["previous_status"] == "queued"
    status, again = await post(api, f"/api/messages/{row['id']}/cancel", None)
    assert status == 409 and again["field"] == "status"
    status, retried = await post(api, f"/api/messages/{row['id']}/retry", None)
    assert status == 200 and retried["status"] == "queued" and retried["attempts"] == 0
    _, found = await get(api, f"/api/messages/{row['id']}")
    assert [(v["gate"], v["verdict"]) for v in found["verdicts"]] == [("operator", "cancel"), ("operator", "requeue")]
    assert found["verdicts"][0]["reason"] == "canceled by operator"
    status, refused = await post(api, f"/api/messages/{row['id']}/retry", None)
    assert status == 409 and refused["field"] == "status"


async def test_retry_of_an_opted_out_users_row_is_409(api, db):
    _, row = await post(api, "/api/messages", message())
    await db.execute("UPDATE message_queue SET status = 'failed'")
    await db.execute("UPDATE users SET consent_state = 'opted_out'")
    status, body = await post(api, f"/api/messages/{row['id']}/retry", None)
    assert status == 409 and body["field"] == "id" and "opted out" in body["error"]


async def test_the_queue_lists_newest_first_with_filters_and_a_cursor(api, db):
    ids = []
    for n in range(5):
        _, row = await post(api, "/api/messages", message(to=f"+1415555020{n}",
                                                          **{"class": "marketing" if n % 2 else "transactional"}))
        ids.append(row["id"])
    status, page = await get(api, "/api/queue", limit="2")
    assert status == 200 and [i["id"] for i in page["items"]] == ids[:-3:-1]
    seen = [i["id"] for i in page["items"]]
    while page["next_cursor"]:
        _, page = await get(api, "/api/queue", limit="2", cursor=page["next_cursor"])
        seen += [i["id"] for i in page["items"]]
    assert seen == ids[::-1]
    _, marketing = await get(api, "/api/queue", **{"class": "marketing"})
    assert [i["id"] for i in marketing["items"]] == [ids[3], ids[1]]
    _, one = await get(api, "/api/queue", phone="+1 415 555 0202")
    assert [i["id"] for i in one["items"]] == [ids[2]]
    await post(api, f"/api/messages/{ids[0]}/cancel", None)
    _, canceled = await get(api, "/api/queue", status="canceled")
    assert [i["id"] for i in canceled["items"]] == [ids[0]]


@pytest.mark.parametrize(("params", "field"), [
    ({"status": "lost"}, "status"), ({"class": "x"}, "class"), ({"phone": "12"}, "phone"),
    ({"cursor": "nope"}, "cursor"), ({"limit": "0"}, "limit"), ({"tenant_id": "x"}, "tenant_id"),
])
async def test_bad_queue_parameters_are_400_naming_them(api, params, field):
    status, body = await get(api, "/api/queue", **params)
    assert (status, body["field"]) == (400, field)


async def other_tenant(db: asyncpg.Connection) -> int:
    tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('globex', 'G', 'h') RETURNING id")
    channel = await db.fetchval("INSERT INTO channels (tenant_id, kind, address, account_sid) "
                                "VALUES ($1, 'twilio_sms', '+14155550300', $2) RETURNING id",
                                tenant, "AC" + "f" * 32)
    await db.execute("UPDATE tenants SET default_sms_channel_id = $2 WHERE id = $1", tenant, channel)
    return tenant


async def test_two_tenants_cannot_see_or_move_each_others_rows(api, db):
    other = str(await other_tenant(db))
    _, mine = await post(api, "/api/messages", message())
    status, theirs = await post(api, "/api/messages", message(), tenant_id=other)
    assert status == 202 and theirs["user_id"] != mine["user_id"]
    for path in (f"/api/messages/{mine['id']}", f"/api/users/{mine['user_id']}/budget"):
        status, body = await get(api, path, tenant_id=other)
        assert (status, body["field"]) == (404, "id"), path
    status, _ = await get(api, f"/api/messages/{theirs['id']}")
    assert status == 404
    for action in ("cancel", "retry"):
        status, _ = await post(api, f"/api/messages/{mine['id']}/{action}", None, tenant_id=other)
        assert status == 404
    status, _ = await patch(api, f"/api/users/{mine['user_id']}", {"time_zone": "Europe/Paris"}, tenant_id=other)
    assert status == 404
    _, listed = await get(api, "/api/queue", tenant_id=other)
    assert [i["id"] for i in listed["items"]] == [theirs["id"]]
    _, default_page = await get(api, "/api/queue", limit="1")
    assert [i["id"] for i in default_page["items"]] == [mine["id"]]
    status, _ = await get(api, "/api/queue", tenant_id="999999")
    assert status == 404
    assert await db.fetchval("SELECT status FROM message_queue WHERE id = $1", mine["id"]) == "queued"


async def test_a_cursor_of_one_tenants_queue_is_refused_by_anothers(api, db):
    other = str(await other_tenant(db))
    for _ in range(2):
        await post(api, "/api/messages", message())
    _, page = await get(api, "/api/queue", limit="1")
    status, body = await get(api, "/api/queue", tenant_id=other, cursor=page["next_cursor"])
    assert (status, body["field"]) == (400, "cursor")


async def test_the_tenant_shows_its_effective_policy_and_patch_changes_only_what_it_names(api, db):
    status, tenant = await get(api, "/api/tenant")
    assert status == 200
    assert tenant["quiet_hours"] == {"start": "21:00", "end": "08:00"} and tenant["time_zone"] == "UTC"
    assert tenant["budget"] == {"hourly_limit": 2, "daily_limit": 5}
    assert tenant["default_senders"]["sms"] is not None
    status, tenant = await patch(api, "/api/tenant", {"quiet_hours": {"start": "22:30", "end": "07:00"},
                                                      "time_zone": "America/New_York",
                                                      "budget": {"daily_limit": 9}})
    assert status == 200, tenant
    assert tenant["quiet_hours"] == {"start": "22:30", "end": "07:00"} and tenant["time_zone"] == "America/New_York"
    assert tenant["budget"] == {"hourly_limit": 2, "daily_limit": 9}
    stored = await db.fetchrow("SELECT * FROM tenants WHERE slug = 'default'")
    assert (stored["quiet_hours"], stored["time_zone"], stored["budget_hourly"], stored["budget_daily"]) == (
        "22:30-07:00", "America/New_York", None, 9)
    status, tenant = await patch(api, "/api/tenant", {"quiet_hours": None, "budget": None})
    assert tenant["quiet_hours"] is None and tenant["budget"] == {"hourly_limit": 2, "daily_limit": 5}
    assert tenant["time_zone"] == "America/New_York"  # not named: unchanged
    assert await db.fetchval("SELECT quiet_hours FROM tenants WHERE slug = 'default'") == ""


@pytest.mark.parametrize(("body", "field"), [
    ({"time_zone": "Mars/Olympus"}, "time_zone"),
    ({"time_zone": "../etc/passwd"}, "time_zone"),
    ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours"),
    ({"quiet_hours": {"start": "24:00", "end": "08:00"}}, "quiet_hours.start"),
    ({"quiet_hours": "21:00-08:00"}, "quiet_hours"),
    ({"budget": {"hourly_limit": -1}}, "budget.hourly_limit"),
    ({"budget": {"weekly_limit": 3}}, "budget.weekly_limit"),
    ({"name": "x"}, "name"),
])
async def test_a_refused_tenant_patch_names_its_field_and_changes_nothing(api, db, body, field):
    status, answer = await patch(api, "/api/tenant", body)
    assert 400 <= status < 500 and answer["field"] == field, answer
    row = await db.fetchrow("SELECT quiet_hours, time_zone, budget_hourly FROM tenants WHERE slug = 'default'")
    assert tuple(row) == (None, None, None)


async def first_user(api: Any) -> int:
    _, row = await post(api, "/api/messages", message())
    return int(row["user_id"])


async def test_a_users_zone_flag_and_limits_are_patched_through_their_owner(api, db):
    user = await first_user(api)
    status, body = await patch(api, f"/api/users/{user}", {"time_zone": "Europe/Paris", "quiet_hours_enabled": False,
                                                           "budget": {"hourly_limit": 1}})
    assert status == 200, body
    assert (body["time_zone"], body["quiet_hours_enabled"], body["budget"]) == (
        "Europe/Paris", False, {"hourly_limit": 1, "daily_limit": None})
    _, body = await patch(api, f"/api/users/{user}", {"budget": {"daily_limit": 3}})
    assert body["budget"] == {"hourly_limit": 1, "daily_limit": 3} and body["time_zone"] == "Europe/Paris"
    _, body = await patch(api, f"/api/users/{user}", {"time_zone": None, "budget": None})
    assert body["time_zone"] is None and body["budget"] == {"hourly_limit": None, "daily_limit": None}
    assert await db.fetchval("SELECT quiet_hours_enabled FROM users WHERE id = $1", user) is False


@pytest.mark.parametrize(("body", "field"), [
    ({"time_zone": "Nowhere"}, "time_zone"), ({"quiet_hours_enabled": "maybe"}, "quiet_hours_enabled"),
    ({"budget": {"daily_limit": 10**9}}, "budget.daily_limit"), ({"phone": "+1"}, "phone"),
])
async def test_a_refused_user_patch_names_its_field(api, body, field):
    user = await first_user(api)
    status, answer = await patch(api, f"/api/users/{user}", body)
    assert 400 <= status < 500 and answer["field"] == field


async def test_an_unknown_user_is_404(api):
    status, body = await patch(api, "/api/users/987654", {"time_zone": "UTC"})
    assert (status, body["field"]) == (404, "id")
    status, body = await get(api, "/api/users/987654/budget")
    assert (status, body["field"]) == (404, "id")


async def set_counters(db: asyncpg.Connection, user: int, **values: object) -> None:
    """The dispatcher's counters, as it would have written them."""
    await db.execute("INSERT INTO user_message_budget (user_id, tenant_id) SELECT id, tenant_id FROM users "
                     "WHERE id = $1 ON CONFLICT DO NOTHING", user)
    for column, value in values.items():
        await db.execute(f"UPDATE user_message_budget SET {column} = $2 WHERE user_id = $1", user, value)


async def test_the_budget_reports_limits_use_and_when_the_next_message_may_go(api, db):
    from datetime import datetime

    user = await first_user(api)
    await patch(api, f"/api/users/{user}", {"time_zone": "America/New_York"})
    # 2026-03-10 11:30 in New York (EDT, UTC-4): the hour began at 15:00 UTC, the day at 04:00 UTC.
    await set_counters(db, user, hour_start=datetime.fromisoformat("2026-03-10T15:00:00+00:00"), hour_count=2,
                       day_start=datetime.fromisoformat("2026-03-10T04:00:00+00:00"), day_count=3,
                       last_proactive_at=datetime.fromisoformat("2026-03-10T15:20:00+00:00"))
    status, b = await get(api, f"/api/users/{user}/budget", at="2026-03-10T15:30:00Z")
    assert status == 200, b
    assert (b["hourly_limit"], b["daily_limit"], b["used_this_hour"], b["used_today"]) == (2, 5, 2, 3)
    assert b["limits_from"] == {"hourly": "tenant", "daily": "tenant"} and b["time_zone"] == "America/New_York"
    assert b["next_message_at"] == "2026-03-10T16:00:00+00:00"  # the hour is full
    assert b["quiet_until"] is None and b["spacing_until"] is None
    # An hour later the hour is new and the day has room: at once.
    _, later = await get(api, f"/api/users/{user}/budget", at="2026-03-10T16:30:00Z")
    assert (later["used_this_hour"], later["used_today"]) == (0, 3)
    assert later["next_message_at"] == "2026-03-10T16:30:00+00:00"


async def test_a_budget_that_frees_inside_quiet_hours_waits_for_their_end(api, db):
    from datetime import datetime

    user = await first_user(api)
    await patch(api, f"/api/users/{user}", {"time_zone": "America/New_York", "budget": {"hourly_limit": 1}})
    # 20:30 in New York: the hour is used up; the next one (21:00) is quiet until 08:00 (12:00 UTC).
    await set_counters(db, user, hour_start=datetime.fromisoformat("2026-03-11T00:00:00+00:00"), hour_count=1,
                       day_start=datetime.fromisoformat("2026-03-10T04:00:00+00:00"), day_count=1)
    _, b = await get(api, f"/api/users/{user}/budget", at="2026-03-11T00:30:00Z")
    assert b["limits_from"]["hourly"] == "user" and b["hourly_limit"] == 1 and b["used_this_hour"] == 1
    assert b["budget_until"] == "2026-03-11T01:00:00+00:00"
    assert b["next_message_at"] == "2026-03-11T12:00:00+00:00"
    await patch(api, f"/api/users/{user}", {"quiet_hours_enabled": False})
    _, b = await get(api, f"/api/users/{user}/budget", at="2026-03-11T00:30:00Z")
    assert b["next_message_at"] == "2026-03-11T01:00:00+00:00"


@pytest.mark.parametrize("at", ["yesterday", "2026-01-01T00:00:00", "9999-12-31T23:59:59-14:00",
                                "9999-12-31T23:00:00Z", "0001-01-01T00:00:00Z"])
async def test_a_bad_budget_instant_is_400(api, at):
    user = await first_user(api)
    status, body = await get(api, f"/api/users/{user}/budget", at=at)
    assert (status, body["field"]) == (400, "at")
