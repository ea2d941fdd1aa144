"""Addresses Twilio may post, and what we store for each: E.164 senders, and business addresses that
are phone numbers, short codes, alphanumeric sender IDs or RCS senders."""

from __future__ import annotations

import re

import multidict
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services import phone
from services.channels import base, twilio
from tests import support

# The channels.address CHECK of migration 0011 for the twilio_sms kind, transcribed: what
# parse_inbound normalises a `To` to must pass it (tests/integration/test_addresses.py runs the real one).
TWILIO_SMS_ADDRESS = [re.compile(r"\+[1-9][0-9]{6,14}"), re.compile(r"[0-9]{5,6}"),
                      re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}"), re.compile(r"rcs:[A-Za-z0-9_.+-]{1,100}")]


def _form(**values: str) -> multidict.MultiDict[str]:
    form = multidict.MultiDict(support.sms_pairs("hi", "SM" + "0" * 32))
    for name, value in values.items():
        form[name] = value
    return form


@pytest.mark.parametrize(("to", "address"), [
    ("+14155550100", "+14155550100"),
    ("12345", "12345"),  # short codes: 5 or 6 digits, as they are
    ("894546", "894546"),
    ("ParleyCo", "ParleyCo"),  # alphanumeric sender IDs: as received, surrounding whitespace dropped
    (" Parley Co ", "Parley Co"),
    ("SHOP24", "SHOP24"),
    ("rcs:example_agent", "rcs:example_agent"),  # RCS senders keep their prefix
    ("rcs:brand_mq8sq68w_agent", "rcs:brand_mq8sq68w_agent"),
])
def test_business_addresses_are_stored_under_their_normalisation(to, address):
    msg = twilio.parse_inbound(_form(To=to))
    assert (msg.channel_address, msg.channel_kind) == (address, base.ChannelKind.TWILIO_SMS)


def test_an_rcs_message_is_stored_as_its_senders_e164_phone_on_the_sms_channel():
    msg = twilio.parse_inbound(_form(From="rcs:+14155550101", To="rcs:example_agent"))
    assert (msg.sender.phone, msg.channel_address, msg.channel_kind) == (
        "+14155550101", "rcs:example_agent", base.ChannelKind.TWILIO_SMS)


@pytest.mark.parametrize(("name", "value"), [
    ("To", "1234"),  # too short for a short code, too short for E.164
    ("To", "1234567"),  # 7 digits without +: read as E.164, and +1234567 is not possible
    ("To", "TwelveChars1"),  # an alphanumeric sender ID has at most 11 characters
    ("To", "Parley-Co"),
    ("To", "rcs:"),
    ("To", "rcs:agent id"),
    ("To", "rcs:" + "a" * 101),
    ("From", "ParleyCo"),  # a person writes from a phone
    ("From", "12345"),
    ("From", "+4912345678901234"),  # possible to phonenumbers, 16 digits: not E.164
    ("From", "rcs:example_agent"),
    ("From", "sms:+14155550101"),
])
def test_addresses_we_cannot_store_are_refused_naming_the_field(name, value):
    with pytest.raises(base.PayloadError) as raised:
        twilio.parse_inbound(_form(**{name: value}))
    assert raised.value.field == name


@pytest.mark.parametrize(("from_", "address"), [
    ("12345", "12345"), ("ParleyCo", "ParleyCo"), ("rcs:example_agent", "rcs:example_agent"),
    ("+14155550100", "+14155550100"), ("Parley-Co", None),
])
def test_status_callbacks_name_our_address_in_the_same_normalisation(from_, address):
    form = multidict.MultiDict([("MessageSid", "SM" + "1" * 32), ("MessageStatus", "delivered"),
                                ("From", from_), ("To", "+14155550101")])
    update = twilio.parse_status(form)
    assert update is not None and update.channel_address == address and update.recipient == "+14155550101"


phone_like = st.one_of(
    st.text(max_size=30),
    st.builds(lambda prefix, digits, sep: prefix + sep.join(digits), st.sampled_from(["+", "", "whatsapp:+", "rcs:+"]),
              st.lists(st.text(alphabet="0123456789", min_size=1, max_size=5), max_size=6),
              st.sampled_from(["", " ", "-", "."])),
    st.text(alphabet="+0123456789", max_size=22),
)


@given(phone_like)
def test_what_to_e164_returns_always_satisfies_the_e164_check(raw):
    e164 = phone.to_e164(raw)
    assert e164 is None or phone.E164.fullmatch(e164)


@given(st.one_of(phone_like, st.text(alphabet="abcXYZ019 _:+-.", max_size=16)), phone_like)
def test_parse_inbound_stores_a_checkable_address_or_refuses_the_field(to, from_):
    try:
        msg = twilio.parse_inbound(_form(To=to, From=from_))
    except base.PayloadError as exc:
        assert exc.field in ("To", "From")
        return
    assert msg.sender.phone is not None and phone.E164.fullmatch(msg.sender.phone)
    assert any(p.fullmatch(msg.channel_address) for p in TWILIO_SMS_ADDRESS)


def test_phone_e164_is_the_users_phone_check():
    sql = (support.TESTDATA.parent.parent / "db" / "migrations" / "0001_foundation.sql").read_text()
    assert "phone               text CHECK (phone ~ '^" + phone.E164.pattern + "$')" in sql
