"""Reading a requested date/time in the lead's zone: en/fr/es, always ahead of `now`, DST edges."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agents.when import RequestedTime, read_requested_time

# Wednesday 2 December 2026, 16:00 in New York, 22:00 in Paris, 15:00 in Mexico City.
NOW = datetime(2026, 12, 2, 21, 0, tzinfo=UTC)
NY, PARIS, MX = "America/New_York", "Europe/Paris", "America/Mexico_City"


@pytest.mark.parametrize(("text", "lang", "zone", "start", "precision"), [
    ("Can I book a cleaning on Friday?", "en", NY, "2026-12-04T00:00:00-05:00", "day"),
    ("Friday morning", "en", NY, "2026-12-04T09:00:00-05:00", "part_of_day"),
    ("next tuesday at 10:30", "en", NY, "2026-12-08T10:30:00-05:00", "time"),
    ("tomorrow afternoon", "en", NY, "2026-12-03T12:00:00-05:00", "part_of_day"),
    ("Dec 12 at 3pm", "en", NY, "2026-12-12T15:00:00-05:00", "time"),
    ("12/12", "en", NY, "2026-12-12T00:00:00-05:00", "day"),
    ("at 10:30", "en", NY, "2026-12-03T10:30:00-05:00", "time"),  # 10:30 is past today: tomorrow
    ("3pm", "en", NY, "2026-12-03T15:00:00-05:00", "time"),
    ("this evening", "en", NY, "2026-12-02T17:00:00-05:00", "part_of_day"),
    ("demain à 15h", "fr", PARIS, "2026-12-03T15:00:00+01:00", "time"),
    ("après-demain 15h30", "fr", PARIS, "2026-12-04T15:30:00+01:00", "time"),
    ("ce jeudi", "fr", PARIS, "2026-12-03T00:00:00+01:00", "day"),
    ("vendredi l'après-midi", "fr", PARIS, "2026-12-04T12:00:00+01:00", "part_of_day"),
    ("le matin", "fr", PARIS, "2026-12-03T09:00:00+01:00", "part_of_day"),
    ("12 décembre à 15 h", "fr", PARIS, "2026-12-12T15:00:00+01:00", "time"),
    ("el martes a las 10", "es", MX, "2026-12-08T10:00:00-06:00", "time"),
    ("mañana", "es", MX, "2026-12-03T00:00:00-06:00", "day"),
    ("mañana por la mañana", "es", MX, "2026-12-03T09:00:00-06:00", "part_of_day"),
    ("por la mañana", "es", MX, "2026-12-03T09:00:00-06:00", "part_of_day"),
    ("pasado mañana por la tarde", "es", MX, "2026-12-04T12:00:00-06:00", "part_of_day"),
    ("el mediodía", "es", MX, "2026-12-03T12:00:00-06:00", "part_of_day"),
    ("a las 3", "es", MX, "2026-12-03T15:00:00-06:00", "time"),
    ("el 12 de diciembre", "es", MX, "2026-12-12T00:00:00-06:00", "day"),
    ("el sábado", "es", MX, "2026-12-05T00:00:00-06:00", "day"),
])
def test_requested_time_is_read_in_the_zone(text, lang, zone, start, precision):
    rt = read_requested_time(text, lang, zone, NOW)
    assert rt is not None and rt.start.isoformat() == start and rt.precision == precision
    assert rt.start > NOW or (rt.end is not None and rt.end > NOW)
    assert RequestedTime.from_json(rt.as_json()) == rt


@pytest.mark.parametrize(("text", "lang"), [
    ("hello, do you take insurance?", "en"), ("I may come by", "en"), ("thanks!", "en"),
    ("Sunday is my favourite word in Sundaysburg", "fr"), ("los sabadoss", "es"), ("merci", "fr"),
    ("gracias", "es"), ("I have 3 kids", "en"), ("marsupial", "fr"),
])
def test_no_time_mentioned_is_none(text, lang):
    assert read_requested_time(text, lang, NY, NOW) is None


def test_a_weekday_equal_to_today_is_today_while_ahead_else_next_week():
    assert read_requested_time("Wednesday evening", "en", NY, NOW).start.day == 2  # 17:00 is ahead
    assert read_requested_time("Wednesday morning", "en", NY, NOW).start.day == 9  # morning is over
    assert read_requested_time("Wednesday", "en", NY, NOW).start.day == 9  # bare: "today" says today
    assert read_requested_time("next Wednesday at 5pm", "en", NY, NOW).start.day == 9


def test_a_date_already_past_is_next_years():
    assert read_requested_time("Nov 3", "en", NY, NOW).start.year == 2027


def test_dst_spring_forward_gap_moves_forward_and_offsets_follow_the_date():
    before = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)  # Saturday, the day before the US change
    rt = read_requested_time("tomorrow at 2:30am", "en", NY, before)
    assert rt is not None and rt.start.isoformat() == "2027-03-14T03:30:00-04:00"
    rt = read_requested_time("tomorrow", "en", NY, before)
    assert rt is not None and rt.end is not None
    assert (rt.end.astimezone(UTC) - rt.start.astimezone(UTC)).total_seconds() == 23 * 3600
    # Paris changes on 28 March 2027: a Monday appointment after it is in summer time.
    rt = read_requested_time("lundi à 10h", "fr", PARIS, datetime(2027, 3, 26, 12, 0, tzinfo=UTC))
    assert rt is not None and rt.start.isoformat() == "2027-03-29T10:00:00+02:00"
