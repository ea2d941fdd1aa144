"""Phone numbers: everything we store is E.164, normalised by phonenumbers."""

from __future__ import annotations

import functools

import phonenumbers


@functools.lru_cache(maxsize=65536)
def to_e164(raw: str | None) -> str | None:
    """E.164 form of `raw` (which must carry its country code), or None if it is not a possible number.

    Accepts Twilio's "whatsapp:+1..." addresses and Meta's bare wa_id digits ("16505551234").
    Cached: parsing costs tens of microseconds and the same few numbers arrive over and over.
    """
    if not raw:
        return None
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
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


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
