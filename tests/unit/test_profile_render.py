"""Profile templates: sandboxed, StrictUndefined, errors naming the field; follow-up speed delays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services import profile
from services.badinput import BadInput

P = profile.Profile(1, "Bright Smile", booking_link="https://example.com/book")


def test_a_template_reads_profile_fields_and_extras():
    assert P.render("x", "{{ business_name }}: {{ booking_link }}, {{ lead_name }}", lead_name="Ana") == (
        "Bright Smile: https://example.com/book, Ana")


@pytest.mark.parametrize("template", ["{{ nope }}", "{{ ''.__class__.__mro__ }}", "{% if %}",
                                      "{{ business_name.__init__.__globals__ }}"])
def test_a_bad_template_is_refused_naming_the_field(template):
    with pytest.raises(BadInput) as caught:
        P.render("faq[2].answer", template)
    assert caught.value.field == "faq[2].answer"


def test_the_default_handoff_is_in_the_language():
    assert "Bright Smile" in P.handoff_text("es") and P.handoff_text("es").startswith("Gracias")


def test_reply_at_follows_the_speed():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert profile.reply_at(profile.FollowupSpeed.INSTANT, now) == now
    assert profile.reply_at(profile.FollowupSpeed.WITHIN_1_HOUR, now) == now + timedelta(minutes=15)
    assert profile.reply_at(profile.FollowupSpeed.SAME_DAY, now) == now + timedelta(hours=2)
