"""Quiet hours: parsing, which local times are quiet, and when a quiet window ends, in UTC, across DST."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.badinput import BadInput
from services.orchestrator import quiet_hours as qh

NY = ZoneInfo("America/New_York")
PARIS = ZoneInfo("Europe/Paris")
ZONES = [ZoneInfo(z) for z in ("America/New_York", "Europe/Paris", "UTC", "Asia/Kolkata", "Australia/Lord_Howe",
                               "America/Santiago", "Pacific/Chatham", "America/St_Johns")]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("21:00-08:00", qh.QuietHours(time(21), time(8))),
    ("12:00-14:30", qh.QuietHours(time(12), time(14, 30))),
    ("00:00-23:59", qh.QuietHours(time(0), time(23, 59))),
    ("", None),
    (None, None),
])
def test_parse_reads_hh_mm_ranges_and_empty_means_none(text, expected):
    assert qh.parse(text) == expected
    assert qh.QuietHours.parse(text) == expected


@pytest.mark.parametrize("text", ["21:00", "9:00-08:00", "24:00-08:00", "21:60-08:00", "21:00-08:00-09:00",
                                  "21.00-08.00", "quiet", " - "])
def test_parse_refuses_what_is_not_hh_mm_hh_mm(text):
    with pytest.raises(BadInput) as refused:
        qh.parse(text)
    assert refused.value.field == "quiet_hours"


def test_a_window_that_starts_when_it_ends_is_refused():
    with pytest.raises(BadInput, match="same time"):
        qh.parse("08:00-08:00")
    with pytest.raises(BadInput):
        qh.QuietHours(time(8), time(8))


def test_a_window_prints_as_it_is_written():
    assert str(qh.parse("21:00-08:05")) == "21:00-08:05"


@pytest.mark.parametrize(("hours", "local", "quiet"), [
    ("21:00-08:00", time(20, 59), False),
    ("21:00-08:00", time(21, 0), True),
    ("21:00-08:00", time(23, 59), True),
    ("21:00-08:00", time(0, 0), True),
    ("21:00-08:00", time(7, 59, 59), True),
    ("21:00-08:00", time(8, 0), False),
    ("21:00-08:00", time(14, 5), False),
    ("12:00-14:00", time(11, 59), False),
    ("12:00-14:00", time(12, 0), True),
    ("12:00-14:00", time(13, 59), True),
    ("12:00-14:00", time(14, 0), False),
    ("12:00-14:00", time(23, 0), False),
])
def test_contains_is_start_inclusive_end_exclusive_with_or_without_midnight(hours, local, quiet):
    window = qh.parse(hours)
    assert window is not None
    assert window.contains(local) is quiet


@pytest.mark.parametrize(("hours", "now", "zone", "until"), [
    # 23:30 in New York (EDT, -4): quiet until 08:00 the next morning.
    ("21:00-08:00", utc(2026, 6, 2, 3, 30), NY, utc(2026, 6, 2, 12, 0)),
    # 02:00 local, after midnight: the same morning.
    ("21:00-08:00", utc(2026, 6, 2, 6, 0), NY, utc(2026, 6, 2, 12, 0)),
    # 14:05 local: not quiet.
    ("21:00-08:00", utc(2026, 6, 2, 18, 5), NY, None),
    # A window within one day.
    ("12:00-14:00", utc(2026, 6, 2, 11, 0), PARIS, utc(2026, 6, 2, 12, 0)),  # 13:00 CEST
    ("12:00-14:00", utc(2026, 6, 2, 13, 0), PARIS, None),  # 15:00 CEST
    # Winter in New York (EST, -5).
    ("21:00-08:00", utc(2026, 1, 15, 3, 0), NY, utc(2026, 1, 15, 13, 0)),
])
def test_quiet_until_is_the_window_end_in_utc(hours, now, zone, until):
    window = qh.parse(hours)
    assert window is not None
    assert qh.quiet_until(window, now, zone) == until


@pytest.mark.parametrize(("hours", "now", "zone", "until"), [
    # New York springs forward on 2026-03-08 at 02:00 EST -> 03:00 EDT (07:00 UTC): an end at 02:30
    # does not exist that night, and the window ends at the first instant after the gap.
    ("21:00-02:30", utc(2026, 3, 8, 5, 0), NY, utc(2026, 3, 8, 7, 0)),
    # An end after the gap is read in EDT.
    ("21:00-08:00", utc(2026, 3, 8, 5, 0), NY, utc(2026, 3, 8, 12, 0)),
    # New York falls back on 2026-11-01 at 02:00 EDT -> 01:00 EST (06:00 UTC): 01:30 happens twice;
    # from before it, the window ends at the earlier (01:30 EDT = 05:30 UTC)...
    ("21:00-01:30", utc(2026, 11, 1, 3, 0), NY, utc(2026, 11, 1, 5, 30)),
    # ...and from inside the second 01:00-01:30, at the second (01:30 EST = 06:30 UTC), never in the past.
    ("21:00-01:30", utc(2026, 11, 1, 6, 10), NY, utc(2026, 11, 1, 6, 30)),
    # Paris springs forward on 2026-03-29 at 02:00 CET -> 03:00 CEST (01:00 UTC).
    ("22:00-02:30", utc(2026, 3, 28, 23, 0), PARIS, utc(2026, 3, 29, 1, 0)),
    ("22:00-08:00", utc(2026, 3, 28, 23, 0), PARIS, utc(2026, 3, 29, 6, 0)),
    # Paris falls back on 2026-10-25 at 03:00 CEST -> 02:00 CET (01:00 UTC): 02:30 twice, the earlier first.
    ("22:00-02:30", utc(2026, 10, 24, 21, 0), PARIS, utc(2026, 10, 25, 0, 30)),
    ("22:00-08:00", utc(2026, 10, 24, 21, 0), PARIS, utc(2026, 10, 25, 7, 0)),
    # A fall-back can end a window early: at 01:59:59 EDT the clock goes back to 01:00 EST, before 01:15.
    ("01:15-02:00", utc(2026, 11, 1, 5, 59, 59), NY, utc(2026, 11, 1, 6, 0)),
    # ...or keep it going: back to 01:00 EST, still inside 00:30-02:00, which ends at 02:00 EST.
    ("00:30-02:00", utc(2026, 11, 1, 5, 30), NY, utc(2026, 11, 1, 7, 0)),
    # Paris: 02:59 CEST goes back to 02:00 CET, before 02:15.
    ("02:15-03:00", utc(2026, 10, 25, 0, 59), PARIS, utc(2026, 10, 25, 1, 0)),
])
def test_quiet_until_across_dst_changes(hours, now, zone, until):
    window = qh.parse(hours)
    assert window is not None
    assert qh.quiet_until(window, now, zone) == until


def test_local_instants_gap_and_overlap():
    assert qh.local_instants(datetime(2026, 3, 8, 2, 30), NY) == []
    assert qh.gap_end(datetime(2026, 3, 8, 2, 30), NY) == utc(2026, 3, 8, 7, 0)
    assert qh.local_instants(datetime(2026, 11, 1, 1, 30), NY) == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30)]
    assert qh.local_instants(datetime(2026, 6, 1, 12, 0), NY) == [utc(2026, 6, 1, 16, 0)]


def test_a_naive_now_is_refused():
    window = qh.parse("21:00-08:00")
    assert window is not None
    with pytest.raises(ValueError):
        qh.quiet_until(window, datetime(2026, 6, 1, 12, 0), NY)


# Instants through 2026, weighted towards the nights of DST changes in New York and Paris.
_DST_NIGHTS = [utc(2026, 3, 8, 7), utc(2026, 11, 1, 6), utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)]
instants = st.one_of(
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
    st.tuples(st.sampled_from(_DST_NIGHTS), st.integers(-12 * 3600, 12 * 3600)).map(
        lambda p: p[0] + timedelta(seconds=p[1])),
)
windows = st.tuples(st.integers(0, 23), st.sampled_from([0, 15, 30, 45]), st.integers(0, 23),
                    st.sampled_from([0, 15, 30, 45])).filter(lambda w: (w[0], w[1]) != (w[2], w[3])).map(
    lambda w: qh.QuietHours(time(w[0], w[1]), time(w[2], w[3])))


@settings(max_examples=600, deadline=None)
@given(hours=windows, now=instants, zone=st.sampled_from(ZONES))
def test_quiet_until_is_ahead_and_the_first_instant_that_is_not_quiet(hours, now, zone):
    until = qh.quiet_until(hours, now, zone)
    if until is None:
        assert not hours.contains(now.astimezone(zone).time())
        return
    assert until > now
    assert until.tzinfo is not None
    # At `until` it is no longer quiet (re-evaluating there passes the gate)...
    assert not hours.contains(until.astimezone(zone).time())
    # ...and everywhere between now and then it was.
    for k in range(10):
        moment = now + (until - now) * k / 10
        assert hours.contains(moment.astimezone(zone).time()), moment
    assert hours.contains((until - timedelta(microseconds=1)).astimezone(zone).time())


@settings(max_examples=300, deadline=None)
@given(hours=windows, now=instants, zone=st.sampled_from(ZONES))
def test_a_quiet_window_lasts_at_most_a_day_and_an_hour(hours, now, zone):
    until = qh.quiet_until(hours, now, zone)
    assume(until is not None)
    assert until is not None
    assert until - now <= timedelta(hours=25, minutes=30)
