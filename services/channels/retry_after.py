"""`Retry-After` as seconds, for the throttled sends of every provider module (RFC 9110 §10.2.3)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# A value beyond a day is a provider's mistake or a hostile proxy: the row would sit out of reach.
MAX_S = 86400.0


def seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Delay-seconds ("120", Twilio and Meta also send "1.5") or an HTTP-date, as seconds from `now`;
    None when absent or unreadable (the dispatcher then uses its own backoff)."""
    if value is None:
        return None
    text = value.strip()
    try:
        delay = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(delay):
        return None
    return min(max(delay, 0.0), MAX_S)
