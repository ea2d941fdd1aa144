"""A tenant's effective outbound defaults, and the zone a recipient's local time is read in.

Tenant columns (db/migrations/0013_outbound.sql) override the settings' PARLEY_* defaults; NULL means
"the settings' value", and quiet_hours '' means no quiet hours at all. Stored values that cannot be
used (an unknown zone name, say) fall back to the next source with a warning, never an exception: the
dispatcher reads these on every claim.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services import phone as phone_mod
from services.badinput import BadInput
from services.orchestrator import quiet_hours as qh

log = logging.getLogger("parley.orchestrator.policy")

UTC_ZONE = ZoneInfo("UTC")


class MessageClass(StrEnum):
    """Matches the CHECK on message_queue.class."""

    COMPLIANCE = "compliance"
    REPLY = "reply"
    TRANSACTIONAL = "transactional"
    MARKETING = "marketing"


PROACTIVE = frozenset({MessageClass.TRANSACTIONAL, MessageClass.MARKETING})


class OutboundSettings(Protocol):
    """The part of services.settings.Settings read here (so tests may pass a smaller object)."""

    quiet_hours: str
    time_zone: str
    budget_hourly: int
    budget_daily: int
    min_spacing_s: float
    reply_limit_hourly: int
    active_user_minutes: float


@dataclass(frozen=True, slots=True)
class Policy:
    """A tenant's effective defaults; a user's own overrides (zone, limits) are applied by the gates."""

    quiet_hours: qh.QuietHours | None
    time_zone: str  # always a valid IANA name
    hourly_limit: int
    daily_limit: int
    min_spacing_s: float
    reply_limit_hourly: int
    active_user_minutes: float
    # WhatsApp's customer service window (Meta and Twilio alike: 24 h from the user's last message).
    window_hours: float = 24.0

    @property
    def zone(self) -> ZoneInfo:
        return zone_or_none(self.time_zone) or UTC_ZONE


def tenant_policy(settings: OutboundSettings, tenant_row: Mapping[str, Any] | None = None) -> Policy:
    """The tenant's Policy: its columns time_zone, quiet_hours, budget_hourly, budget_daily (NULL or
    absent -> the settings' value).

    Raises BadInput only for unusable *settings* (PARLEY_QUIET_HOURS "12:00-12:00"), a start-up error."""
    row: Mapping[str, Any] = tenant_row if tenant_row is not None else {}
    tenant_id = row.get("id")
    default_hours = qh.parse(settings.quiet_hours)
    hours = default_hours
    stored_hours = row.get("quiet_hours")
    if stored_hours is not None:
        try:
            hours = qh.parse(stored_hours)
        except BadInput:
            _warn_once("tenant quiet_hours unusable, using the default", tenant_id, "quiet_hours", stored_hours)
    zone_name = _zone_name(settings.time_zone) or "UTC"
    stored_zone = row.get("time_zone")
    if stored_zone is not None:
        if _zone_name(stored_zone) is not None:
            zone_name = stored_zone
        else:
            _warn_once("tenant time_zone unknown, using the default", tenant_id, "time_zone", stored_zone)
    return Policy(
        quiet_hours=hours,
        time_zone=zone_name,
        hourly_limit=_limit(row.get("budget_hourly"), settings.budget_hourly),
        daily_limit=_limit(row.get("budget_daily"), settings.budget_daily),
        min_spacing_s=float(settings.min_spacing_s),
        reply_limit_hourly=int(settings.reply_limit_hourly),
        active_user_minutes=float(settings.active_user_minutes),
    )


def recipient_zone(user_time_zone: str | None, phone: str | None, policy: Policy) -> ZoneInfo:
    """users.time_zone, else the zone the number maps to (when it maps to exactly one), else the
    tenant's (or settings') zone. Never raises: an unknown stored name falls through to the next."""
    return (zone_or_none(user_time_zone) or zone_or_none(_phone_zone(phone)) or policy.zone)


def zone_or_none(name: str | None) -> ZoneInfo | None:
    """ZoneInfo for a stored name, or None when it is empty or not a zone this machine knows."""
    if not name or not isinstance(name, str) or len(name) > 64:
        return None
    return _zone(name)


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    # ValueError: a malformed key ("../x", NUL); OSError: a path that is a directory ("America").
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _zone_name(name: str | None) -> str | None:
    return name if zone_or_none(name) is not None else None


def _phone_zone(phone: str | None) -> str | None:
    if not phone:
        return None
    try:
        return phone_mod.time_zone_for(phone)
    except Exception:  # noqa: BLE001 - phonenumbers on a malformed stored value: no zone, not a failed claim
        return None


_warned: set[tuple[object, str, str]] = set()


def _warn_once(message: str, tenant_id: object, column: str, value: object) -> None:
    # tenant_policy runs on every claim: one line per tenant and bad value, not one per cycle.
    key = (tenant_id, column, str(value)[:64])
    if key in _warned or len(_warned) > 10_000:
        return
    _warned.add(key)
    log.warning(message, extra={"tenant_id": tenant_id, column: key[2]})


def _limit(stored: object, default: int) -> int:
    if stored is None:
        return int(default)
    try:
        value = int(stored)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return int(default)
    return value if value >= 0 else int(default)
