"""Budgets: local hour and day windows in the recipient's zone, charging, limits, and when the next
message may go."""

from __future__ import annotations

from collections import Counter as Tally
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.orchestrator import budget
from services.orchestrator.policy import Policy

NY = ZoneInfo("America/New_York")
PARIS = ZoneInfo("Europe/Paris")
KOLKATA = ZoneInfo("Asia/Kolkata")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
ZONES = [NY, PARIS, KOLKATA, LORD_HOWE, ZoneInfo("UTC"), ZoneInfo("America/Santiago")]
POLICY = Policy(quiet_hours=None, time_zone="UTC", hourly_limit=2, daily_limit=5, min_spacing_s=30.0,
                reply_limit_hourly=10, active_user_minutes=10.0)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("now", "zone", "hour", "next_hour"), [
    (utc(2026, 6, 1, 18, 5), NY, utc(2026, 6, 1, 18), utc(2026, 6, 1, 19)),
    # India is +05:30: its hours begin at half past, in UTC.
    (utc(2026, 6, 1, 18, 5), KOLKATA, utc(2026, 6, 1, 17, 30), utc(2026, 6, 1, 18, 30)),
    # New York's repeated 01:00 (2026-11-01): two windows of an hour each, 05:00 and 06:00 UTC.
    (utc(2026, 11, 1, 5, 30), NY, utc(2026, 11, 1, 5), utc(2026, 11, 1, 6)),
    (utc(2026, 11, 1, 6, 30), NY, utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)),
    # Spring forward: 01:xx EST is followed by 03:00 EDT, an hour later.
    (utc(2026, 3, 8, 6, 30), NY, utc(2026, 3, 8, 6), utc(2026, 3, 8, 7)),
    # Lord Howe moves by 30 min (02:00 +10:30 -> 02:30 +11 on 2026-10-04, 15:30 UTC): the hour that
    # began in the gap began at the transition.
    (utc(2026, 10, 3, 15, 45), LORD_HOWE, utc(2026, 10, 3, 15, 30), utc(2026, 10, 3, 16)),
])
def test_local_hour_windows(now, zone, hour, next_hour):
    assert budget.hour_start(now, zone) == hour
    assert budget.next_hour_start(now, zone) == next_hour


@pytest.mark.parametrize(("now", "zone", "day", "length"), [
    (utc(2026, 6, 1, 18), NY, utc(2026, 6, 1, 4), timedelta(hours=24)),
    (utc(2026, 6, 1, 2), NY, utc(2026, 5, 31, 4), timedelta(hours=24)),  # still 31 May in New York
    (utc(2026, 3, 8, 12), NY, utc(2026, 3, 8, 5), timedelta(hours=23)),  # spring forward: a 23-hour day
    (utc(2026, 11, 1, 12), NY, utc(2026, 11, 1, 4), timedelta(hours=25)),  # fall back: a 25-hour day
    (utc(2026, 3, 29, 12), PARIS, utc(2026, 3, 28, 23), timedelta(hours=23)),
    (utc(2026, 10, 25, 12), PARIS, utc(2026, 10, 24, 22), timedelta(hours=25)),
    # Santiago springs forward at midnight (2026-09-06 00:00 -04 -> 01:00 -03): the day begins at 01:00.
    (utc(2026, 9, 6, 12), ZoneInfo("America/Santiago"), utc(2026, 9, 6, 4), timedelta(hours=23)),
])
def test_a_local_day_is_one_window_however_long(now, zone, day, length):
    assert budget.day_start(now, zone) == day
    assert budget.next_day_start(now, zone) - day == length


def test_charge_counts_proactive_sends_in_the_hour_and_day_and_sets_last_proactive_at():
    now = utc(2026, 6, 1, 18, 5)
    after = budget.charge(budget.Counters(), "marketing", now, NY)
    assert (after.hour_start, after.hour_count) == (utc(2026, 6, 1, 18), 1)
    assert (after.day_start, after.day_count) == (utc(2026, 6, 1, 4), 1)
    assert after.last_proactive_at == now
    again = budget.charge(after, "transactional", now + timedelta(minutes=10), NY)
    assert (again.hour_count, again.day_count) == (2, 2)
    assert again.reply_hour_count == 0


def test_a_new_window_starts_counting_from_one():
    first = budget.charge(budget.Counters(), "marketing", utc(2026, 6, 1, 18, 5), NY)
    next_hour = budget.charge(first, "marketing", utc(2026, 6, 1, 19, 1), NY)
    assert (next_hour.hour_start, next_hour.hour_count, next_hour.day_count) == (utc(2026, 6, 1, 19), 1, 2)
    next_day = budget.charge(next_hour, "marketing", utc(2026, 6, 2, 4, 1), NY)  # 00:01 in New York
    assert (next_day.day_start, next_day.day_count, next_day.hour_count) == (utc(2026, 6, 2, 4), 1, 1)


def test_replies_count_against_the_loop_guard_only_and_compliance_against_nothing():
    now = utc(2026, 6, 1, 18, 5)
    reply = budget.charge(budget.Counters(), "reply", now, NY)
    assert (reply.reply_hour_start, reply.reply_hour_count) == (utc(2026, 6, 1, 18), 1)
    assert (reply.hour_count, reply.day_count, reply.last_proactive_at) == (0, 0, None)
    assert budget.charge(reply, "compliance", now, NY) == reply


def test_an_unknown_class_is_refused():
    with pytest.raises(ValueError):
        budget.charge(budget.Counters(), "spam", utc(2026, 6, 1), NY)


def test_status_uses_the_users_limits_over_the_tenants():
    now = utc(2026, 6, 1, 18, 5)
    own = budget.status(budget.Counters(hourly_limit=7, daily_limit=20), POLICY, NY, now)
    assert (own.hourly_limit, own.daily_limit) == (7, 20)
    tenant = budget.status(budget.Counters(), POLICY, NY, now)
    assert (tenant.hourly_limit, tenant.daily_limit, tenant.reply_limit_hourly) == (2, 5, 10)
    zero = budget.status(budget.Counters(hourly_limit=0), POLICY, NY, now)
    assert zero.hourly_limit == 0 and zero.hour_full


def test_status_counts_only_the_current_windows():
    now = utc(2026, 6, 1, 18, 5)
    stale = budget.Counters(hour_start=utc(2026, 6, 1, 17), hour_count=2, day_start=utc(2026, 5, 31, 4),
                            day_count=5, reply_hour_start=utc(2026, 6, 1, 17), reply_hour_count=10)
    st_ = budget.status(stale, POLICY, NY, now)
    assert (st_.used_hour, st_.used_day, st_.reply_used_hour) == (0, 0, 0)
    assert st_.next_allowed_at is None and st_.next_reply_allowed_at is None


@pytest.mark.parametrize(("counters", "next_allowed"), [
    # A full hour: the next local hour.
    (budget.Counters(hour_start=utc(2026, 6, 1, 18), hour_count=2, day_start=utc(2026, 6, 1, 4), day_count=2,
                     last_proactive_at=utc(2026, 6, 1, 18, 1)), utc(2026, 6, 1, 19)),
    # A full day: the next local midnight (04:00 UTC in June), whatever the hour says.
    (budget.Counters(hour_start=utc(2026, 6, 1, 18), hour_count=2, day_start=utc(2026, 6, 1, 4), day_count=5,
                     last_proactive_at=utc(2026, 6, 1, 18, 1)), utc(2026, 6, 2, 4)),
    # Room in both, but the last proactive send was 10 s ago: spacing.
    (budget.Counters(hour_start=utc(2026, 6, 1, 18), hour_count=1, day_start=utc(2026, 6, 1, 4), day_count=1,
                     last_proactive_at=utc(2026, 6, 1, 18, 4, 50)), utc(2026, 6, 1, 18, 5, 20)),
    # Room, and spaced: now.
    (budget.Counters(hour_start=utc(2026, 6, 1, 18), hour_count=1, day_start=utc(2026, 6, 1, 4), day_count=1,
                     last_proactive_at=utc(2026, 6, 1, 18, 1)), None),
])
def test_next_allowed_at(counters, next_allowed):
    st_ = budget.status(counters, POLICY, NY, utc(2026, 6, 1, 18, 5))
    assert st_.next_allowed_at == next_allowed


def test_the_reply_loop_guard_reopens_with_the_next_hour():
    counters = budget.Counters(reply_hour_start=utc(2026, 6, 1, 18), reply_hour_count=10)
    st_ = budget.status(counters, POLICY, NY, utc(2026, 6, 1, 18, 5))
    assert st_.reply_full and st_.next_reply_allowed_at == utc(2026, 6, 1, 19)
    assert st_.next_allowed_at is None  # proactive messages have their own budget


def test_refund_gives_back_a_charge_in_the_same_window_only():
    now = utc(2026, 6, 1, 18, 5)
    charged = budget.charge(budget.charge(budget.Counters(), "marketing", now, NY), "marketing", now, NY)
    back = budget.refund(charged, "marketing", now, NY)
    assert (back.hour_count, back.day_count) == (1, 1)
    assert back.last_proactive_at == now  # spacing stays conservative
    later = budget.refund(charged, "marketing", now - timedelta(hours=1), NY)  # charged in another hour
    assert (later.hour_count, later.day_count) == (2, 1)
    reply = budget.charge(budget.Counters(), "reply", now, NY)
    assert budget.refund(reply, "reply", now, NY).reply_hour_count == 0
    assert budget.refund(budget.Counters(), "marketing", now, NY).hour_count == 0  # never below zero


def test_a_refund_that_knows_the_previous_send_puts_spacing_back_unless_another_send_came_since():
    now, before = utc(2026, 6, 1, 18, 5), utc(2026, 6, 1, 17, 0)
    charged = budget.charge(budget.Counters(last_proactive_at=before), "marketing", now, NY)
    back = budget.refund(charged, "marketing", now, NY, previous_proactive_at=before, restore_spacing=True)
    assert back.last_proactive_at == before  # a held row is not spaced against its own claim
    moved = budget.charge(charged, "transactional", now + timedelta(seconds=40), NY)  # another send since
    kept = budget.refund(moved, "marketing", now, NY, previous_proactive_at=before, restore_spacing=True)
    assert kept.last_proactive_at == now + timedelta(seconds=40)


def test_counters_from_a_row():
    row = {"user_id": 1, "tenant_id": 2, "hourly_limit": 3, "daily_limit": None, "hour_start": utc(2026, 6, 1),
           "hour_count": 1, "day_start": None, "day_count": 0, "reply_hour_start": None, "reply_hour_count": 0,
           "last_proactive_at": None, "updated_at": utc(2026, 6, 1)}
    counters = budget.Counters.from_row(row)
    assert (counters.hourly_limit, counters.hour_count, counters.hour_start) == (3, 1, utc(2026, 6, 1))
    assert budget.Counters.from_row(None) == budget.Counters()


_DST = [utc(2026, 3, 8, 7), utc(2026, 11, 1, 6), utc(2026, 3, 29, 1), utc(2026, 10, 25, 1), utc(2026, 10, 3, 15, 30)]


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), start=st.sampled_from(_DST),
       offset_s=st.integers(-30 * 3600, 6 * 3600),
       gaps=st.lists(st.integers(0, 40 * 60), min_size=1, max_size=80),
       classes=st.lists(st.sampled_from(["marketing", "transactional", "reply", "compliance"]), min_size=80,
                        max_size=80),
       hourly=st.integers(0, 4), daily=st.integers(0, 8), replies=st.integers(0, 5))
def test_budget_never_allows_more_than_the_limit_in_any_local_hour_or_day(zone, start, offset_s, gaps, classes,
                                                                          hourly, daily, replies):
    """Sends at arbitrary moments around DST changes, each allowed only when status says so: per local
    (date, hour, offset) and per local date, never more than the limits."""
    policy = Policy(quiet_hours=None, time_zone="UTC", hourly_limit=hourly, daily_limit=daily, min_spacing_s=0,
                    reply_limit_hourly=replies, active_user_minutes=0)
    counters = budget.Counters()
    now = start + timedelta(seconds=offset_s)
    per_hour: Tally[tuple[object, ...]] = Tally()
    per_day: Tally[object] = Tally()
    reply_hour: Tally[tuple[object, ...]] = Tally()
    for gap, klass in zip(gaps, classes, strict=False):
        now += timedelta(seconds=gap)
        st_ = budget.status(counters, policy, zone, now)
        local = now.astimezone(zone)
        hour_key = (local.date(), local.hour, local.utcoffset())
        if klass in ("marketing", "transactional"):
            if st_.budget_until is not None:
                assert st_.budget_until > now
                continue
            per_hour[hour_key] += 1
            per_day[local.date()] += 1
        elif klass == "reply":
            if st_.reply_full:
                assert st_.next_reply_allowed_at is not None and st_.next_reply_allowed_at > now
                continue
            reply_hour[hour_key] += 1
        counters = budget.charge(counters, klass, now, zone)
    assert all(n <= hourly for n in per_hour.values())
    assert all(n <= daily for n in per_day.values())
    assert all(n <= replies for n in reply_hour.values())


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), start=st.sampled_from(_DST), offset_s=st.integers(-30 * 3600, 30 * 3600))
def test_hour_and_day_windows_contain_now_and_follow_each_other(zone, start, offset_s):
    now = start + timedelta(seconds=offset_s)
    h, nh = budget.hour_start(now, zone), budget.next_hour_start(now, zone)
    assert h <= now < nh
    assert budget.hour_start(nh, zone) == nh
    assert timedelta(minutes=30) <= nh - h <= timedelta(hours=2)
    d, nd = budget.day_start(now, zone), budget.next_day_start(now, zone)
    assert d <= now < nd
    assert budget.day_start(nd, zone) == nd
    assert timedelta(hours=22) <= nd - d <= timedelta(hours=26)
    # The next window's start is the first instant with another window.
    assert budget.hour_start(nh - timedelta(microseconds=1), zone) == h
    assert budget.day_start(nd - timedelta(microseconds=1), zone) == d


def test_a_window_started_by_a_dispatcher_whose_clock_is_ahead_still_counts():
    # Dispatcher A (clock 50 ms ahead) charged at 19:00:00.02 New York; B, at 18:59:59.97, must see it.
    ahead = budget.charge(budget.Counters(), "marketing", utc(2026, 6, 1, 19, 0, 0) + timedelta(milliseconds=20), NY)
    behind = utc(2026, 6, 1, 18, 59, 59) + timedelta(milliseconds=970)
    assert budget.status(ahead, POLICY, NY, behind).used_hour == 1
    charged = budget.charge(ahead, "marketing", behind, NY)
    assert (charged.hour_start, charged.hour_count) == (utc(2026, 6, 1, 19), 2)
    assert budget.status(charged, POLICY, NY, utc(2026, 6, 1, 19, 0, 1)).used_hour == 2


@settings(max_examples=1000, deadline=None)
@given(zone=st.sampled_from(ZONES + [ZoneInfo("Pacific/Chatham"), ZoneInfo("America/St_Johns"),
                                     ZoneInfo("Pacific/Apia")]),
       start=st.sampled_from(_DST + [utc(2011, 12, 30, 10)]), offset_s=st.integers(-30 * 3600, 30 * 3600))
def test_the_fast_window_path_agrees_with_the_exact_one(zone, start, offset_s):
    now = start + timedelta(seconds=offset_s)
    assert budget.windows.__wrapped__(now, zone) == budget.exact_windows(now, zone)
