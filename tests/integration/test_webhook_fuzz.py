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
    @given(form=twilio_forms, signed=st.booleans(), path=st.sampled_from(["/webhooks/twilio",
                                                                           "/webhooks/twilio/status"]))
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
