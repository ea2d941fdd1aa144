"""The dispatcher's gates 1-6: one case per verdict and per exemption, then properties over random rows."""

from __future__ import annotations

import dataclasses
from collections import Counter as Tally
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.orchestrator import budget, gates, quiet_hours
from services.orchestrator.policy import Policy

NOW = datetime(2026, 6, 1, 18, 5, tzinfo=UTC)  # 14:05 in New York, 20:05 in Paris
POLICY = Policy(quiet_hours=quiet_hours.parse("21:00-08:00"), time_zone="UTC", hourly_limit=2, daily_limit=5,
                min_spacing_s=30.0, reply_limit_hourly=10, active_user_minutes=10.0)
NY_NIGHT = datetime(2026, 6, 2, 3, 30, tzinfo=UTC)  # 23:30 in New York
NY_MORNING = datetime(2026, 6, 2, 12, 0, tzinfo=UTC)  # 08:00 in New York
HOUR = datetime(2026, 6, 1, 18, tzinfo=UTC)
DAY = datetime(2026, 6, 1, 4, tzinfo=UTC)


def candidate(**overrides: Any) -> gates.Candidate:
    fields: dict[str, Any] = dict(
        queue_id=1, klass="marketing", reason="broadcast", status="queued", created_at=NOW - timedelta(minutes=5),
        expires_at=None, has_template=False, channel_kind="twilio_sms", consent_state="opted_in",
        time_zone="America/New_York", phone="+12125551234", quiet_hours_enabled=True,
        last_inbound_at=NOW - timedelta(minutes=3), newer_reply_queued=False, counters=budget.Counters())
    fields.update(overrides)
    return gates.Candidate(**fields)


def reply(**overrides: Any) -> gates.Candidate:
    return candidate(**{"klass": "reply", "reason": "agent_reply", **overrides})


def compliance(**overrides: Any) -> gates.Candidate:
    return candidate(**{"klass": "compliance", "reason": "opt_out_confirmation", **overrides})


FULL_HOUR = budget.Counters(hour_start=HOUR, hour_count=2, day_start=DAY, day_count=2,
                            last_proactive_at=NOW - timedelta(minutes=20))
FULL_DAY = budget.Counters(hour_start=HOUR, hour_count=0, day_start=DAY, day_count=5,
                           last_proactive_at=NOW - timedelta(hours=2))
REPLIES_USED = budget.Counters(reply_hour_start=HOUR, reply_hour_count=10)
JUST_SENT = budget.Counters(hour_start=HOUR, hour_count=1, day_start=DAY, day_count=1,
                            last_proactive_at=NOW - timedelta(seconds=10))


# (case, candidate, now, action, gate, reason fragment, until)
CASES = [
    ("sends when every gate passes", candidate(), NOW, "send", "all", "all gates passed", None),
    # 1. opt-out
    ("suppresses an opted-out user's message", candidate(consent_state="opted_out"), NOW,
     "suppress", "opt_out", "opted_out", None),
    ("sends the opt-out confirmation to an opted-out user",
     compliance(consent_state="opted_out"), NOW, "send", "all", "", None),
    ("suppresses an opt-in confirmation once the user opted out again",
     compliance(reason="opt_in_confirmation", consent_state="opted_out"), NOW, "suppress", "opt_out", "", None),
    ("suppresses an opted-out user's reply", reply(consent_state="opted_out"), NOW, "suppress", "opt_out", "", None),
    # 2. expiry and staleness
    ("expires a row past expires_at", candidate(expires_at=NOW - timedelta(seconds=1)), NOW,
     "expire", "expiry", "expired", None),
    ("expires even a compliance row", compliance(expires_at=NOW - timedelta(minutes=1)), NOW,
     "expire", "expiry", "", None),
    ("sends a row at its expires_at exactly", candidate(expires_at=NOW), NOW, "send", "all", "", None),
    ("supersedes a reply the user wrote past when a newer reply is queued",
     reply(created_at=NOW - timedelta(minutes=5), last_inbound_at=NOW - timedelta(minutes=1),
           newer_reply_queued=True), NOW, "supersede", "staleness", "newer reply", None),
    ("sends a reply the user wrote past when no newer reply is queued",
     reply(created_at=NOW - timedelta(minutes=5), last_inbound_at=NOW - timedelta(minutes=1)), NOW,
     "send", "all", "", None),
    ("sends a reply when the user has not written since, even with a newer reply queued",
     reply(created_at=NOW - timedelta(minutes=1), last_inbound_at=NOW - timedelta(minutes=2),
           newer_reply_queued=True), NOW, "send", "all", "", None),
    ("never supersedes a marketing message",
     candidate(last_inbound_at=NOW - timedelta(minutes=1), newer_reply_queued=True), NOW, "send", "all", "", None),
    # 3. WhatsApp's window
    ("sends free-form inside WhatsApp's window", candidate(channel_kind="whatsapp_cloud"), NOW,
     "send", "all", "", None),
    ("sends the template outside the window when the row has one",
     candidate(channel_kind="twilio_whatsapp", has_template=True, last_inbound_at=NOW - timedelta(hours=25)), NOW,
     "send", "all", "template", None),
    ("fails outside the window without a template",
     candidate(channel_kind="whatsapp_cloud", last_inbound_at=NOW - timedelta(hours=24)), NOW,
     "fail", "window", "window_closed", None),
    ("fails a WhatsApp message to someone who never wrote, without a template",
     candidate(channel_kind="whatsapp_cloud", last_inbound_at=None), NOW, "fail", "window", "window_closed", None),
    ("fails even a compliance message outside the window without a template",
     compliance(channel_kind="twilio_whatsapp", last_inbound_at=NOW - timedelta(days=3)), NOW,
     "fail", "window", "window_closed", None),
    ("has no window on SMS", candidate(last_inbound_at=NOW - timedelta(days=30)), NOW, "send", "all", "", None),
    # 4. quiet hours
    ("defers inside quiet hours to the window's end", candidate(), NY_NIGHT, "defer", "quiet_hours",
     "local 23:30 America/New_York, inside quiet hours 21:00-08:00", NY_MORNING),
    ("does not hold compliance in quiet hours", compliance(), NY_NIGHT, "send", "all", "", None),
    ("does not hold a user whose quiet hours are off", candidate(quiet_hours_enabled=False), NY_NIGHT,
     "send", "all", "", None),
    ("does not hold a reply to a user who wrote within active_user_minutes",
     reply(last_inbound_at=NY_NIGHT - timedelta(minutes=9), created_at=NY_NIGHT - timedelta(minutes=10)), NY_NIGHT,
     "send", "all", "", None),
    ("holds a reply to a user who wrote longer ago",
     reply(last_inbound_at=NY_NIGHT - timedelta(minutes=11), created_at=NY_NIGHT - timedelta(minutes=12)), NY_NIGHT,
     "defer", "quiet_hours", "", NY_MORNING),
    ("reads the zone from the number when the user has none",
     candidate(time_zone=None, phone="+33612345678"), NOW + timedelta(hours=2), "defer", "quiet_hours",
     "Europe/Paris", datetime(2026, 6, 2, 6, tzinfo=UTC)),
    ("falls back from an unknown stored zone", candidate(time_zone="Mars/Olympus", phone="+12125551234"), NY_NIGHT,
     "defer", "quiet_hours", "America/New_York", NY_MORNING),
    # 5. budget
    ("defers a proactive message over the hourly limit to the next local hour",
     candidate(counters=FULL_HOUR), NOW, "defer", "budget", "2 of 2 this hour", HOUR + timedelta(hours=1)),
    ("defers over the daily limit to the next local day",
     candidate(klass="transactional", reason="operator", counters=FULL_DAY), NOW, "defer", "budget", "5 of 5 today",
     DAY + timedelta(days=1)),
    ("lets a user's own larger limit through", candidate(counters=dataclasses.replace(FULL_HOUR, hourly_limit=3)),
     NOW, "send", "all", "", None),
    ("defers a reply over the loop guard to the next hour", reply(counters=REPLIES_USED), NOW,
     "defer", "budget", "loop guard", HOUR + timedelta(hours=1)),
    ("does not count replies against the proactive budget", reply(counters=FULL_DAY), NOW, "send", "all", "", None),
    ("exempts compliance from budgets", compliance(counters=dataclasses.replace(FULL_DAY, **{
        "reply_hour_start": HOUR, "reply_hour_count": 10})), NOW, "send", "all", "", None),
    # 6. spacing
    ("defers a proactive message sent too soon after the last", candidate(counters=JUST_SENT), NOW,
     "defer", "spacing", "10 s ago", NOW + timedelta(seconds=20)),
    ("does not space replies", reply(counters=JUST_SENT), NOW, "send", "all", "", None),
    # order: the first gate that does not pass decides
    ("opt-out comes before expiry",
     candidate(consent_state="opted_out", expires_at=NOW - timedelta(days=1)), NOW, "suppress", "opt_out", "", None),
    ("expiry comes before the window",
     candidate(channel_kind="whatsapp_cloud", last_inbound_at=None, expires_at=NOW - timedelta(days=1)), NOW,
     "expire", "expiry", "", None),
    ("the window comes before quiet hours",
     candidate(channel_kind="whatsapp_cloud", last_inbound_at=None), NY_NIGHT, "fail", "window", "", None),
    ("quiet hours come before the budget", candidate(counters=FULL_DAY), NY_NIGHT, "defer", "quiet_hours", "",
     NY_MORNING),
    ("the budget comes before spacing",
     candidate(counters=dataclasses.replace(JUST_SENT, hour_count=2)), NOW, "defer", "budget", "",
     HOUR + timedelta(hours=1)),
]


@pytest.mark.parametrize(("case", "c", "now", "action", "gate", "fragment", "until"), CASES, ids=[c[0] for c in CASES])
def test_gate_verdicts(case, c, now, action, gate, fragment, until):
    decision = gates.evaluate(c, POLICY, now)
    assert (decision.action, decision.gate) == (action, gate), decision
    assert fragment in decision.reason
    assert decision.until == until
    assert 1 <= len(decision.reason) <= 200
    order = ["opt_out", "expiry", "staleness", "window", "quiet_hours", "budget", "spacing"]
    expected_passed = order if gate == "all" else order[: order.index(gate)]
    assert list(decision.passed) == expected_passed
    assert all(reason for reason in decision.passed.values())
    if action == "send":
        assert decision.counters == budget.charge(c.counters, c.klass, now, decision_zone(decision))
    else:
        assert decision.counters == c.counters


def decision_zone(decision: gates.Decision):  # type: ignore[no-untyped-def]
    from zoneinfo import ZoneInfo

    return ZoneInfo(decision.zone)


def test_passed_reasons_name_the_numbers():
    c = candidate(channel_kind="whatsapp_cloud",
                  counters=budget.Counters(hour_start=HOUR, hour_count=1, day_start=DAY, day_count=3,
                                           last_proactive_at=NOW - timedelta(minutes=20)))
    decision = gates.evaluate(c, POLICY, NOW)
    assert decision.action == "send" and decision.verdict == "pass" and decision.status == "sending"
    assert decision.passed["window"] == "inside WhatsApp's window: last inbound 3 min ago"
    assert decision.passed["quiet_hours"] == "local 14:05 America/New_York, outside quiet hours 21:00-08:00"
    assert decision.passed["budget"].startswith("2 of 2 this hour, 4 of 5 today")
    assert decision.passed["spacing"] == "last proactive message 20 min ago (minimum 30 s)"
    assert decision.passed["opt_out"] == "opted in"
    assert decision.zone == "America/New_York"


def test_the_template_decision_says_so():
    c = candidate(channel_kind="whatsapp_cloud", has_template=True, last_inbound_at=NOW - timedelta(days=2))
    decision = gates.evaluate(c, POLICY, NOW)
    assert decision.use_template and decision.action == "send"
    assert decision.passed["window"] == "outside WhatsApp's 24-hour window (last inbound 2 d ago): sending the template"


def test_a_deferral_carries_the_candidates_counters_uncharged():
    decision = gates.evaluate(candidate(counters=FULL_HOUR), POLICY, NOW)
    assert decision.action == "defer" and decision.counters == FULL_HOUR and decision.verdict == "defer"
    assert decision.status == "deferred"


def test_no_quiet_hours_for_the_tenant():
    decision = gates.evaluate(candidate(), dataclasses.replace(POLICY, quiet_hours=None), NY_NIGHT)
    assert decision.action == "send"
    assert decision.passed["quiet_hours"] == "no quiet hours for this tenant"


def test_a_naive_now_is_refused():
    with pytest.raises(ValueError):
        gates.evaluate(candidate(), POLICY, NOW.replace(tzinfo=None))


def test_an_unknown_class_is_refused():
    with pytest.raises(ValueError):
        gates.evaluate(candidate(klass="spam"), POLICY, NOW)


# --- properties

ZONES = ["America/New_York", "Europe/Paris", "Asia/Kolkata", "UTC", "Australia/Lord_Howe", None]
DST = [datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC),
       datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC), NOW]
moments = st.tuples(st.sampled_from(DST), st.integers(-36 * 3600, 36 * 3600)).map(
    lambda p: p[0] + timedelta(seconds=p[1]))
windows = st.one_of(st.none(), st.sampled_from(["21:00-08:00", "22:00-02:30", "21:00-01:30", "12:00-14:00",
                                                "00:00-06:00", "23:00-23:30"]).map(quiet_hours.parse))
policies = st.builds(
    Policy, quiet_hours=windows, time_zone=st.sampled_from(["UTC", "America/New_York", "Europe/Paris"]),
    hourly_limit=st.integers(1, 4), daily_limit=st.integers(1, 8), min_spacing_s=st.sampled_from([0.0, 30.0, 600.0]),
    reply_limit_hourly=st.integers(1, 5), active_user_minutes=st.sampled_from([0.0, 10.0]))


@st.composite
def candidates(draw: st.DrawFn, now: datetime) -> gates.Candidate:
    klass = draw(st.sampled_from(["compliance", "reply", "transactional", "marketing"]))
    reason = {"compliance": draw(st.sampled_from(["opt_out_confirmation", "opt_in_confirmation"])),
              "reply": draw(st.sampled_from(["agent_reply", "help"])),
              "transactional": "operator", "marketing": draw(st.sampled_from(["broadcast", "sequence"]))}[klass]
    last_inbound = draw(st.one_of(st.none(), st.integers(0, 3 * 86400).map(lambda s: now - timedelta(seconds=s))))
    hour_start, day_start = draw(st.sampled_from([(None, None),
                                                  (now - timedelta(minutes=30), now - timedelta(hours=5))]))
    counters = budget.Counters(
        hourly_limit=draw(st.one_of(st.none(), st.integers(1, 4))),
        daily_limit=draw(st.one_of(st.none(), st.integers(1, 8))),
        hour_start=hour_start, hour_count=draw(st.integers(0, 6)), day_start=day_start,
        day_count=draw(st.integers(0, 10)),
        reply_hour_start=hour_start, reply_hour_count=draw(st.integers(0, 6)),
        last_proactive_at=draw(st.one_of(st.none(), st.integers(0, 3600).map(lambda s: now - timedelta(seconds=s)))))
    return gates.Candidate(
        queue_id=1, klass=klass, reason=reason, status="queued",
        created_at=now - timedelta(seconds=draw(st.integers(0, 86400))), expires_at=None,
        has_template=draw(st.booleans()), channel_kind=draw(st.sampled_from(["twilio_sms", "twilio_whatsapp",
                                                                              "whatsapp_cloud"])),
        consent_state=draw(st.sampled_from(["opted_in", "unknown", "opted_out"])),
        time_zone=draw(st.sampled_from(ZONES)),
        phone=draw(st.sampled_from(["+12125551234", "+33612345678", None])),
        quiet_hours_enabled=draw(st.booleans()), last_inbound_at=last_inbound,
        newer_reply_queued=draw(st.booleans()), counters=counters)


@st.composite
def situations(draw: st.DrawFn) -> tuple[gates.Candidate, Policy, datetime]:
    now = draw(moments)
    return draw(candidates(now)), draw(policies), now


@settings(max_examples=800, deadline=None)
@given(situations())
def test_a_deferral_is_until_a_future_instant_at_which_that_gate_passes(situation):
    c, policy, now = situation
    decision = gates.evaluate(c, policy, now)
    if decision.action != "defer":
        assert decision.until is None
        return
    assert decision.until is not None and decision.until > now
    # Re-evaluating at `until` with the same row passes the gate that deferred it. The gates before it
    # may decide otherwise by then (WhatsApp's window closed meanwhile; the next local day begins in
    # quiet hours), so quiet hours are switched off when a later gate is the one looked at.
    later = decision.gate.value in ("budget", "spacing")
    again = gates.evaluate(dataclasses.replace(c, quiet_hours_enabled=False) if later else c, policy, decision.until)
    assert decision.gate.value in again.passed or again.gate.value == "window", (decision, again)


@settings(max_examples=500, deadline=None)
@given(situations())
def test_compliance_is_never_held_by_quiet_hours_budget_or_spacing(situation):
    c, policy, now = situation
    c = dataclasses.replace(c, klass="compliance", reason="opt_out_confirmation")
    decision = gates.evaluate(c, policy, now)
    assert decision.action != "defer"
    assert decision.gate.value not in ("quiet_hours", "budget", "spacing")


@settings(max_examples=300, deadline=None)
@given(situations())
def test_an_opted_out_user_only_ever_gets_the_opt_out_confirmation(situation):
    c, policy, now = situation
    c = dataclasses.replace(c, consent_state="opted_out")
    decision = gates.evaluate(c, policy, now)
    if c.reason != "opt_out_confirmation":
        assert (decision.action, decision.gate, decision.reason) == ("suppress", "opt_out", "opted_out")
    else:
        assert decision.action != "suppress"


@settings(max_examples=150, deadline=None)
@given(zone=st.sampled_from(["America/New_York", "Europe/Paris"]), start=st.sampled_from(DST),
       policy=policies, klass=st.sampled_from(["marketing", "transactional", "reply"]),
       steps=st.lists(st.integers(1, 20 * 60), min_size=1, max_size=150))
def test_a_dispatcher_loop_never_sends_more_than_the_budget_in_a_local_hour_or_day(zone, start, policy, klass, steps):
    """Evaluate-and-charge as the dispatcher does, over a day and more around DST changes."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    c = candidate(klass=klass, reason="agent_reply" if klass == "reply" else "operator", time_zone=zone,
                  last_inbound_at=None, created_at=start - timedelta(days=1))
    now = start - timedelta(hours=12)
    per_hour: Tally[tuple[object, ...]] = Tally()
    per_day: Tally[object] = Tally()
    sent_at: list[datetime] = []
    for step in steps:
        now += timedelta(seconds=step)
        decision = gates.evaluate(c, policy, now)
        if decision.action == "send":
            local = now.astimezone(tz)
            per_hour[(local.date(), local.hour, local.utcoffset())] += 1
            per_day[local.date()] += 1
            sent_at.append(now)
            c = dataclasses.replace(c, counters=decision.counters)
        else:
            assert decision.action == "defer"
    limit_hour = policy.reply_limit_hourly if klass == "reply" else policy.hourly_limit
    assert all(n <= limit_hour for n in per_hour.values())
    if klass != "reply":
        assert all(n <= policy.daily_limit for n in per_day.values())
        assert all(b - a >= timedelta(seconds=policy.min_spacing_s) for a, b in zip(sent_at, sent_at[1:], strict=False))
