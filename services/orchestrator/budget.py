"""Per-user message budgets, counted in the recipient's local hour and day.

The counters are user_message_budget's columns (db/migrations/0013_outbound.sql). The dispatcher reads
them under the row's lock in the claiming transaction, asks `status` (through gates.evaluate) whether a
send fits, and writes back what `charge` returns, so any number of dispatchers never exceed a limit.

Windows: the current local hour and the current local day, each stored as its start in UTC. A local
day is one window however long it is (23 or 25 hours around a DST change); a local hour is one hour of
real time (the repeated 01:00 of a fall-back night is two windows). A counter whose stored start is
before the current window's counts as zero (a new window begins with the next charge); one whose start
is the current window's, or later (a dispatcher whose clock runs a little ahead), counts.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.orchestrator import quiet_hours as qh
from services.orchestrator.policy import PROACTIVE, MessageClass, Policy


@dataclass(frozen=True, slots=True)
class Counters:
    """One user_message_budget row (limits are the user's overrides; None: the tenant's)."""

    hourly_limit: int | None = None
    daily_limit: int | None = None
    hour_start: datetime | None = None
    hour_count: int = 0
    day_start: datetime | None = None
    day_count: int = 0
    reply_hour_start: datetime | None = None
    reply_hour_count: int = 0
    last_proactive_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | None) -> Counters:
        """From a user_message_budget row (or None: a user with no row yet)."""
        if row is None:
            return cls()
        return cls(**{name: row[name] for name in FIELDS if name in row.keys()})  # noqa: SIM118 - asyncpg Record


FIELDS: tuple[str, ...] = tuple(Counters.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """Where a user stands now (GET /api/users/{id}/budget, and the budget gate)."""

    hourly_limit: int
    daily_limit: int
    used_hour: int
    used_day: int
    reply_used_hour: int
    reply_limit_hourly: int
    # When the next proactive (marketing, transactional) message may go, budget and spacing both
    # considered; None: now. With a limit of 0 it is the next window's start, when it is looked at again.
    next_allowed_at: datetime | None
    # The same for a reply (the loop guard); None: now.
    next_reply_allowed_at: datetime | None = None
    hour_start: datetime | None = None
    day_start: datetime | None = None
    next_hour_at: datetime | None = None  # when the local hour rolls over
    next_day_at: datetime | None = None  # when the local day rolls over
    spacing_until: datetime | None = None  # min_spacing_s after the last proactive send, if still ahead

    @property
    def hour_full(self) -> bool:
        return self.used_hour >= self.hourly_limit

    @property
    def day_full(self) -> bool:
        return self.used_day >= self.daily_limit

    @property
    def reply_full(self) -> bool:
        return self.reply_used_hour >= self.reply_limit_hourly

    @property
    def budget_until(self) -> datetime | None:
        """When the hourly and daily limits next allow a proactive send (None: now); spacing aside."""
        if self.day_full:
            return self.next_day_at
        if self.hour_full:
            return self.next_hour_at
        return None


def hour_start(now_utc: datetime, zone: ZoneInfo) -> datetime:
    """The UTC start of the local hour `now_utc` is in."""
    return windows(now_utc, zone).hour_start


def next_hour_start(now_utc: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant the next local hour begins (strictly after `now_utc`)."""
    return windows(now_utc, zone).next_hour


def day_start(now_utc: datetime, zone: ZoneInfo) -> datetime:
    """The UTC start of the local day `now_utc` is in (its first instant, however long the day)."""
    return windows(now_utc, zone).day_start


def next_day_start(now_utc: datetime, zone: ZoneInfo) -> datetime:
    return windows(now_utc, zone).next_day


@dataclass(frozen=True, slots=True)
class Windows:
    hour_start: datetime
    next_hour: datetime
    day_start: datetime
    next_day: datetime


@functools.lru_cache(maxsize=4096)
def windows(now_utc: datetime, zone: ZoneInfo) -> Windows:
    """The local hour and day `now_utc` is in, as UTC bounds. Cached: a claim evaluates its whole batch
    at one `now`, and most recipients share a handful of zones."""
    local = now_utc.astimezone(zone)
    offset = local.utcoffset()
    wall_hour = local.replace(minute=0, second=0, microsecond=0, tzinfo=None, fold=0)
    wall_day = wall_hour.replace(hour=0)
    assert offset is not None
    # The usual case: no offset change between a bound and now, so wall - offset is the bound.
    guesses = [(wall_hour - offset).replace(tzinfo=UTC), (wall_hour + _HOUR - offset).replace(tzinfo=UTC),
               (wall_day - offset).replace(tzinfo=UTC), (wall_day + _DAY - offset).replace(tzinfo=UTC)]
    if all(g.astimezone(zone).utcoffset() == offset for g in guesses):
        return Windows(*guesses)
    return exact_windows(now_utc, zone)


def exact_windows(now_utc: datetime, zone: ZoneInfo) -> Windows:
    """`windows` the long way, valid across any transition (tests hold the fast path to it)."""
    local = now_utc.astimezone(zone)
    wall_hour = local.replace(minute=0, second=0, microsecond=0, tzinfo=None, fold=0)
    day = wall_hour.date()
    return Windows(_hour_start(now_utc, zone, wall_hour), _next_hour_start(now_utc, zone, wall_hour),
                   qh.local_midnight(day, zone), qh.local_midnight(day + _DAY, zone))


_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)


def _hour_start(now_utc: datetime, zone: ZoneInfo, wall: datetime) -> datetime:
    instants = qh.local_instants(wall, zone)
    if not instants:  # the hour began in a gap (a zone shifting by 30 min): it began at the transition
        return qh.gap_end(wall, zone)
    # An overlap: the second reading of a repeated hour is its own window.
    passed = [i for i in instants if i <= now_utc]
    return passed[-1] if passed else instants[0]


def _next_hour_start(now_utc: datetime, zone: ZoneInfo, wall: datetime) -> datetime:
    candidates: list[datetime] = []
    for w in (wall, wall + _HOUR, wall + 2 * _HOUR):
        candidates += qh.local_instants(w, zone) or [qh.gap_end(w, zone)]
    ahead = sorted(c for c in candidates if c > now_utc)
    return ahead[0] if ahead else _hour_start(now_utc, zone, wall) + _HOUR


def _current(stored_start: datetime | None, window_start: datetime) -> bool:
    # Equal in the usual case. A later start is counted too: it comes from a dispatcher whose clock
    # is a little ahead (it already saw the next window) or from a zone change; forgetting those sends
    # could exceed the limit, counting them only delays. A start from before the window is a past window.
    return stored_start is not None and stored_start >= window_start


def _start(stored_start: datetime | None, window_start: datetime) -> datetime:
    return stored_start if stored_start is not None and stored_start > window_start else window_start


def status(counters: Counters, policy: Policy, zone: ZoneInfo, now_utc: datetime) -> BudgetStatus:
    """The user's limits (their override, else the tenant's), what is used in the current local hour
    and day, and when the next message may go."""
    w = windows(now_utc, zone)
    h_start, d_start, h_next, d_next = w.hour_start, w.day_start, w.next_hour, w.next_day
    hourly = counters.hourly_limit if counters.hourly_limit is not None else policy.hourly_limit
    daily = counters.daily_limit if counters.daily_limit is not None else policy.daily_limit
    used_hour = counters.hour_count if _current(counters.hour_start, h_start) else 0
    used_day = counters.day_count if _current(counters.day_start, d_start) else 0
    reply_used = counters.reply_hour_count if _current(counters.reply_hour_start, h_start) else 0
    spacing_until = None
    if counters.last_proactive_at is not None and policy.min_spacing_s > 0:
        until = counters.last_proactive_at + timedelta(seconds=policy.min_spacing_s)
        spacing_until = until if until > now_utc else None
    budget_until = d_next if used_day >= daily else h_next if used_hour >= hourly else None  # as budget_until
    waits = [t for t in (budget_until, spacing_until) if t is not None]
    return BudgetStatus(
        hourly_limit=hourly, daily_limit=daily, used_hour=used_hour, used_day=used_day,
        reply_used_hour=reply_used, reply_limit_hourly=policy.reply_limit_hourly,
        next_allowed_at=max(waits) if waits else None,
        next_reply_allowed_at=h_next if reply_used >= policy.reply_limit_hourly else None,
        hour_start=h_start, day_start=d_start, next_hour_at=h_next, next_day_at=d_next,
        spacing_until=spacing_until)


def charge(counters: Counters, message_class: str, now_utc: datetime, zone: ZoneInfo) -> Counters:
    """The counters after one send of `message_class` at `now_utc` (limits are not checked here: the
    gates do that first). marketing/transactional: the hour and day counts, and last_proactive_at;
    reply: the loop guard's count; compliance: nothing."""
    klass = MessageClass(message_class)
    if klass in PROACTIVE:
        w = windows(now_utc, zone)
        h_start, d_start = w.hour_start, w.day_start
        hour_count = counters.hour_count + 1 if _current(counters.hour_start, h_start) else 1
        day_count = counters.day_count + 1 if _current(counters.day_start, d_start) else 1
        last = counters.last_proactive_at
        return replace(counters, hour_start=_start(counters.hour_start, h_start), hour_count=hour_count,
                       day_start=_start(counters.day_start, d_start), day_count=day_count,
                       last_proactive_at=now_utc if last is None or now_utc > last else last)
    if klass is MessageClass.REPLY:
        h_start = hour_start(now_utc, zone)
        count = counters.reply_hour_count + 1 if _current(counters.reply_hour_start, h_start) else 1
        return replace(counters, reply_hour_start=_start(counters.reply_hour_start, h_start), reply_hour_count=count)
    return counters


def refund(counters: Counters, message_class: str, charged_at: datetime, zone: ZoneInfo, *,
           previous_proactive_at: datetime | None = None, restore_spacing: bool = False) -> Counters:
    """Give back one charge made at `charged_at` for a send that provably did not go out (held by
    throughput, or refused before the provider accepted it). Only while the window it was counted in
    is still the stored one. With `restore_spacing` (the caller knows the value before the charge),
    last_proactive_at goes back to `previous_proactive_at` while it is still this charge's own (nothing
    was sent to the user since); otherwise it stays, conservatively."""
    klass = MessageClass(message_class)
    if klass in PROACTIVE:
        h_start, d_start = hour_start(charged_at, zone), day_start(charged_at, zone)
        hour_count, day_count = counters.hour_count, counters.day_count
        if counters.hour_start == h_start:
            hour_count = max(0, hour_count - 1)
        if counters.day_start == d_start:
            day_count = max(0, day_count - 1)
        last = counters.last_proactive_at
        if restore_spacing and last == charged_at:
            last = previous_proactive_at
        return replace(counters, hour_count=hour_count, day_count=day_count, last_proactive_at=last)
    if klass is MessageClass.REPLY and counters.reply_hour_start == hour_start(charged_at, zone):
        return replace(counters, reply_hour_count=max(0, counters.reply_hour_count - 1))
    return counters
