"""Addresses beyond E.164 numbers, end to end: stored under their normalisation, or refused with a 400
naming the field, never a 500 (which made Twilio drop the message)."""

from __future__ import annotations

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services import phone
from tests import support
from tests.integration.test_twilio_webhook import post_twilio

ADDRESSES = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize(("to", "from_", "address"), [
    ("12345", "+14155550101", "12345"),
    ("ParleyCo", "+14155550101", "ParleyCo"),
    ("rcs:example_agent", "rcs:+14155550101", "rcs:example_agent"),
])
async def test_a_message_to_a_short_code_sender_id_or_rcs_sender_is_stored(client, db, to, from_, address):
    resp = await post_twilio(client, support.sms_pairs("hi", "SM" + "a" * 32, from_=from_, to=to))
    assert resp.status == 200, await resp.text()
    row = await db.fetchrow("SELECT ch.kind, ch.address, u.phone FROM messages m "
                            "JOIN conversations c ON c.id = m.conversation_id JOIN channels ch ON ch.id = c.channel_id "
                            "JOIN users u ON u.id = c.user_id")
    assert dict(row) == {"kind": "twilio_sms", "address": address, "phone": "+14155550101"}


@pytest.mark.parametrize(("from_", "to", "field"), [
    ("+4912345678901234", "+14155550100", "From"),  # phonenumbers calls it possible; E.164 stops at 15 digits
    ("ParleyCo", "+14155550100", "From"),
    ("+14155550101", "Parley-Co", "To"),
    ("+14155550101", "rcs:not an id", "To"),
])
async def test_an_address_we_cannot_store_is_400_naming_it_and_nothing_is_stored(client, db, from_, to, field):
    resp = await post_twilio(client, support.sms_pairs("hi", "SM" + "b" * 32, from_=from_, to=to))
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["field"] == field
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


senders = st.one_of(
    st.builds(lambda p, d: p + d, st.sampled_from(["+", "", "rcs:+", "whatsapp:+"]),
              st.text(alphabet="0123456789", min_size=1, max_size=18)),
    st.text(alphabet="0123456789+ -()", max_size=20), st.text(max_size=12))
receivers = st.one_of(senders, st.text(alphabet="AZaz09 _.+-:", max_size=14),
                      st.builds(lambda d: "rcs:" + d, st.text(alphabet="az09_.+- ", max_size=12)),
                      st.text(alphabet="0123456789", min_size=4, max_size=7))


async def test_any_from_and_to_is_stored_or_a_400_naming_it(client, db):
    @ADDRESSES
    @given(from_=senders, to=receivers)
    def run(from_, to):
        pending.append((from_, to))

    pending: list = []
    run()
    for n, (from_, to) in enumerate(pending):
        resp = await post_twilio(client, support.sms_pairs("hi", f"SM{n:032x}", from_=from_, to=to))
        assert resp.status in (200, 400), (from_, to, resp.status, await resp.text())
        if resp.status == 400:
            assert (await resp.json())["field"] in ("From", "To"), (from_, to)
    # Whatever was stored passed the real CHECKs; and what to_e164 made of each sender is storable.
    for phone_ in {phone.to_e164(f) for f, _ in pending} - {None}:
        await db.execute("INSERT INTO users (tenant_id, phone) SELECT min(id), $1 FROM tenants "
                         "ON CONFLICT DO NOTHING", phone_)


@pytest.mark.parametrize(("kind", "address"), [
    ("twilio_sms", "Parley-Co"), ("twilio_sms", "1234"), ("twilio_sms", "TwelveChars1"), ("twilio_sms", "1234567"),
    ("twilio_sms", "rcs:"), ("twilio_whatsapp", "12345"), ("twilio_whatsapp", "rcs:example_agent"),
    ("twilio_whatsapp", "ParleyCo"),
])
async def test_the_channels_check_refuses_what_twilio_py_never_produces(client, db, kind, address):
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO channels (tenant_id, kind, address, account_sid) "
                         "SELECT min(id), $1, $2, $3 FROM tenants", kind, address, support.ACCOUNT_SID)
