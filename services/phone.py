"""Phone numbers: everything we store is E.164, normalised by phonenumbers."""

from __future__ import annotations

import functools
import re
from typing import Final

import phonenumbers

# What users.phone and channels.address hold (their CHECK in db/migrations/0001_foundation.sql):
# E.164 allows at most 15 digits, where phonenumbers calls some longer national numbers possible.
E164: Final = re.compile(r"\+[1-9][0-9]{6,14}")

# Longer than any way of writing a phone number: refused before the parser, and kept out of the cache.
_MAX_RAW = 64

# The numbers _to_e164 just parsed, by their E.164 form, for time_zone_for to take instead of parsing
# the same number again: a first-time sender's number is normalised, then its time zone looked up,
# and the parse (~15 us) was half of that. Bounded: cleared when full (a miss only parses again).
_PARSED: dict[str, phonenumbers.PhoneNumber] = {}
_PARSED_MAX = 4096


def to_e164(raw: str | None) -> str | None:
    """E.164 form of `raw` (which must carry its country code), or None if it is not a possible number
    or cannot be stored as E.164 (more than 15 digits, say). What it returns always matches `E164`.

    Accepts Twilio's "whatsapp:+1..." and "rcs:+1..." addresses and Meta's bare wa_id digits ("16505551234").
    """
    if not raw or len(raw) > _MAX_RAW:
        return None
    return _to_e164(raw)


@functools.lru_cache(maxsize=65536)
def _to_e164(raw: str) -> str | None:
    # Cached: parsing costs tens of microseconds and the same few numbers arrive over and over.
    value = raw.strip()
    if ":" in value:
        value = value.split(":", 1)[1]
    if not value.startswith("+"):
        value = "+" + value
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not E164.fullmatch(e164):
        return None
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[e164] = number
    return e164


def mask(e164: str | None) -> str | None:
    """Keep the country code and the last two digits: enough to tell numbers apart in logs."""
    if not e164:
        return e164
    if len(e164) <= 6:
        return "***"
    return e164[:3] + "*" * (len(e164) - 5) + e164[-2:]


@functools.lru_cache(maxsize=65536)
def time_zone_for(e164: str | None) -> str | None:
    """The recipient's most likely IANA time zone, when the number maps to exactly one."""
    # The number as to_e164 parsed it, if it just did: the same country code and national number (an
    # extension, which E.164 drops, plays no part in the zone).
    number = _PARSED.pop(e164, None) if e164 else None
    if number is None:
        number = _parse(e164)
    if number is None:
        return None
    from phonenumbers import timezone as pn_timezone

    zones = [z for z in pn_timezone.time_zones_for_number(number) if z != "Etc/Unknown"]
    return zones[0] if len(zones) == 1 else None


def _parse(e164: str | None) -> phonenumbers.PhoneNumber | None:
    if not e164:
        return None
    try:
        return phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
