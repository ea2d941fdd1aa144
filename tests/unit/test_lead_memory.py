"""The lead's memory: the strongest intent, what the lead wants, and a summary that keeps them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agents import memory
from agents.intent import Intent
from agents.when import read_requested_time


@pytest.mark.parametrize(("previous", "new", "kept"), [
    ("booking", Intent.HELP, Intent.BOOKING), ("booking", Intent.OTHER, Intent.BOOKING),
    ("booking", Intent.QUESTION, Intent.BOOKING), ("booking", Intent.COMPLAINT, Intent.BOOKING),
    ("question", Intent.BOOKING, Intent.BOOKING), ("booking", Intent.NOT_INTERESTED, Intent.NOT_INTERESTED),
    ("booking", Intent.OPT_OUT, Intent.OPT_OUT), ("booking", Intent.WRONG_NUMBER, Intent.WRONG_NUMBER),
    ("not_interested", Intent.HELP, Intent.NOT_INTERESTED), ("not_interested", Intent.BOOKING, Intent.BOOKING),
    ("opt_out", Intent.OPT_IN, Intent.OPT_IN), (None, Intent.HELP, Intent.HELP),
])
def test_strongest_commercial_intent_is_kept(previous, new, kept):
    assert memory.strongest(previous, new) is kept


@pytest.mark.parametrize(("text", "lang", "wants"), [
    ("Can I book a cleaning on Friday?", "en", "a cleaning"),
    ("I want to book an appointment for a teeth whitening tomorrow", "en", "a teeth whitening"),
    ("je voudrais prendre rendez-vous pour un détartrage demain", "fr", "un détartrage"),
    ("quisiera reservar una limpieza el martes", "es", "una limpieza"),
    ("Can I book an appointment?", "en", None),
    ("hello", "en", None),
    ("How much is a crown?", "en", "a crown"),
    ("how much is it?", "en", None),
])
def test_what_the_lead_wants(text, lang, wants):
    assert memory.wants_from(text, lang) == wants


def test_requested_time_is_rendered_in_the_leads_language():
    now = datetime(2026, 12, 2, 21, 0, tzinfo=UTC)
    rt = read_requested_time("vendredi matin", "fr", "Europe/Paris", now)
    assert rt is not None
    assert memory.render_time(rt, "en") == "Friday 4 December, morning"
    assert memory.render_time(rt, "fr") == "vendredi 4 décembre, matin"
    assert memory.render_time(rt, "es") == "viernes 4 de diciembre, por la mañana"


def test_help_after_a_booking_keeps_service_and_time_in_the_summary():
    now = datetime(2026, 12, 2, 21, 0, tzinfo=UTC)
    rt = read_requested_time("Friday morning", "en", "America/New_York", now)
    first = memory.merge(None, memory.Reading(Intent.BOOKING, rt, "a cleaning", None, "book a cleaning Friday",
                                              "low", "neutral", None), 1, "en")
    row = {"intent": first.intent.value, "requested_time": first.requested_time, "wants": first.wants,
           "open_question": first.open_question, "intent_message_id": first.intent_message_id}
    later = memory.merge(row, memory.Reading(Intent.HELP, None, None, None, "HELP", "low", "neutral", None), 2, "en")
    assert later.intent is Intent.BOOKING and later.intent_message_id == 1
    assert "a cleaning; Friday 4 December, morning" in later.ai_summary
    assert "Asked for help" not in later.ai_summary and "Latest: \u201cHELP\u201d" in later.ai_summary
