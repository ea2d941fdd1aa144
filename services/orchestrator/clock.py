"""The dispatcher's notion of now, injectable so tests can walk through quiet hours, windows, budgets
and spacing without waiting for them.

Every instant the dispatcher and the reconciler compare or store (due rows, leases, deferrals, budget
windows) comes from one `Clock`, passed to the database as a parameter rather than read from now(),
so that a test that moves the clock moves all of them together.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware UTC datetime."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be aware")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("moment must be aware")
        self._now = moment

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now


SYSTEM = SystemClock()
