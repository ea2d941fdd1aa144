"""A tenant's effective outbound policy, and the zone a recipient's local time is read in."""

from __future__ import annotations

import logging
import types

import pydantic
import pytest

from services.badinput import BadInput
from services.orchestrator import policy
from services.orchestrator import quiet_hours as qh
from tests import support


@pytest.fixture
def settings():  # type: ignore[no-untyped-def]
    return support.make_settings("postgresql://unused/none", PARLEY_QUIET_HOURS="22:00-07:30",
                                 PARLEY_TIME_ZONE="Europe/Paris", PARLEY_BUDGET_HOURLY=3, PARLEY_BUDGET_DAILY=9,
                                 PARLEY_MIN_SPACING_S=45, PARLEY_REPLY_LIMIT_HOURLY=12,
                                 PARLEY_ACTIVE_USER_MINUTES=7)


def test_null_tenant_columns_take_the_settings(settings):
    effective = policy.tenant_policy(settings, {"id": 1, "time_zone": None, "quiet_hours": None,
                                                "budget_hourly": None, "budget_daily": None})
    assert effective == policy.Policy(quiet_hours=qh.parse("22:00-07:30"), time_zone="Europe/Paris",
                                      hourly_limit=3, daily_limit=9, min_spacing_s=45.0, reply_limit_hourly=12,
                                      active_user_minutes=7.0)
    assert policy.tenant_policy(settings, {}) == effective
    assert policy.tenant_policy(settings) == effective


def test_tenant_columns_override_the_settings(settings):
    effective = policy.tenant_policy(settings, {"id": 1, "time_zone": "America/Chicago", "quiet_hours": "12:00-14:00",
                                                "budget_hourly": 0, "budget_daily": 40})
    assert (effective.time_zone, str(effective.quiet_hours)) == ("America/Chicago", "12:00-14:00")
    assert (effective.hourly_limit, effective.daily_limit) == (0, 40)
    assert effective.zone.key == "America/Chicago"


def test_empty_tenant_quiet_hours_means_none(settings):
    assert policy.tenant_policy(settings, {"quiet_hours": ""}).quiet_hours is None


def test_empty_settings_quiet_hours_means_none():
    assert policy.tenant_policy(support.make_settings("postgresql://unused/none", PARLEY_QUIET_HOURS="")
                                ).quiet_hours is None


@pytest.mark.parametrize("stored", ["Mars/Olympus", "America", "../../etc/passwd", "", "x" * 300, "Europe/Paris\x00"])
def test_an_unusable_tenant_zone_falls_back_to_the_settings(settings, stored, caplog):
    with caplog.at_level(logging.WARNING, logger="parley.orchestrator.policy"):
        effective = policy.tenant_policy(settings, {"id": 42, "time_zone": stored})
    assert effective.time_zone == "Europe/Paris"


def test_an_unusable_tenant_value_is_logged_once(settings, caplog):
    with caplog.at_level(logging.WARNING, logger="parley.orchestrator.policy"):
        for _ in range(5):
            policy.tenant_policy(settings, {"id": 4242, "time_zone": "Nowhere/Special", "quiet_hours": "08:00-08:00"})
    assert len([r for r in caplog.records if r.name == "parley.orchestrator.policy"]) == 2


def test_a_tenant_window_that_starts_when_it_ends_falls_back_to_the_settings(settings):
    assert str(policy.tenant_policy(settings, {"id": 7, "quiet_hours": "08:00-08:00"}).quiet_hours) == "22:00-07:30"


def test_unusable_settings_quiet_hours_are_refused():
    # "08:00-08:00" names no window: settings refuse it at start-up rather than guess all day or none.
    with pytest.raises(pydantic.ValidationError, match="same time"):
        support.make_settings("postgresql://unused/none", PARLEY_QUIET_HOURS="08:00-08:00")


def test_a_stored_window_that_starts_where_it_ends_is_refused_by_the_policy(settings):
    # A tenant row can hold what settings would refuse; the policy refuses it too.
    stale = types.SimpleNamespace(**{**settings.model_dump(), "quiet_hours": "08:00-08:00"})
    with pytest.raises(BadInput):
        policy.tenant_policy(stale)


def test_a_settings_zone_this_machine_does_not_know_reads_as_utc(settings):
    # Settings refuse such a zone at start-up; a zone dropped from a later tzdata must not break claims.
    stale = types.SimpleNamespace(**{**settings.model_dump(), "time_zone": "Nope/Nope"})
    assert policy.tenant_policy(stale).time_zone == "UTC"


@pytest.mark.parametrize(("user_zone", "phone", "tenant_zone", "expected"), [
    ("Asia/Tokyo", "+12125551234", "Europe/Paris", "Asia/Tokyo"),  # the user's own first
    (None, "+12125551234", "Europe/Paris", "America/New_York"),  # then the number's
    ("", "+33612345678", "UTC", "Europe/Paris"),
    ("Not/AZone", "+33612345678", "UTC", "Europe/Paris"),  # an unknown stored name falls through
    (None, "+14155550123", "Europe/Paris", "America/Los_Angeles"),
    (None, "+15551230000", "Europe/Paris", "Europe/Paris"),  # no single zone for the number: the tenant's
    (None, "+79161234567", "Europe/Paris", "Europe/Paris"),  # Russia spans many zones
    (None, None, "America/Sao_Paulo", "America/Sao_Paulo"),
    (None, "not a number", "America/Sao_Paulo", "America/Sao_Paulo"),
])
def test_recipient_zone(user_zone, phone, tenant_zone, expected, settings):
    effective = policy.tenant_policy(settings, {"time_zone": tenant_zone})
    assert policy.recipient_zone(user_zone, phone, effective).key == expected


def test_message_classes_match_the_check_constraint():
    # db/migrations/0013_outbound.sql: message_queue_class_check
    assert {c.value for c in policy.MessageClass} == {"compliance", "reply", "transactional", "marketing"}
