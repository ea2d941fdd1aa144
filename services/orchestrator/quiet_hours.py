"""Quiet hours: a daily window of local wall-clock time in which nothing proactive goes out.

A window is [start, end) in the recipient's local time; it crosses midnight when start > end
(21:00-08:00) and not otherwise (12:00-14:00). Local times are mapped back to UTC DST-safely: a
wall time that does not exist (a spring-forward gap) becomes the first instant after the gap, and one
that happens twice (a fall-back overlap) the earlier of the two that is still ahead. A window also ends
when a DST change sets the clock back out of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.badinput import BadInput

_TEXT = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])")
_FIELD = "quiet_hours"


@dataclass(frozen=True, slots=True)
class QuietHours:
    """[start, end) in local wall-clock time; start == end is refused (it could mean never or always)."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise BadInput(_FIELD, "must be local wall-clock times, without a zone")
        if self.start == self.end:
            raise BadInput(_FIELD, "must not start and end at the same time")

    @classmethod
    def parse(cls, text: str | None) -> QuietHours | None:
        return parse(text)

    @property
    def crosses_midnight(self) -> bool:
        return self.start > self.end

    def contains(self, local: time) -> bool:
        """Whether a local wall-clock time is inside the window."""
        local = local.replace(tzinfo=None, fold=0)
        if self.crosses_midnight:
            return local >= self.start or local < self.end
        return self.start <= local < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse(text: str | None) -> QuietHours | None:
    """"HH:MM-HH:MM" -> QuietHours; "" or None -> None (no quiet hours). BadInput for anything else."""
    if text is None or text == "":
        return None
    match = _TEXT.fullmatch(text.strip())
    if match is None:
        raise BadInput(_FIELD, 'must be "HH:MM-HH:MM" (24-hour clock) or empty')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    return QuietHours(time(h1, m1), time(h2, m2))


def quiet_until(hours: QuietHours, now_utc: datetime, zone: ZoneInfo) -> datetime | None:
    """The UTC instant the window `now_utc` falls in ends, or None when it is not quiet now.

    The result is always after `now_utc`; it is the first instant at which the local time is no longer
    inside the window: the end's wall time, or a DST change that moves the clock out of the window
    (a fall-back that sets 01:59 back to 01:00, before a window that starts at 01:15)."""
    if not hours.contains(_aware(now_utc).astimezone(zone).time()):
        return None
    point = now_utc
    # Each pass ends at the end's wall time or at a transition; a transition that lands inside the
    # window (or a gap that skips to a time still inside it) starts another pass from there.
    for _ in range(8):
        local = point.astimezone(zone)
        day = local.date()
        if hours.crosses_midnight and local.time().replace(fold=0) >= hours.start:
            day += timedelta(days=1)
        end = first_at_or_after(datetime.combine(day, hours.end), zone, after=point)
        jump = _transition_between(point, end, zone)
        stop = end if jump is None else jump
        if not hours.contains(stop.astimezone(zone).time()):
            return stop
        point = stop
    raise AssertionError(f"quiet hours {hours} in {zone.key} do not end after {now_utc}")


def _transition_between(start: datetime, end: datetime, zone: ZoneInfo) -> datetime | None:
    """The first offset change strictly between start and end, if any (at most one is looked for: the
    tz database has no zone changing twice within a day)."""
    before = start.astimezone(zone).utcoffset()
    last = end - timedelta(microseconds=1)
    if last <= start or last.astimezone(zone).utcoffset() == before:
        return None
    lo, hi = start, last
    while hi - lo > timedelta(microseconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi


def local_instants(wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants at which the zone's clocks read `wall` (naive): none in a gap, two in an
    overlap, one otherwise; sorted."""
    wall = wall.replace(tzinfo=None, fold=0)
    found: set[datetime] = set()
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None, fold=0) == wall:
            found.add(instant)
    return sorted(found)


def gap_end(wall: datetime, zone: ZoneInfo) -> datetime:
    """For a wall time inside a gap: the transition that skipped it (the first valid instant after it)."""
    wall = wall.replace(tzinfo=None, fold=0)
    # fold=0 reads the wall time with the offset before the transition, fold=1 with the one after: the
    # transition lies between the two readings. Offsets only change at transitions, so bisect.
    a = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    b = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    lo, hi = min(a, b), max(a, b)
    before = lo.astimezone(zone).utcoffset()
    while hi - lo > timedelta(microseconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    # The tz database's transitions fall on whole seconds: with microsecond resolution, hi is exactly it.
    return hi


def first_at_or_after(wall: datetime, zone: ZoneInfo, *, after: datetime | None = None) -> datetime:
    """The earliest UTC instant the clocks read `wall` (or, in a gap, the first instant after it),
    strictly later than `after` when possible (an overlap whose first reading has passed gives the second)."""
    instants = local_instants(wall, zone) or [gap_end(wall, zone)]
    if after is not None:
        ahead = [i for i in instants if i > after]
        if ahead:
            return ahead[0]
    return instants[0]


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant `day` begins in `zone` (its first valid instant when midnight is skipped)."""
    return first_at_or_after(datetime.combine(day, time()), zone)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("expected an aware datetime (UTC)")
    return moment
