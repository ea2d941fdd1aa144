"""No input makes the operator API answer 5xx, and every refusal is {"error", "field"}: thousands of
generated paths, query strings, bodies and headers (raw bytes included) against every route."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import quote

import pytest
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import support
from tests.integration.test_agents import drain
from tests.integration.test_twilio_webhook import post_twilio

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
AUTH = {"Authorization": f"Bearer {support.API_KEY}"}
# aiohttp's HTTP parser answers a longer request line itself (a plain-text 400) before any of our code.
MAX_REQUEST_LINE = 8000

# Every operator route; {id} is filled by the fuzz.
ROUTES = [
    ("GET", "/api/users"), ("GET", "/api/conversations"), ("GET", "/api/conversations/{id}/messages"),
    ("GET", "/api/agent-logs"), ("GET", "/api/leads"), ("GET", "/api/leads/{id}"),
    ("POST", "/api/leads/{id}/tag"), ("GET", "/api/dead-letters"), ("POST", "/api/dead-letters/{id}/requeue"),
    ("POST", "/api/messages"), ("GET", "/api/messages/{id}"), ("POST", "/api/messages/{id}/cancel"),
    ("POST", "/api/messages/{id}/retry"), ("GET", "/api/queue"), ("GET", "/api/tenant"), ("PATCH", "/api/tenant"),
    ("PATCH", "/api/users/{id}"), ("GET", "/api/users/{id}/budget"),
]
PARAMS = ["cursor", "limit", "since", "until", "phone", "status", "agent", "tenant_id", "conversation_id", "id", "x",
          "class", "at"]

text = st.text(max_size=30)
control = st.text(alphabet=st.sampled_from("\x00\x01\x1f\x7f\u2028\ufffd\U0001f600 aZ9+-:"), max_size=8)
big_numbers = st.sampled_from([str(n) for n in (0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**30)]
                              + ["9" * 4400])
numbers = st.one_of(st.integers(-5, 50).map(str), big_numbers)
unicode_digits = st.sampled_from(["٣", "３", "1_0", " 5", "+5", "5 ", "0x10", "1e3", "๑"])


def _old_cursor(value: object) -> str:
    return base64.urlsafe_b64encode(f"v1:{value}".encode()).decode().rstrip("=")


forged_cursors = st.one_of(
    big_numbers.map(_old_cursor),
    st.binary(min_size=24, max_size=24).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()),
)
timestamps = st.sampled_from([
    "2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59+00:00", "2026-13-01T00:00Z", "yesterday", "2026-01-01",
])
values = st.one_of(text, control, numbers, unicode_digits, forged_cursors, timestamps,
                   st.sampled_from(["+14155550101", "+1 415 555 0101", "14155550101", "+49123456789012345",
                                    "ok", "error", "dead", "requeued", "intent", "enrichment", ""]))


class Escaped(str):
    """A query value already percent-encoded, sent as it is (any other value is encoded first, so a
    generated text that merely starts with "%" is not mistaken for one)."""


# Percent-escapes that are not UTF-8 once decoded (yarl keeps such bytes as they came).
raw_values = st.binary(max_size=12).map(lambda b: Escaped("".join(f"%{c:02X}" for c in b)))
queries = st.lists(st.tuples(st.sampled_from(PARAMS), st.one_of(values, raw_values)), max_size=5)
ids = st.one_of(numbers, unicode_digits, text.filter(lambda t: "/" not in t and t not in (".", "..")),
                st.sampled_from(["1", "2", "3"]))

tags = st.sampled_from(["Active", "Follow-Up", "Converted", "Archived", "Deleted", "Hot", "", "active"])
tag_bodies = st.fixed_dictionaries(
    {"tag": st.one_of(tags, st.integers(), st.none())},
    optional={"reason": st.one_of(text, control, st.none(), st.integers(), st.text(min_size=990, max_size=1010)),
              "actor": st.one_of(text, control, st.none(), st.just("")), "x": st.integers()})
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text)
json_values = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(text, inner, max_size=3)), max_leaves=10)
big_ints = st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**30])
phones = st.sampled_from(["+14155550101", "+14155550102", "+1 415 555 0199", "12", "", "+49123456789012345"])
maybe_text = st.one_of(text, control, st.none(), st.integers())
maybe_time = st.one_of(timestamps, st.none(), st.integers())
limits = st.one_of(st.integers(-2, 10), big_ints, st.none(), text)
budgets = st.one_of(st.none(), text, st.fixed_dictionaries(
    {}, optional={"hourly_limit": limits, "daily_limit": limits, "x": st.integers()}))
hhmm = st.sampled_from(["21:00", "08:00", "24:00", "7:00", "", "23:59", "00:00"])
# A valid send with one to three of its fields changed (or left out), so the fuzz gets past the first
# refusal to every field behind it.
VALID_MESSAGE = {"to": "+14155550101", "channel": "sms", "body": "Hello", "class": "reply"}
_LEFT_OUT = object()
message_fields = {
    "to": st.one_of(phones, text, control, st.integers(), st.none()),
    "channel": st.sampled_from(["sms", "whatsapp", "fax", "", None]),
    "class": st.sampled_from(["transactional", "marketing", "reply", "compliance", "x", None]),
    "body": st.one_of(maybe_text, st.sampled_from(["x" * 4096, "x" * 4097, "\U0001f600" * 1000])),
    "template": st.one_of(st.none(), text, st.fixed_dictionaries(
        {"name": maybe_text, "language": st.sampled_from(["en", "en_US", "english", "", None])},
        optional={"variables": st.one_of(st.dictionaries(st.one_of(text, control), st.one_of(text, control,
                                                                                             st.integers()),
                                                         max_size=3), text, st.none())})),
    "priority": st.one_of(st.integers(-2000, 2000), big_ints, text, st.none()),
    "send_after": maybe_time, "expires_at": maybe_time,
    "idempotency_key": st.one_of(text, control, st.none(), st.just("k" * 201)),
    "channel_id": st.one_of(big_ints, st.integers(-1, 8), text, st.none()),
    "x": st.integers(),
}
message_bodies = st.lists(st.sampled_from(sorted(message_fields)), min_size=1, max_size=3, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: st.one_of(message_fields[n], st.just(_LEFT_OUT)) for n in names})
).map(lambda changed: {k: v for k, v in {**VALID_MESSAGE, **changed}.items() if v is not _LEFT_OUT})
tenant_bodies = st.fixed_dictionaries({}, optional={
    "quiet_hours": st.one_of(st.none(), text, st.fixed_dictionaries({"start": hhmm, "end": hhmm})),
    "time_zone": st.one_of(st.none(), text, control, st.sampled_from(["Europe/Paris", "UTC", "../etc", "America"])),
    "budget": budgets})
user_bodies = st.fixed_dictionaries({}, optional={
    "time_zone": st.one_of(st.none(), text, st.sampled_from(["Asia/Tokyo", "localtime", "Factory"])),
    "quiet_hours_enabled": st.one_of(st.booleans(), st.none(), text), "budget": budgets})
bodies = st.one_of(
    tag_bodies.map(lambda b: json.dumps(b).encode()),
    message_bodies.map(lambda b: json.dumps(b).encode()),
    tenant_bodies.map(lambda b: json.dumps(b).encode()),
    user_bodies.map(lambda b: json.dumps(b).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
    # JSON escapes of what PostgreSQL cannot store: NUL and a lone surrogate.
    st.sampled_from([b'{"tag": "Archived", "reason": "a\\u0000b"}', b'{"tag": "Archived", "actor": "\\u0000"}',
                     b'{"tag": "Archived", "reason": "\\ud800"}', b'{"tag": "Archived", "actor": "\\udfff x"}']),
)
# The routes that take a body, each with bodies of its own shape (so its validation is reached field
# by field, not refused at the first missing one).
ROUTE_BODIES = {
    ("POST", "/api/messages"): message_bodies.map(lambda b: json.dumps(b).encode()),
    ("PATCH", "/api/tenant"): tenant_bodies.map(lambda b: json.dumps(b).encode()),
    ("PATCH", "/api/users/{id}"): user_bodies.map(lambda b: json.dumps(b).encode()),
    ("POST", "/api/leads/{id}/tag"): tag_bodies.map(lambda b: json.dumps(b).encode()),
}
auth_headers = st.one_of(
    st.just(AUTH["Authorization"]), st.just(AUTH["Authorization"]), st.just(AUTH["Authorization"]),
    # aiohttp's client refuses control characters in headers: the raw-socket fuzz below sends those.
    st.text(alphabet=st.characters(min_codepoint=0x20, exclude_characters="\x7f"), max_size=30),
    st.just("Bearer"), st.just("Bearer "), st.just(f"bearer   {support.API_KEY}  "),
    st.just("Basic " + support.API_KEY),
)


def _assert_contract(status: int, content_type: str, body: bytes, context: Any) -> None:
    assert status < 500, (context, status, body[:300])
    if status >= 400:
        assert content_type == "application/json", (context, status, body[:300])
        answer = json.loads(body)
        assert isinstance(answer.get("error"), str) and isinstance(answer.get("field"), str), (context, answer)


async def _seed(client, db) -> None:
    """At least two rows in every list, so the fuzz reaches real rows and every list issues a cursor:
    +14155550101 writes on SMS and WhatsApp (two conversations), +14155550102 on SMS, and a second
    tenant knows +14155550101 too (a second user and lead for that phone)."""
    for n, (sender, to) in enumerate([("+14155550101", "+14155550100"), ("+14155550102", "+14155550100"),
                                      ("+14155550101", "+14155550100"),
                                      ("whatsapp:+14155550101", "whatsapp:+14155238886")]):
        pairs = support.sms_pairs(f"Hi, I'd like to book for Tuesday ({n})", f"SM{n:032x}", from_=sender, to=to)
        assert (await post_twilio(client, pairs)).status == 200
    await drain(client)
    await db.execute("INSERT INTO event_dead_letters (tenant_id, agent_task_id, kind, error, attempts) "
                     "SELECT tenant_id, id, kind, 'fuzz', 1 FROM agent_tasks ORDER BY id LIMIT 2")
    tenant = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('second', 'Second', 'Help') "
                               "RETURNING id")
    user = await db.fetchval("INSERT INTO users (tenant_id, phone) VALUES ($1, '+14155550101') RETURNING id", tenant)
    await db.execute("INSERT INTO lead_memory (tenant_id, user_id) VALUES ($1, $2)", tenant, user)
    # Queue rows: a reply on the SMS conversation, a first WhatsApp message from the default sender.
    for to, channel, klass in [("+14155550101", "sms", "reply"), ("+14155550199", "whatsapp", "marketing")]:
        resp = await client.post("/api/messages", headers=AUTH,
                                 json={"to": to, "channel": channel, "body": "Hello", "class": klass})
        assert resp.status == 202, await resp.text()


async def test_every_route_answers_2xx_or_a_json_4xx_naming_the_field(client, db):
    await _seed(client, db)

    @FUZZ
    @given(route=st.sampled_from(ROUTES), id_=ids, query=queries, body=bodies, auth=auth_headers)
    def run(route, id_, query, body, auth):
        pending.append((route, id_, query, body, auth))

    pending: list = []
    run()
    for (method, template), id_, query, body, auth in pending:
        path = template.replace("{id}", quote(id_, safe=""))
        # Built already encoded, so the raw percent-escapes reach the server as they are.
        qs = "&".join(f"{quote(k)}={v if isinstance(v, Escaped) else quote(v, safe='')}" for k, v in query)
        url = yarl.URL(path + ("?" + qs if qs else ""), encoded=True)
        if len(str(url)) > MAX_REQUEST_LINE:
            continue
        resp = await client.request(method, url, data=body if method in ("POST", "PATCH") else None,
                                    headers={"Authorization": auth, "Content-Type": "application/json"})
        _assert_contract(resp.status, resp.content_type, await resp.read(), (method, str(url), body[:80], auth))


async def test_bodies_of_each_routes_shape_answer_2xx_or_a_json_4xx_naming_the_field(client, db):
    """With the token and a body of the route's own shape: past the first refusal, to every field."""
    await _seed(client, db)
    users = [str(r["id"]) for r in await db.fetch("SELECT id FROM users ORDER BY id")]
    leads = [str(r["id"]) for r in await db.fetch("SELECT id FROM lead_memory ORDER BY id")]

    @settings(FUZZ, max_examples=600)
    @given(routed=st.sampled_from(sorted(ROUTE_BODIES)).flatmap(lambda r: st.tuples(st.just(r), ROUTE_BODIES[r])),
           id_=st.sampled_from(users + leads + ["987654"]),
           query=st.lists(st.tuples(st.sampled_from(["tenant_id", "x"]), st.one_of(numbers, text)), max_size=1))
    def run(routed, id_, query):
        pending.append((*routed, id_, query))

    pending: list = []
    run()
    for (method, template), body, id_, query in pending:
        url = template.replace("{id}", id_) + "".join(f"?{quote(k)}={quote(v, safe='')}" for k, v in query)
        resp = await client.request(method, url, data=body, headers={**AUTH, "Content-Type": "application/json"})
        _assert_contract(resp.status, resp.content_type, await resp.read(), (method, url, body[:200]))


async def test_cursors_that_came_back_from_a_list_work_there_and_nowhere_else(client, db):
    await _seed(client, db)
    lists = ["/api/users?phone=%2B14155550101", "/api/conversations?phone=%2B14155550101", "/api/agent-logs",
             "/api/leads?phone=%2B14155550101", "/api/dead-letters", "/api/queue"]
    cursors = {}
    for path in lists:
        resp = await client.get(path + ("&" if "?" in path else "?") + "limit=1", headers=AUTH)
        assert resp.status == 200, (path, await resp.text())
        cursors[path] = (await resp.json())["next_cursor"]
    assert None not in cursors.values(), cursors
    for path, cursor in cursors.items():
        resp = await client.get(path, params={"cursor": cursor}, headers=AUTH)
        assert resp.status == 200, (path, await resp.text())
        for other in lists:
            if other != path:
                resp = await client.get(other, params={"cursor": cursor}, headers=AUTH)
                assert resp.status == 400, (path, other)
                assert (await resp.json())["field"] == "cursor"


@pytest.mark.parametrize("cursor", [_old_cursor(2**31), _old_cursor(2**63), _old_cursor(2**64), _old_cursor(5),
                                    base64.urlsafe_b64encode((2**64 - 1).to_bytes(8, "big") + bytes(16)).decode()])
async def test_a_forged_cursor_is_400_naming_it(client, cursor):
    for path in ["/api/agent-logs", "/api/dead-letters", "/api/users?phone=%2B14155550101"]:
        resp = await client.get(path, params={"cursor": cursor}, headers=AUTH)
        assert resp.status == 400
        assert (await resp.json())["field"] == "cursor"


async def test_a_cursor_of_one_conversation_is_refused_by_another(client, db):
    await _seed(client, db)
    conversations = [r["id"] for r in await db.fetch("SELECT id FROM conversations ORDER BY id")]
    first = await (await client.get(f"/api/conversations/{conversations[0]}/messages?limit=1", headers=AUTH)).json()
    assert first["next_cursor"]
    resp = await client.get(f"/api/conversations/{conversations[1]}/messages",
                            params={"cursor": first["next_cursor"]}, headers=AUTH)
    assert resp.status == 400 and (await resp.json())["field"] == "cursor"


@pytest.mark.parametrize(("params", "field"), [
    ({"agent": "intent\x00"}, "agent"),
    ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
    ({"until": "9999-12-31T23:59:59-14:00"}, "until"),
    ({"tenant_id": str(2**63)}, "tenant_id"),
    ({"conversation_id": "٣"}, "conversation_id"),
    ({"limit": "1" * 5000}, "limit"),
])
async def test_agent_log_parameters_postgres_cannot_take_are_400_naming_them(client, params, field):
    resp = await client.get("/api/agent-logs", params=params, headers=AUTH)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["field"] == field


@pytest.mark.parametrize(("body", "field"), [
    ({"tag": "Archived", "reason": "spam\x00"}, "reason"),
    ({"tag": "Archived", "actor": "ops\x00"}, "actor"),
    (b'{"tag": "Archived", "reason": "\\ud800"}', "body"),
])
async def test_tag_text_postgres_cannot_store_is_400_naming_it(client, db, body, field):
    await _seed(client, db)
    lead_id = await db.fetchval("SELECT min(id) FROM lead_memory")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await client.post(f"/api/leads/{lead_id}/tag", data=data, headers=AUTH)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["field"] == field
    assert await db.fetchval("SELECT current_tag FROM lead_memory WHERE id = $1", lead_id) == "Active"


# --- raw bytes on the wire: headers aiohttp's client would refuse to send -------------------------

async def _raw(client, method: str, path: str, headers: list[tuple[bytes, bytes]],
               body: bytes = b"") -> tuple[int, str, bytes]:
    """One HTTP/1.1 request written byte for byte; (status, content type, body) of the answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: localhost", b"Connection: close",
                b"Content-Length: " + str(len(body)).encode()]
        head += [name + b": " + value for name, value in headers]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    header_block, _, payload = rest.partition(b"\r\n\r\n")
    content_type = ""
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            content_type = value.strip().split(b";")[0].decode()
    return int(status_line.split()[1]), content_type, payload


# Bytes HTTP allows in a header value (visible ASCII, space, tab and obs-text 0x80-0xFF): most of the
# high ones are not UTF-8.
header_bytes = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F or c == 0x09))


async def test_header_bytes_that_are_not_utf8_never_answer_5xx(client, db):
    await _seed(client, db)

    @FUZZ
    @given(route=st.sampled_from(ROUTES), auth=st.one_of(
        header_bytes, header_bytes.map(lambda b: b"Bearer " + b),
        header_bytes.map(lambda b: b"Bearer " + support.API_KEY.encode() + b)),
        # A dictionary: aiohttp's parser itself refuses a repeated Content-Type (a plain-text 400).
        other=st.dictionaries(st.sampled_from([b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host",
                                               b"Content-Type", b"Accept", b"X-Other"]), header_bytes, max_size=3))
    def run(route, auth, other):
        pending.append((route, auth, list(other.items())))

    pending: list = []
    run()
    for (method, template), auth, other in pending:
        path = template.replace("{id}", "1") + ("?phone=%2B14155550101" if "{id}" not in template else "")
        status, content_type, payload = await _raw(client, method, path, [(b"Authorization", auth), *other],
                                                   b'{"tag": "Active"}' if method == "POST" else b"")
        _assert_contract(status, content_type, payload, (method, path, auth, other))


@pytest.mark.parametrize("auth", [b"Bearer \xff\xfe", b"\xc3\x28 " + support.API_KEY.encode(),
                                  b"Bearer " + support.API_KEY.encode() + b"\xe9"])
async def test_an_authorization_header_that_is_not_utf8_is_401_naming_it(client, auth):
    status, content_type, payload = await _raw(client, "GET", "/api/dead-letters", [(b"Authorization", auth)])
    assert (status, content_type) == (401, "application/json")
    assert json.loads(payload)["field"] == "Authorization"
