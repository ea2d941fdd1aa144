"""No input makes a webhook answer 5xx: thousands of generated bodies, signed and unsigned."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import support

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

TWILIO_KEYS = ["MessageSid", "SmsSid", "AccountSid", "MessagingServiceSid", "From", "To", "Body", "NumMedia",
               "MediaUrl0", "MediaContentType0", "NumSegments", "ProfileName", "WaId", "Latitude", "Longitude",
               "ButtonPayload", "ButtonText", "MessageStatus", "ErrorCode", "SmsStatus"]
text = st.text(max_size=40)
twilio_values = st.one_of(text, st.sampled_from(["+14155550101", "whatsapp:+14155550101", "+14155550100",
                                                 support.ACCOUNT_SID, "SM" + "0" * 32, "1", "-1", "x", ""]))
twilio_forms = st.lists(st.tuples(st.one_of(st.sampled_from(TWILIO_KEYS), text), twilio_values), max_size=14)


def _override(pairs: list[tuple[str, str]], changes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    form = dict(pairs)
    form.update(changes)
    return list(form.items())


# Random forms rarely carry every required field; these start from a valid message (from a known and
# an unknown sender, each with its own MessageSid) and change or add a few fields, so bodies reach the
# parser's depths and the database.
OPTIONAL_KEYS = [k for k in TWILIO_KEYS if k not in ("MessageSid", "SmsSid", "AccountSid", "From", "To")]
valid_twilio_forms = st.builds(
    lambda body, n, sender, changes: _override(support.sms_pairs(body, f"SM{n:032x}", from_=sender), changes),
    # Control characters (NUL above all: PostgreSQL text cannot hold it) are rare in text(): ask for them.
    st.one_of(text, st.text(alphabet=st.sampled_from("\x00\x01\x1f\x7f\u2028\ufffd\U0001f600 aZ"), max_size=8)),
    st.integers(0, 2**64), st.sampled_from(["+14155550101", "+14155550199"]),
    st.lists(st.tuples(st.one_of(st.sampled_from(OPTIONAL_KEYS), text), st.one_of(twilio_values, text)),
             max_size=3),
)

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text)
JSON_KEYS = st.one_of(text, st.sampled_from(
    ["object", "entry", "changes", "value", "field", "messages", "statuses", "contacts", "metadata", "id",
     "from", "type", "text", "body", "timestamp", "phone_number_id", "wa_id", "status", "errors"]))
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(JSON_KEYS, inner, max_size=5)),
    max_leaves=25,
)


def _mutated_meta(base: dict, path: list, replacement: object) -> dict:
    node = json.loads(json.dumps(base))
    target = node
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = replacement
    return node


async def test_twilio_webhooks_never_answer_5xx(client):
    @FUZZ
    @given(form=st.one_of(twilio_forms, valid_twilio_forms), signed=st.booleans(),
           path=st.sampled_from(["/webhooks/twilio", "/webhooks/twilio/status"]))
    def run(form, signed, path):
        pending.append((form, signed, path))

    pending: list = []
    run()
    for form, signed, path in pending:
        body, headers = support.twilio_request(form, path=path)
        if not signed:
            headers["X-Twilio-Signature"] = "AAAA"
        resp = await client.post(path, data=body, headers=headers)
        assert resp.status < 500, (form, resp.status, await resp.text())


async def test_whatsapp_webhook_never_answers_5xx(client):
    base = support.whatsapp_text("hi", "wamid.FUZZ")
    paths = [["object"], ["entry"], ["entry", 0, "changes"], ["entry", 0, "changes", 0, "value"],
             ["entry", 0, "changes", 0, "value", "messages"], ["entry", 0, "changes", 0, "value", "metadata"],
             ["entry", 0, "changes", 0, "value", "contacts"],
             ["entry", 0, "changes", 0, "value", "messages", 0, "from"],
             ["entry", 0, "changes", 0, "value", "messages", 0, "type"],
             ["entry", 0, "changes", 0, "value", "messages", 0, "timestamp"],
             ["entry", 0, "changes", 0, "value", "messages", 0, "id"],
             ["entry", 0, "changes", 0, "value", "messages", 0, "text"]]

    @FUZZ
    @given(body=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.tuples(st.sampled_from(paths), json_values).map(
            lambda pv: json.dumps(_mutated_meta(base, pv[0], pv[1])).encode()),
    ), signed=st.booleans())
    def run(body, signed):
        pending.append((body, signed))

    pending: list = []
    run()
    for body, signed in pending:
        _, headers = support.meta_request(body)
        if not signed:
            headers["X-Hub-Signature-256"] = "sha256=00"
        resp = await client.post("/webhooks/whatsapp", data=body, headers=headers)
        assert resp.status < 500, (body[:200], resp.status, await resp.text())


async def test_handshake_never_answers_5xx(client):
    @FUZZ
    @given(params=st.dictionaries(st.sampled_from(["hub.mode", "hub.challenge", "hub.verify_token", "x"]), text))
    def run(params):
        pending.append(params)

    pending: list = []
    run()
    for params in pending:
        resp = await client.get("/webhooks/whatsapp?" + urlencode(params))
        assert resp.status < 500
