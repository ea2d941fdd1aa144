"""Retry-After parsing for the senders, and the simulator's `CODE=P` rates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services import badinput
from services.channels import retry_after
from services.simulator import config

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("header", "seconds"), [
    ("120", 120.0), (" 1.5 ", 1.5), ("0", 0.0), ("-3", 0.0), ("999999", retry_after.MAX_S),
    ("Wed, 02 Dec 2026 12:00:30 GMT", 30.0), ("Wed, 02 Dec 2026 11:59:00 GMT", 0.0),
    (None, None), ("soon", None), ("nan", None), ("inf", None), ("", None),
])
def test_retry_after_reads_seconds_and_http_dates(header: str | None, seconds: float | None) -> None:
    assert retry_after.seconds(header, NOW) == seconds


@pytest.mark.parametrize(("text", "rates"), [
    ("21610=0.1", {"twilio:21610": 0.1}),
    ("131047=1", {"meta:131047": 1.0}),
    ("80007=0.5", {"meta:80007": 0.5}),
    ("190=0.2", {"meta:190": 0.2}),
    ("20429=0", {"twilio:20429": 0.0}),
    ("meta:4=0.3", {"meta:4": 0.3}),
    ("twilio:timeout=0.01", {"twilio:timeout": 0.01}),
    ("timeout=0.01", {"twilio:timeout": 0.01, "meta:timeout": 0.01}),
])
def test_a_bare_code_belongs_to_the_provider_that_owns_it(text: str, rates: dict[str, float]) -> None:
    assert config.parse_rate(text) == rates


@pytest.mark.parametrize("text", ["21610", "21610=2", "21610=x", "fax:1=0.1", "abc=0.1", "meta:abc=0.1"])
def test_a_bad_rate_is_refused_naming_it(text: str) -> None:
    with pytest.raises(badinput.BadInput):
        config.parse_rate(text)
