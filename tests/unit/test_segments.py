"""SMS segment counting (3GPP TS 23.038), against the known answers of Twilio's segment calculator
(TwilioDevEd/message-segment-calculator tests, ../shared/reference/provider-payloads.md §4.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.channels import segments
from services.channels.segments import Encoding

DIGITS = "1234567890"
EMOJI = "\U0001f61c"  # 😜, two UTF-16 code units
FLAG_IT = "\U0001f1ee\U0001f1f9"  # 🇮🇹, one grapheme of two regional indicators
RAINBOW_FLAG = "\U0001f3f3\ufe0f\u200d\U0001f308"  # 🏳️‍🌈, 4 scalars, 6 code units

CASES = [
    # (description, body, encoding, segments, units)
    ("empty body is one segment", "", Encoding.GSM7, 1, 0),
    ("GSM-7 160 characters fit one segment", (DIGITS * 16), Encoding.GSM7, 1, 160),
    ("GSM-7 161 characters take two", (DIGITS * 16) + "1", Encoding.GSM7, 2, 161),
    ("GSM-7 306 characters take two (153 each)", (DIGITS * 31)[:306], Encoding.GSM7, 2, 306),
    ("GSM-7 307 characters take three", (DIGITS * 31)[:307], Encoding.GSM7, 3, 307),
    ("UCS-2 70 code units fit one segment", EMOJI + (DIGITS * 7)[1:69], Encoding.UCS2, 1, 70),
    ("UCS-2 71 code units take two", EMOJI + (DIGITS * 8)[1:70], Encoding.UCS2, 2, 71),
    ("UCS-2 135 code units take three", EMOJI + (DIGITS * 14)[1:134], Encoding.UCS2, 3, 135),
    ("flag at the one-segment boundary", FLAG_IT + (DIGITS * 7)[1:67], Encoding.UCS2, 1, 70),
    ("flag one past the boundary", FLAG_IT + (DIGITS * 7)[1:68], Encoding.UCS2, 2, 71),
    ("ZWJ flag at the one-segment boundary", RAINBOW_FLAG + (DIGITS * 7)[1:65], Encoding.UCS2, 1, 70),
    ("ZWJ flag one past the boundary", RAINBOW_FLAG + (DIGITS * 7)[1:66], Encoding.UCS2, 2, 71),
    ("euro + 159 digits is 161 septets", "€" + (DIGITS * 16)[:159], Encoding.GSM7, 2, 161),
    ("euro + 158 digits is 160 septets", "€" + (DIGITS * 16)[:158], Encoding.GSM7, 1, 160),
    ("80 pipes are 160 septets", "|" * 80, Encoding.GSM7, 1, 160),
    ("81 pipes are 162 septets", "|" * 81, Encoding.GSM7, 2, 162),
    ("70 lower-case c-cedilla are UCS-2 in one", "ç" * 70, Encoding.UCS2, 1, 70),
    ("71 lower-case c-cedilla take two", "ç" * 71, Encoding.UCS2, 2, 71),
    ("70 capital C-cedilla are GSM-7", "Ç" * 70, Encoding.GSM7, 1, 70),
    ("extension characters cost one unit in UCS-2", "\U0001f600" + "]" * 68, Encoding.UCS2, 1, 70),
    ("extension characters one past in UCS-2", "\U0001f600" + "]" * 69, Encoding.UCS2, 2, 71),
    ("a grapheme of 4 scalars + 66 letters fits one", "e\u0301\u0301\u0301" + "a" * 66, Encoding.UCS2, 1, 70),
    ("a grapheme of 4 scalars + 67 letters takes two", "e\u0301\u0301\u0301" + "a" * 67, Encoding.UCS2, 2, 71),
    ("CR LF counts two septets", "\r\n" * 80, Encoding.GSM7, 1, 160),
    ("a backtick is not GSM-7", "`", Encoding.UCS2, 1, 1),
    ("curly quotes are not GSM-7", "\u201cok\u201d", Encoding.UCS2, 1, 4),
    # An ESC pair never straddles two segments: 152 digits then "€" leaves 1 septet in the first part,
    # so the euro moves whole to the second; 152 + "€" + 152 more would fit two parts only if the pair
    # were split: it is not, so three.
    ("a moved ESC pair can cost a segment", (DIGITS * 16)[:152] + "€" + (DIGITS * 16)[:152],
     Encoding.GSM7, 3, 306),
    # The same in UCS-2: 66 units then an emoji (2) leaves 1 unit, so the emoji opens part two.
    ("a surrogate pair never straddles two parts", "ç" * 66 + EMOJI + "ç" * 66, Encoding.UCS2, 3, 134),
    ("no pair at the boundary: two parts", "ç" * 67 + EMOJI + "ç" * 65, Encoding.UCS2, 2, 134),
]


@pytest.mark.parametrize(("description", "body", "encoding", "count", "units"), CASES, ids=[c[0] for c in CASES])
def test_segment_count_matches_the_calculator(description: str, body: str, encoding: Encoding, count: int,
                                              units: int) -> None:
    result = segments.count(body)
    assert (result.encoding, result.segments, result.units) == (encoding, count, units)


def test_every_extension_character_costs_two_septets() -> None:
    for char in "\f^{}\\[~]|€":
        body = char + (DIGITS * 16)[:158]
        assert segments.count(body) == segments.Count(Encoding.GSM7, 1, 160), repr(char)
        assert segments.count(body + "1").segments == 2, repr(char)


def test_every_basic_character_is_gsm7_and_costs_one_septet() -> None:
    for char in segments.GSM7_BASIC:
        assert segments.count(char * 160) == segments.Count(Encoding.GSM7, 1, 160), repr(char)


@given(st.text(max_size=600))
def test_segments_never_fewer_than_plain_division(body: str) -> None:
    # Moving clusters whole can only add segments, never remove them, and every part holds something.
    result = segments.count(body)
    single, per_part = segments.SINGLE[result.encoding], segments.PER_PART[result.encoding]
    if result.units <= single:
        assert result.segments == 1
    else:
        assert result.segments >= -(-result.units // per_part)
        assert result.segments <= result.units
