from __future__ import annotations

import pytest

from services import keywords, phone


@pytest.mark.parametrize(("text", "expected"), [
    ("STOP", "opt_out"), ("stop", "opt_out"), ("  Stop \n", "opt_out"), ("STOP!", "opt_out"), ("stop...", "opt_out"),
    ("STOPALL", "opt_out"), ("Unsubscribe", "opt_out"), ("cancel", "opt_out"), ("END", "opt_out"),
    ("quit", "opt_out"), ("revoke", "opt_out"), ("OPTOUT", "opt_out"), ("opt out", "opt_out"),
    ("Opt  Out", "opt_out"), ("START", "opt_in"), ("unstop", "opt_in"), ("HELP", "help"), ("info?", "help"),
    ("yes", "yes"),
])
def test_single_word_keywords_match(text, expected):
    match = keywords.match(text)
    assert match is not None and match.keyword.value == expected


@pytest.mark.parametrize("text", ["STOP PLEASE", "please stop", "I can stop by tomorrow", "cancel my appointment",
                                  "stopped", "!stop", "", None, "s t o p", "stop" * 20])
def test_anything_else_is_not_a_keyword(text):
    assert keywords.match(text) is None


@pytest.mark.parametrize(("raw", "e164"), [
    ("+14155550101", "+14155550101"), ("whatsapp:+14155550101", "+14155550101"), ("16505551234", "+16505551234"),
    ("+44 20 7946 0958", "+442079460958"), ("+1A693421974", None), ("", None), (None, None), ("hello", None),
])
def test_numbers_are_normalised_to_e164(raw, e164):
    assert phone.to_e164(raw) == e164


def test_mask_keeps_country_code_and_last_digits():
    assert phone.mask("+14155550101") == "+14*******01"


@pytest.mark.parametrize("raw", ["+14155550123", "whatsapp:+447700900123", "16505551234", "+390612345678",
                                 "+61 2 9374 4000", "+442079460000 ext. 12"])
def test_a_time_zone_is_the_same_whether_or_not_the_number_was_just_normalised(raw):
    # time_zone_for reuses the number to_e164 just parsed; it must find what a fresh parse finds.
    phone._to_e164.cache_clear()
    phone.time_zone_for.cache_clear()
    e164 = phone.to_e164(raw)
    assert e164 is not None
    reused = phone.time_zone_for(e164)
    phone.time_zone_for.cache_clear()
    phone._PARSED.clear()
    assert reused == phone.time_zone_for(e164)
