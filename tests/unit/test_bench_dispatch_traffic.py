"""bench/dispatch.py seeds the traffic its README promises: night zones really in quiet hours, opted-out
users' confirmations marked as such, WhatsApp proactive rows with a template, each share near its
setting, and the ceiling's callback ids never read as Parley's queue ids."""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import pytest

from services.simulator.state import SimMessage

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dispatch.py"
NOON_UTC = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def dispatch() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_dispatch", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_dispatch"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {"users": 2000, "messages": 8000, "whatsapp_share": 0.3, "night_share": 0.15,
                                 "opt_out_share": 0.03, "over_budget_share": 0.05, "expired_share": 0.01}
    values.update(overrides)
    return argparse.Namespace(**values)


def test_quiet_window_wraps_midnight(dispatch: ModuleType) -> None:
    at = lambda h, m: datetime(2026, 1, 1, h, m)  # noqa: E731
    assert dispatch.in_window(at(23, 0), "21:00-08:00")
    assert dispatch.in_window(at(7, 59), "21:00-08:00")
    assert not dispatch.in_window(at(8, 0), "21:00-08:00")
    assert not dispatch.in_window(at(20, 59), "21:00-08:00")
    assert dispatch.in_window(at(12, 0), "09:00-17:00")
    assert not dispatch.in_window(at(12, 0), "")


def test_night_zones_are_in_quiet_hours_and_day_zones_are_not(dispatch: ModuleType) -> None:
    day, night = dispatch.sort_zones(NOON_UTC, "21:00-08:00")
    assert "Asia/Tokyo" in night and "Europe/London" in day
    for name in night:
        assert dispatch.in_window(NOON_UTC.astimezone(ZoneInfo(name)), "21:00-08:00")
    for name in day:
        assert not dispatch.in_window(NOON_UTC.astimezone(ZoneInfo(name)), "21:00-08:00")


def test_round_traffic_has_the_promised_mix(dispatch: ModuleType) -> None:
    day, night = dispatch.sort_zones(NOON_UTC, "21:00-08:00")
    people, rows = dispatch.make_round(1, args(), NOON_UTC, day, night, random.Random(11))
    assert len({p.phone for p in people}) == len(people) == 2000
    assert all(p.zone in night for p in people if p.night) and all(p.zone in day for p in people if not p.night)
    assert 0.10 < sum(p.night for p in people) / len(people) < 0.20
    assert 0.25 < sum(p.whatsapp for p in people) / len(people) < 0.35
    assert any(p.opted_out for p in people) and any(p.over_budget for p in people)
    classes = {k: sum(r.klass == k for r in rows) / len(rows) for k in ("reply", "transactional", "marketing",
                                                                         "compliance")}
    assert 0.45 < classes["reply"] < 0.55 and 0.02 < classes["compliance"] < 0.08
    for r in rows:
        if r.klass == "compliance":
            assert r.reason == ("opt_out_confirmation" if r.person.opted_out else "opt_in_confirmation")
        assert (r.template is not None) == (r.person.whatsapp and r.klass in ("transactional", "marketing"))
    assert any(r.expires_at is not None and r.expires_at < NOON_UTC for r in rows)


def test_ceiling_callback_ids_are_not_queue_ids(dispatch: ModuleType) -> None:
    """The ceiling's requests carry c<id> / c:<id>: the simulator must not count them as Parley's sends."""
    twilio = SimMessage(seq=1, provider="twilio", channel="sms", sid="SM1", to="+15551230000", from_="+1", body="x",
                        status="queued", created_at=NOON_UTC,
                        status_callback="http://127.0.0.1:1/webhooks/twilio/status?q=c42")
    meta = SimMessage(seq=2, provider="meta", channel="whatsapp", sid="w", to="15551230000", from_=None, body="x",
                      status="accepted", created_at=NOON_UTC, callback_data="c:42")
    assert twilio.queue_id is None and meta.queue_id is None
    twilio.status_callback = "http://127.0.0.1:1/webhooks/twilio/status?q=42"
    assert twilio.queue_id == 42
