"""Operator API: health, readiness, bearer auth, users, conversations, messages and pagination."""

from __future__ import annotations

import pytest

from tests import support
from tests.integration.test_twilio_webhook import post_twilio
from tests.support import sms_pairs

AUTH = {"Authorization": f"Bearer {support.API_KEY}"}


async def test_healthz_needs_no_token(client):
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_readyz_reports_database_and_migrations(client):
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["checks"] == {"database": "ok", "migrations": "ok"}


async def test_readyz_checks_a_real_redis_when_configured(make_client, redis_url):
    client = await make_client(REDIS_URL=redis_url)
    body = await (await client.get("/readyz")).json()
    assert body["checks"]["redis"] == "ok"


async def test_readyz_is_503_when_redis_is_unreachable(make_client):
    client = await make_client(REDIS_URL="redis://127.0.0.1:1/0")
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["redis"].startswith("unreachable")


async def test_readyz_is_503_with_pending_migrations(client, db):
    await db.execute("DELETE FROM schema_migrations")
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["migrations"].startswith("pending")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": support.API_KEY},
                                     {"Authorization": "Basic " + support.API_KEY}])
async def test_api_without_the_bearer_token_is_401(client, headers):
    resp = await client.get("/api/users", params={"phone": "+14155550101"}, headers=headers)
    assert resp.status == 401


@pytest.mark.parametrize("path", ["/api/users", "/api/leads/1", "/api/dead-letters", "/api/no-such-thing", "/api/"])
async def test_everything_under_api_needs_the_token_even_unknown_paths(client, path):
    resp = await client.get(path, params={"phone": "+14155550101"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="parley"'
    assert (await client.get(path, params={"phone": "+14155550101"}, headers=AUTH)).status != 401


async def test_unknown_api_path_with_the_token_is_a_json_404(client):
    resp = await client.get("/api/no-such-thing", headers=AUTH)
    assert resp.status == 404
    assert "error" in await resp.json()


async def test_user_lookup_by_phone_shows_opt_out_and_consent_history(client):
    for i, word in enumerate(["hello", "STOP"]):
        assert (await post_twilio(client, sms_pairs(word, f"SM{i:032x}"))).status == 200
    resp = await client.get("/api/users", params={"phone": "+1 415-555-0101"}, headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["next_cursor"] is None
    [user] = body["items"]
    assert user["phone"] == "+14155550101" and user["opted_out"] is True
    [change] = user["consent_history"]
    assert change["state"] == "opted_out" and change["keyword"] == "stop" and change["message_id"]


async def test_conversations_and_messages_by_phone(client):
    for i in range(3):
        await post_twilio(client, sms_pairs(f"message {i}", f"SM{i:032x}"))
    convs = await (await client.get("/api/conversations", params={"phone": "+14155550101"}, headers=AUTH)).json()
    [conv] = convs["items"]
    resp = await client.get(f"/api/conversations/{conv['id']}/messages", headers=AUTH)
    items = (await resp.json())["items"]
    assert [m["body"] for m in items] == ["message 0", "message 1", "message 2"]
    for key in ("id", "direction", "body", "status", "provider", "provider_message_id", "created_at"):
        assert key in items[0]
    assert items[0]["provider"] == "twilio" and items[0]["direction"] == "inbound"


async def test_messages_paginate_with_a_cursor_until_exhausted(client):
    for i in range(5):
        await post_twilio(client, sms_pairs(f"m{i}", f"SM{i:032x}"))
    conv = (await (await client.get("/api/conversations", params={"phone": "+14155550101"},
                                    headers=AUTH)).json())["items"][0]
    seen, cursor = [], None
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get(f"/api/conversations/{conv['id']}/messages", params=params,
                                       headers=AUTH)).json()
        seen += [m["body"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["m0", "m1", "m2", "m3", "m4"]


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/api/users", {}, "phone"),
    ("/api/users", {"phone": "not-a-number"}, "phone"),
    ("/api/conversations", {"phone": "+14155550101", "limit": "0"}, "limit"),
    ("/api/conversations", {"phone": "+14155550101", "limit": "x"}, "limit"),
    ("/api/conversations", {"phone": "+14155550101", "cursor": "garbage!"}, "cursor"),
    ("/api/conversations/abc/messages", {}, "id"),
])
async def test_bad_query_parameters_are_400_naming_them(client, path, params, field):
    resp = await client.get(path, params=params, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["field"] == field


async def test_unknown_conversation_is_404(client):
    assert (await client.get("/api/conversations/999999/messages", headers=AUTH)).status == 404
