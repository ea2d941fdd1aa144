"""Masking phone numbers and email addresses out of the agent decision log."""

from __future__ import annotations

import re
from enum import StrEnum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents import redact


@pytest.mark.parametrize(("text", "masked"), [
    # international: masked like services.phone.mask
    ("+14155550101", "+14*******01"),
    ("Call me at +1 (415) 555-0101 please", "Call me at +14*******01 please"),
    ("+33 6 12 34 56 78", "+33*******78"),
    ("+34 612 34 56 78", "+34*******78"),
    ("+44 7700 900123", "+44********23"),
    ("whatsapp:+14155550101", "whatsapp:+14*******01"),
    ("https://api.example.com/send?To=%2B14155550101&x=1", "https://api.example.com/send?To=%2B14*******01&x=1"),
    # national, with separators
    ("415.555.0101", "********01"),
    ("(415) 555-0101", "********01"),
    ("call 415-555-0101.", "call ********01."),
    ("555-0101", "*****01"),
    ("06 12 34 56 78", "********78"),
    ("06.12.34.56.78", "********78"),
    ("Tel: 01 23 45 67 89", "Tel: ********89"),
    ("612 345 678", "*******78"),
    ("07700 900123", "*********23"),
    ("415-555-0101x12", "********01x12"),
    ("card 4111 1111 1111 1111", "card **************11"),
    # bare digit runs that look national or international
    ("4155550101", "********01"),
    ("14155550101", "*********01"),
    ("0612345678", "********78"),
    ("612345678", "*******78"),
    ("wa_id 33612345678", "wa_id *********78"),
    ("https://wa.me/14155550101", "https://wa.me/*********01"),
    # emails keep their first character and domain
    ("jane.doe@example.com", "j***@example.com"),
    ("Write to Jane.Doe+spa@mail.example.co.uk.", "Write to J***@mail.example.co.uk."),
    ("4155550101@vtext.com", "4***@vtext.com"),
    ("josé@ejemplo.mx y 06 12 34 56 78", "j***@ejemplo.mx y ********78"),
    # several in one string
    ("from +14155550101 to +33612345678", "from +14*******01 to +33*******78"),
])
def test_phone_numbers_and_emails_in_strings_are_masked(text, masked):
    assert redact.mask_pii(text) == masked


@pytest.mark.parametrize("text", [
    "$120", "120 €", "10:30", "at 10:30 on 2026-11-22", "2026-11-22T10:30:00+01:00", "2026-11-22 10:30:00",
    "22.11.2026", "22/11/2026", "22-11-2026", "zip 94107", "94107-1234", "75001 Paris",
    "SM0123456789abcdef0123456789abcdef", "MM1234567890", "123e4567-e89b-12d3-a456-426614174000",
    "listed at $1,250,000", "1 250 000 €", "125 000 000 €", "$1.250.000", "12.500.000", "3.14159265",
    "192.168.100.200", "from 2019-2026", "open 0900-1730", "order 12345678", "#1234567", "ts 1732272000",
    "phone_number_id 106540352242922",
    "options 1 2 3 4 5 6 7", "room 12, floor 3", "a@b", "@john", "user@localhost", "meet @ 5pm",
    "+1 500", "no digits here", "",
])
def test_ordinary_numbers_ids_and_non_addresses_are_left_alone(text):
    assert redact.mask_pii(text) == text


def test_keys_are_kept_and_values_masked_at_every_depth():
    entry = {
        "+14155550101": "+14155550101",
        "inputs": {"body": "text me at 415.555.0101", "history": [["in", "ana@example.com"]]},
    }
    assert redact.mask_pii(entry) == {
        "+14155550101": "+14*******01",
        "inputs": {"body": "text me at ********01", "history": [["in", "a***@example.com"]]},
    }


def test_non_string_values_are_left_alone():
    entry = {"n": 4155550101, "f": 4155550101.0, "yes": True, "none": None, "ints": [14155550101]}
    assert redact.mask_pii(entry) == entry


def test_the_shape_is_kept_tuples_included_and_the_input_is_not_mutated():
    entry = {"pair": ("+14155550101", 3), "empty": [], "nested": [(), {}]}
    masked = redact.mask_pii(entry)
    assert masked == {"pair": ("+14*******01", 3), "empty": [], "nested": [(), {}]}
    assert type(masked["pair"]) is tuple
    assert entry["pair"][0] == "+14155550101"
    assert redact.mask_pii(("a", ["+14155550101"])) == ("a", ["+14*******01"])


def test_unchanged_strings_are_returned_as_the_same_object():
    class Status(StrEnum):
        SENT = "sent"

    assert redact.mask_pii({"status": Status.SENT})["status"] is Status.SENT


def test_deep_nesting_and_self_reference_do_not_raise():
    deep: list = []
    current = deep
    for _ in range(10_000):
        current.append([])
        current = current[0]
    current.append("+14155550101")
    redact.mask_pii(deep)

    looped: dict = {"phone": "+14155550101"}
    looped["self"] = looped
    assert redact.mask_pii(looped) == {"phone": "+14*******01", "self": "[cycle]"}


def test_shared_references_are_masked_not_taken_for_cycles():
    shared = ["+14155550101"]
    assert redact.mask_pii({"a": shared, "b": shared}) == {"a": ["+14*******01"], "b": ["+14*******01"]}


# --- properties -----------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


def _same_shape(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_shape(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_shape, a, b))
    if isinstance(a, str):
        return isinstance(b, str)
    return a == b and type(a) is type(b)


@given(_json)
def test_any_json_value_keeps_its_shape_and_masking_is_idempotent(value):
    masked = redact.mask_pii(value)
    assert _same_shape(value, masked)
    assert redact.mask_pii(masked) == masked


@given(st.text())
def test_text_without_digits_or_at_signs_is_unchanged(text):
    if not re.search(r"[\d@]", text):
        assert redact.mask_pii(text) == text


_NANP = st.tuples(st.integers(200, 999), st.integers(200, 999), st.integers(0, 9999))
_FORMATS = ["+1 ({}) {}-{}", "+1{}{}{}", "{}.{}.{}", "({}) {}-{}", "{}-{}-{}", "{} {} {}", "{}{}{}"]
_WORDS = st.sampled_from(["", "call", "me at", "mon numéro:", "mi número es", "tel", "(cell)", "ok."])


@given(_NANP, st.sampled_from(_FORMATS), _WORDS, _WORDS)
def test_a_nanp_number_in_any_common_format_loses_its_middle_digits(parts, layout, before, after):
    area, exchange, line = parts
    number = layout.format(area, exchange, f"{line:04d}")
    masked = redact.mask_pii(f"{before} {number} {after}")
    assert number not in masked
    assert f"{area}{exchange}" not in re.sub(r"\D", "", masked)
