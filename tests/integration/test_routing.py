"""Every webhook is verified with the secret of the channel it lands in: two tenants on one machine,
one of them the attacker. Tenant A is the default tenant (the settings' account and app); tenant B is
added per test. A's secrets must never land a message in B's channel, whether or not B has one stored."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from services import runtime as runtime_mod
from services import settings as settings_mod
from services import tenants
from services.channels import twilio, whatsapp_cloud
from services.inbound import public_url
from tests import support
from tests.support import PUBLIC_BASE, meta_request, sms_pairs, twilio_request

B_ACCOUNT = "AC" + "b" * 32
B_NUMBER = "+14155550188"
B_TOKEN = "tenant-b-auth-token-5e1d"
B_SECRET = "tenant-b-app-secret-77aa"
B_PHONE_NUMBER_ID = "555000111"


async def post_twilio(client, pairs, path="/webhooks/twilio", url=None, token=support.AUTH_TOKEN, headers=None):
    body, signed = twilio_request(pairs, path=path, url=url, token=token)
    signed.update(headers or {})
    return await client.post(path, data=body, headers=signed)


async def post_meta(client, payload, secret=support.APP_SECRET):
    body, headers = meta_request(payload, secret)
    return await client.post("/webhooks/whatsapp", data=body, headers=headers)


def claiming(pairs: list[tuple[str, str]], account_sid: str) -> list[tuple[str, str]]:
    return [(k, account_sid if k == "AccountSid" else v) for k, v in pairs]


async def tenant_b(db, *, token: str | None = B_TOKEN, service: str | None = None) -> tuple[int, int]:
    tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('b', 'B', 'h') RETURNING id")
    channel = await db.fetchval(
        "INSERT INTO channels (tenant_id, kind, address, account_sid, messaging_service_sid, credentials) "
        "VALUES ($1, 'twilio_sms', $2, $3, $4, $5) RETURNING id",
        tenant, B_NUMBER, B_ACCOUNT, service, {"auth_token": token} if token else {})
    return tenant, channel


async def count(db, table: str) -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM {table}"))


# --- Twilio ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("b_token", [None, B_TOKEN], ids=["b-without-token", "b-with-token"])
async def test_a_token_never_lands_a_message_in_b_channel(client, db, b_token):
    await tenant_b(db, token=b_token)
    pairs = claiming(sms_pairs("hi", "SM" + "a1" * 16, to=B_NUMBER), B_ACCOUNT)
    resp = await post_twilio(client, pairs, token=support.AUTH_TOKEN)
    assert resp.status == 403
    assert await count(db, "messages") == 0 and await count(db, "users") == 0


async def test_b_token_lands_in_b_channel(client, db):
    tenant, channel = await tenant_b(db)
    pairs = claiming(sms_pairs("hi", "SM" + "a2" * 16, to=B_NUMBER), B_ACCOUNT)
    assert (await post_twilio(client, pairs, token=B_TOKEN)).status == 200
    assert tuple(await db.fetchrow("SELECT tenant_id, channel_id FROM conversations")) == (tenant, channel)


async def test_a_request_claiming_its_own_account_for_b_number_stays_in_a(client, db):
    b_tenant, b_channel = await tenant_b(db)
    # Genuinely A's (its account, its token), addressed to a number B holds: A's catch-all keeps it.
    assert (await post_twilio(client, sms_pairs("hi", "SM" + "a3" * 16, to=B_NUMBER))).status == 200
    row = await db.fetchrow("SELECT c.tenant_id, c.channel_id, ch.address FROM conversations c "
                            "JOIN channels ch ON ch.id = c.channel_id")
    assert row["tenant_id"] != b_tenant and row["channel_id"] != b_channel and row["address"] == "*"
    assert await db.fetchval("SELECT count(*) FROM channels WHERE address = $1", B_NUMBER) == 1


async def test_a_token_cannot_use_b_messaging_service(client, db):
    service = "MG" + "b" * 32
    await tenant_b(db, token=None, service=service)
    pairs = claiming(sms_pairs("hi", "SM" + "a4" * 16, to="+14155550142", MessagingServiceSid=service), B_ACCOUNT)
    assert (await post_twilio(client, pairs)).status == 403
    assert await count(db, "messages") == 0


async def test_a_token_cannot_post_b_status_callbacks_through_b_number(client, db):
    await tenant_b(db, token=None)
    pairs = [("MessageSid", "SM" + "a5" * 16), ("MessageStatus", "delivered"), ("AccountSid", B_ACCOUNT),
             ("From", B_NUMBER), ("To", "+14155550101")]
    assert (await post_twilio(client, pairs, path="/webhooks/twilio/status")).status == 403
    assert await count(db, "message_statuses") == 0


@pytest.mark.parametrize("path", ["/webhooks/twilio", "/webhooks/twilio/status"])
async def test_missing_account_sid_is_400_naming_it_without_any_hmac(client, db, monkeypatch, path):
    pairs = [(k, v) for k, v in sms_pairs("hi", "SM" + "a6" * 16) if k != "AccountSid"]
    body, headers = twilio_request(pairs, path=path)
    calls: list[str] = []
    verify = twilio.verify_signature
    monkeypatch.setattr(twilio, "verify_signature", lambda *a: calls.append("hmac") or verify(*a))
    resp = await client.post(path, data=body, headers=headers)
    assert resp.status == 400 and (await resp.json())["field"] == "AccountSid"
    assert calls == []
    assert await count(db, "messages") == 0


async def test_a_request_is_checked_against_one_token_only(client, db, monkeypatch):
    await tenant_b(db)  # a second token on the machine, which must not be tried
    tokens: list[str] = []
    verify = twilio.verify_signature
    monkeypatch.setattr(twilio, "verify_signature", lambda token, *a: tokens.append(token) or verify(token, *a))
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "a7" * 16), token="forged-token")
    assert resp.status == 403 and tokens == [support.AUTH_TOKEN]


async def test_a_forged_request_for_a_new_number_creates_no_channel(client, db):
    before = await count(db, "channels")
    resp = await post_twilio(client, sms_pairs("hi", "SM" + "a8" * 16, to="+14155550777"), token="forged-token")
    assert resp.status == 403
    assert await count(db, "channels") == before
    # Signed, the same request materialises the number.
    assert (await post_twilio(client, sms_pairs("hi", "SM" + "a8" * 16, to="+14155550777"))).status == 200
    assert await count(db, "channels") == before + 1


async def test_a_signed_request_with_a_malformed_field_is_still_400(client, db):
    pairs = sms_pairs("hi", "SM" + "a9" * 16) + [("NumMedia", "x")]
    resp = await post_twilio(client, pairs)
    assert resp.status == 400 and (await resp.json())["field"] == "NumMedia"
    # Forged, the same form is refused before its fields are judged.
    assert (await post_twilio(client, pairs, token="forged-token")).status == 403


# --- Meta ------------------------------------------------------------------------------------------

def delivery(*changes: tuple[str, str]) -> dict[str, Any]:
    """One delivery with a `messages` change per (phone_number_id, wamid)."""
    payload = support.whatsapp_text("hi", "wamid.base")
    template = payload["entry"][0]["changes"][0]
    payload["entry"][0]["changes"] = []
    for n, (phone_number_id, wamid) in enumerate(changes):
        change = copy.deepcopy(template)
        change["value"]["metadata"]["phone_number_id"] = phone_number_id
        change["value"]["messages"][0]["id"] = wamid
        change["value"]["contacts"][0]["wa_id"] = change["value"]["messages"][0]["from"] = f"1650555{n:04d}"
        payload["entry"][0]["changes"].append(change)
    return payload


async def whatsapp_b(db, secret: str | None = B_SECRET, phone_number_id: str = B_PHONE_NUMBER_ID) -> int:
    tenant = await db.fetchval("SELECT id FROM tenants WHERE slug = 'b'") or await db.fetchval(
        "INSERT INTO tenants (slug, name, help_text) VALUES ('b', 'B', 'h') RETURNING id")
    await db.execute("INSERT INTO channels (tenant_id, kind, address, credentials) "
                     "VALUES ($1, 'whatsapp_cloud', $2, $3)", tenant, phone_number_id,
                     {"app_secret": secret} if secret else {})
    return int(tenant)


async def stored_wamids(db) -> set[str]:
    return {r["provider_message_id"] for r in await db.fetch("SELECT provider_message_id FROM messages")}


@pytest.mark.parametrize("b_secret", [None, B_SECRET], ids=["b-without-secret", "b-with-secret"])
async def test_a_secret_never_lands_a_meta_message_in_b_channel(client, db, b_secret):
    await whatsapp_b(db, b_secret)
    resp = await post_meta(client, delivery((B_PHONE_NUMBER_ID, "wamid.B1")))
    assert resp.status == 403
    assert await count(db, "messages") == 0


async def test_each_change_is_accepted_only_if_its_numbers_app_signed(client, db):
    b_tenant = await whatsapp_b(db)
    payload = delivery((support.PHONE_NUMBER_ID, "wamid.A1"), (B_PHONE_NUMBER_ID, "wamid.B2"))
    resp = await post_meta(client, payload)
    assert resp.status == 200 and (await resp.json())["received"] == 1
    assert await stored_wamids(db) == {"wamid.A1"}
    # The same delivery signed by B's app stores B's change only, in B's tenant.
    assert (await post_meta(client, payload, secret=B_SECRET)).status == 200
    assert await stored_wamids(db) == {"wamid.A1", "wamid.B2"}
    assert await db.fetchval("SELECT tenant_id FROM messages WHERE provider_message_id = 'wamid.B2'") == b_tenant


async def test_an_unknown_number_in_one_change_does_not_fail_the_delivery(client, db, caplog):
    payload = delivery((support.PHONE_NUMBER_ID, "wamid.K1"), ("999000999", "wamid.U1"))
    resp = await post_meta(client, payload)
    assert resp.status == 200
    assert await stored_wamids(db) == {"wamid.K1"}
    assert any(r.getMessage() == "whatsapp change ignored: unknown phone_number_id"
               and getattr(r, "phone_number_id", None) == "999000999" for r in caplog.records)


async def test_a_delivery_costs_one_hmac_per_distinct_secret(client, db, monkeypatch):
    tenant = await db.fetchval("SELECT id FROM tenants")
    for number in ("300000001", "300000002", "300000003"):  # four numbers of A's app, one of B's
        await db.execute("INSERT INTO channels (tenant_id, kind, address, credentials) "
                         "VALUES ($1, 'whatsapp_cloud', $2, $3)", tenant, number, {"app_secret": support.APP_SECRET})
    await whatsapp_b(db)
    payload = delivery((support.PHONE_NUMBER_ID, "wamid.H0"), ("300000001", "wamid.H1"), ("300000002", "wamid.H2"),
                       ("300000003", "wamid.H3"), (B_PHONE_NUMBER_ID, "wamid.H4"))
    secrets: list[str] = []
    verify = whatsapp_cloud.verify_signature
    monkeypatch.setattr(whatsapp_cloud, "verify_signature",
                        lambda secret, *a: secrets.append(secret) or verify(secret, *a))
    assert (await post_meta(client, payload, secret="forged-secret")).status == 403
    assert sorted(secrets) == sorted([support.APP_SECRET, B_SECRET])
    secrets.clear()
    assert (await post_meta(client, payload)).status == 200
    assert len(secrets) <= 2 and await count(db, "messages") == 4


async def test_meta_statuses_touch_only_the_signing_apps_tenant(client, db):
    b_tenant = await whatsapp_b(db)
    b_user = await db.fetchval("INSERT INTO users (tenant_id, phone) VALUES ($1, '+16505550000') RETURNING id",
                               b_tenant)
    b_channel = await db.fetchval("SELECT id FROM channels WHERE address = $1", B_PHONE_NUMBER_ID)
    conv = await db.fetchval("INSERT INTO conversations (tenant_id, user_id, channel_id) VALUES ($1, $2, $3) "
                             "RETURNING id", b_tenant, b_user, b_channel)
    await db.execute("INSERT INTO messages (tenant_id, conversation_id, direction, provider, provider_message_id, "
                     "message_type, body, status) VALUES ($1, $2, 'outbound', 'meta', 'wamid.BOUT', 'text', 'x', "
                     "'sent')", b_tenant, conv)
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550783881", "phone_number_id": support.PHONE_NUMBER_ID},
             "statuses": [{"id": "wamid.BOUT", "status": "read", "timestamp": "1749416383",
                           "recipient_id": "16505550000"}]}
    payload = {"object": "whatsapp_business_account",
               "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]}
    assert (await post_meta(client, payload)).status == 200  # A's app, A's number, B's message id
    assert await db.fetchval("SELECT status FROM messages WHERE provider_message_id = 'wamid.BOUT'") == "sent"
    assert await db.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", b_tenant) == 0


# --- credentials: one source of truth ------------------------------------------------------------

async def test_a_materialised_number_keeps_no_copy_of_the_catch_alls_credentials(client, db):
    assert (await post_twilio(client, sms_pairs("hi", "SM" + "b1" * 16))).status == 200
    row = await db.fetchrow("SELECT n.credentials, n.parent_channel_id, ca.id AS catch_all FROM channels n "
                            "JOIN channels ca ON ca.address = '*' AND ca.kind = n.kind "
                            "WHERE n.address = '+14155550100'")
    assert row["credentials"] == {} and row["parent_channel_id"] == row["catch_all"]


async def test_a_rotated_token_takes_effect_on_restart_for_every_number_of_the_account(client, make_client, db):
    for n, to in enumerate(("+14155550100", "+14155550111")):
        assert (await post_twilio(client, sms_pairs("hi", f"SM{0xb200 + n:032x}", to=to))).status == 200
    restarted = await make_client(TWILIO_AUTH_TOKEN="rotated-auth-token-91c0")
    # The numbers are written after the catch-all (an operator renames one, say): a copy of the old
    # token on them would now be what the directory reads last.
    await db.execute("UPDATE channels SET updated_at = now() WHERE kind = 'twilio_sms' AND address <> '*'")
    for n, to in enumerate(("+14155550100", "+14155550111")):
        pairs = sms_pairs("again", f"SM{0xb300 + n:032x}", to=to)
        assert (await post_twilio(restarted, pairs)).status == 403  # the old token
        assert (await post_twilio(restarted, pairs, token="rotated-auth-token-91c0")).status == 200


async def test_removed_twilio_settings_stop_every_number_of_the_account(client, make_client, db):
    assert (await post_twilio(client, sms_pairs("hi", "SM" + "b4" * 16))).status == 200
    restarted = await make_client(TWILIO_ACCOUNT_SID="", TWILIO_AUTH_TOKEN="")
    assert (await post_twilio(restarted, sms_pairs("again", "SM" + "b5" * 16))).status == 403
    assert (await post_twilio(restarted, sms_pairs("new", "SM" + "b6" * 16, to="+14155550166"))).status == 403
    assert await count(db, "messages") == 1


async def test_a_changed_whatsapp_number_leaves_the_old_one_inactive(client, make_client, db):
    restarted = await make_client(WHATSAPP_PHONE_NUMBER_ID="777000777")
    assert await db.fetchval("SELECT active FROM channels WHERE address = $1", support.PHONE_NUMBER_ID) is False
    assert (await post_meta(restarted, delivery((support.PHONE_NUMBER_ID, "wamid.OLD")))).status == 404
    assert (await post_meta(restarted, delivery(("777000777", "wamid.NEW")))).status == 200
    assert await stored_wamids(db) == {"wamid.NEW"}


async def test_a_deactivated_materialised_number_stays_inactive_after_restart(client, make_client, db):
    assert (await post_twilio(client, sms_pairs("hi", "SM" + "b7" * 16))).status == 200
    await db.execute("UPDATE channels SET active = false WHERE address = '+14155550100'")
    restarted = await make_client(TWILIO_AUTH_TOKEN="rotated-auth-token-91c0")
    assert await db.fetchval("SELECT active FROM channels WHERE address = '+14155550100'") is False
    resp = await post_twilio(restarted, sms_pairs("again", "SM" + "b8" * 16), token="rotated-auth-token-91c0")
    assert resp.status == 404 and (await resp.json())["field"] == "To"
    assert await count(db, "messages") == 1


async def test_two_catch_alls_claiming_one_account_stop_start_up_with_one_line(database_url, db):
    tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('b', 'B', 'h') RETURNING id")
    await db.execute("INSERT INTO channels (tenant_id, kind, address, account_sid, credentials) "
                     "VALUES ($1, 'twilio_sms', '*', $2, $3)", tenant, support.ACCOUNT_SID, {"auth_token": B_TOKEN})
    with pytest.raises(settings_mod.SettingsError) as raised:
        async with runtime_mod.open_runtime(support.make_settings(database_url)):
            pass
    message = str(raised.value)
    assert "\n" not in message and support.ACCOUNT_SID in message and "b, default" in message
    # Nothing the refused settings describe was written.
    assert await db.fetchval("SELECT count(*) FROM channels WHERE address = '*'") == 1


async def test_bootstrap_twice_is_stable(database_url, db):
    from db import pool as db_pool

    pool = await db_pool.create(database_url, 2)
    try:
        settings = support.make_settings(database_url)
        first = await tenants.bootstrap_default(pool, settings)
        assert await tenants.bootstrap_default(pool, settings) == first
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM channels WHERE active AND from_settings") == 3


# --- TRUST_PROXY -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "hops", "expected"), [
    ("b", 1, "b"),
    ("a, b", 1, "b"),
    ("spoofed, outer, inner", 2, "outer"),
    ("outer, inner", 2, "outer"),
    ("inner", 2, None),  # shorter than our chain of proxies: not trusted
    ("a, ", 1, None),
    ("", 1, None),
    (None, 1, None),
])
def test_forwarded_reads_the_entry_our_proxy_appended(value, hops, expected):
    assert public_url.forwarded(value, hops) == expected


async def test_a_spoofed_left_most_forwarded_host_is_ignored(make_client, db):
    client = await make_client(TRUST_PROXY=True, PUBLIC_BASE_URL="")
    headers = {"X-Forwarded-Proto": "http, https", "X-Forwarded-Host": "evil.example, hooks.tenant.example"}
    spoofed = await post_twilio(client, sms_pairs("hi", "SM" + "c1" * 16),
                                url="http://evil.example/webhooks/twilio", headers=headers)
    assert spoofed.status == 403
    genuine = await post_twilio(client, sms_pairs("hi", "SM" + "c1" * 16),
                                url="https://hooks.tenant.example/webhooks/twilio", headers=headers)
    assert genuine.status == 200


async def test_trust_proxy_hops_reads_the_outermost_of_our_proxies(make_client, db):
    client = await make_client(TRUST_PROXY=True, TRUST_PROXY_HOPS=2, PUBLIC_BASE_URL="")
    headers = {"X-Forwarded-Proto": "http, https, http",
               "X-Forwarded-Host": "evil.example, hooks.tenant.example, lb.internal"}
    for url, status in (("https://lb.internal/webhooks/twilio", 403), ("http://evil.example/webhooks/twilio", 403),
                        ("https://hooks.tenant.example/webhooks/twilio", 200)):
        resp = await post_twilio(client, sms_pairs("hi", "SM" + "c2" * 16), url=url, headers=headers)
        assert resp.status == status, url


async def test_public_base_url_wins_over_trust_proxy(make_client, db):
    client = await make_client(TRUST_PROXY=True)  # PUBLIC_BASE_URL is set too
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.tenant.example"}
    forwarded = await post_twilio(client, sms_pairs("hi", "SM" + "c3" * 16),
                                  url="https://hooks.tenant.example/webhooks/twilio", headers=headers)
    assert forwarded.status == 403
    assert (await post_twilio(client, sms_pairs("hi", "SM" + "c3" * 16), url=PUBLIC_BASE + "/webhooks/twilio",
                              headers=headers)).status == 200


async def test_concurrent_first_messages_to_a_new_number_of_the_catch_all_are_all_stored(client, db):
    # Each round, ten webhooks race to materialise a number nobody has written to yet.
    for r in range(40):
        to = f"+1415555{r:04d}"
        resps = await asyncio.gather(*[
            post_twilio(client, support.sms_pairs(f"m{k}", f"SM{r:016x}{k:016x}", from_=f"+1628555{k:04d}", to=to))
            for k in range(10)])
        assert [r.status for r in resps] == [200] * 10
    assert await db.fetchval("SELECT count(*) FROM messages") == 400
    assert await db.fetchval("SELECT count(*) FROM channels WHERE address LIKE '+1415555%'") == 40
