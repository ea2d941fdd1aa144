"""How many SMS segments a body costs, and in which encoding (3GPP TS 23.038).

One SMS carries 140 octets. A body that fits in one is sent as it is: 160 GSM-7 septets or 70 UCS-2
code units. A longer one is concatenated, and each part gives 6 octets to its User Data Header, which
leaves 153 septets or 67 code units per segment. A single character outside the GSM-7 default
alphabet and its extension table makes the whole body UCS-2; an extension character (`€ [ ] { } ~ ^
\\ |` and form feed) costs two septets in GSM-7 (ESC + code) and one code unit in UCS-2; a character
outside the Basic Multilingual Plane (most emoji) costs two UTF-16 code units.

Parts are split the way Twilio's segment calculator does (TwilioDevEd/message-segment-calculator,
known answers in ../shared/reference/provider-payloads.md §4.3): an ESC pair, a surrogate pair or a
grapheme cluster (a flag, a ZWJ family, a letter with its combining marks) never straddles two
segments, so it moves whole to the next one, which can cost a segment more than plain division.
Python has no grapheme segmentation of its own; `_clusters` covers the sequences that occur in
messages (combining marks, variation selectors, skin tones, ZWJ joins, flag pairs, tag sequences).

The segment count is a message's cost against its sender's throughput and what Twilio bills.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Encoding(StrEnum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


# The default alphabet (GSM 03.38, Unicode's GSM0338.TXT), without 0x1B ESC, which only introduces
# the extension table. 0x09 is the capital Ç: a lower-case ç is not GSM-7.
GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Each of these is ESC + one septet.
GSM7_EXTENSION: Final = frozenset("\f^{}\\[~]|€")

SINGLE: Final = {Encoding.GSM7: 160, Encoding.UCS2: 70}
PER_PART: Final = {Encoding.GSM7: 153, Encoding.UCS2: 67}

_ZWJ: Final = "\u200d"
_REGIONAL_INDICATORS: Final = range(0x1F1E6, 0x1F200)
_SKIN_TONES: Final = range(0x1F3FB, 0x1F400)
_TAGS: Final = range(0xE0020, 0xE0080)


@dataclass(frozen=True, slots=True)
class Count:
    encoding: Encoding
    segments: int
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2) of the body, headers not included


def encoding_of(body: str) -> Encoding:
    """GSM-7 when every character is in the default alphabet or its extension table, else UCS-2."""
    for char in body:
        if char not in GSM7_BASIC and char not in GSM7_EXTENSION:
            return Encoding.UCS2
    return Encoding.GSM7


def count(body: str) -> Count:
    """The encoding, segment count and size of `body` as an SMS. An empty body is one (empty) segment,
    as Twilio counts it."""
    encoding = encoding_of(body)
    costs = [_cost(cluster, encoding) for cluster in _clusters(body)]
    units = sum(costs)
    if units <= SINGLE[encoding]:
        return Count(encoding, 1, units)
    capacity = PER_PART[encoding]
    segments, used = 1, 0
    for cost in costs:
        if cost > capacity:
            # A cluster longer than a whole segment (dozens of combining marks) cannot move whole:
            # it is split between its code points, which still keeps every ESC and surrogate pair.
            for part in _split(cost, capacity - used, capacity):
                if used + part > capacity:
                    segments, used = segments + 1, 0
                used += part
            continue
        if used + cost > capacity:
            segments, used = segments + 1, 0
        used += cost
    return Count(encoding, segments, units)


def _cost(cluster: str, encoding: Encoding) -> int:
    if encoding is Encoding.GSM7:
        return sum(2 if char in GSM7_EXTENSION else 1 for char in cluster)
    return sum(2 if ord(char) > 0xFFFF else 1 for char in cluster)


def _split(cost: int, room: int, capacity: int) -> Iterator[int]:
    """An oversized cluster's cost in pieces: first what fits the current segment, then whole ones.
    Pieces are even-sized when they must not split a 2-unit pair; a remainder of 1 unit is allowed."""
    first = max(room - room % 2, 0)
    if first:
        yield first
        cost -= first
    whole = capacity - capacity % 2
    while cost > whole:
        yield whole
        cost -= whole
    if cost:
        yield cost


def _extends(previous: str, char: str) -> bool:
    """Whether `char` belongs to the cluster that ends with `previous`."""
    code = ord(char)
    if previous == _ZWJ:
        return True  # the ZWJ joins whatever comes next (👩‍👩‍👧)
    if char == _ZWJ or unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me"):
        return True
    if 0xFE00 <= code <= 0xFE0F or code in _SKIN_TONES or code in _TAGS:
        return True
    return False


def _clusters(body: str) -> Iterator[str]:
    """Approximate extended grapheme clusters (UAX #29) for what messages contain. CR LF stays two
    clusters: Twilio's calculator counts and splits them as two characters."""
    cluster = ""
    flag_half = False  # the cluster is a lone regional indicator, waiting for its pair
    for char in body:
        if cluster and _extends(cluster[-1], char):
            cluster += char
            continue
        if flag_half and ord(char) in _REGIONAL_INDICATORS:
            cluster += char
            flag_half = False
            continue
        if cluster:
            yield cluster
        cluster = char
        flag_half = ord(char) in _REGIONAL_INDICATORS
    if cluster:
        yield cluster
