"""bench/ingest.py sends the traffic its README promises: every known sender warmed up, first-time
senders used once, one keyword in N with each STOP from its own user, signed as the providers sign."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qsl

import pytest

from tests import support

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ingest.py"


@pytest.fixture(scope="module")
def ingest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ingest", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ingest"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("provider", ["twilio", "whatsapp"])
def test_plan_is_the_promised_traffic(ingest: ModuleType, provider: str) -> None:
    traffic = ingest.Traffic(ingest.PROVIDERS[provider], users=300, new_share=0.25, keyword_every=200)
    warmup = traffic.plan("warmup", 1000)
    closed = traffic.plan("closed", 20000)
    opened = traffic.plan("open", 4000)
    known = {ln.sender for ln in warmup}
    assert len(known) == 300 and all(ln.keyword is None for ln in warmup)
    measured = closed + opened
    new = [ln.sender for ln in measured if ln.new]
    assert len(new) == len(measured) // 4
    assert len(set(new)) == len(new) and not set(new) & known  # each first-time sender once, never warmed up
    assert all(ln.sender in known for ln in measured if not ln.new)
    keywords = [ln for ln in measured if ln.keyword]
    assert len(keywords) == len(measured) // 200
    stops = [ln.sender for ln in keywords if ln.keyword == "stop"]
    assert len(stops) == len(keywords) // 2 and len(set(stops)) == len(stops)
    # A START re-subscribes someone who opted out before it.
    stopped: set[str] = set()
    for ln in keywords:
        if ln.keyword == "stop":
            stopped.add(ln.sender)
        elif ln.keyword == "start":
            assert ln.sender in stopped
    # Seeded: another run sends the same.
    again = ingest.Traffic(ingest.PROVIDERS[provider], users=300, new_share=0.25, keyword_every=200)
    again.plan("warmup", 1000)
    assert again.plan("closed", 20000) == closed


def test_other_provider_senders_are_disjoint(ingest: ModuleType) -> None:
    senders: dict[str, set[str]] = {}
    for name in ("twilio", "whatsapp"):
        t = ingest.Traffic(ingest.PROVIDERS[name], users=500, new_share=0.25, keyword_every=0)
        lines = t.plan("warmup", 500) + t.plan("closed", 4000)
        senders[name] = {ln.sender.lstrip("+") for ln in lines}
    assert not senders["twilio"] & senders["whatsapp"]


def test_requests_are_signed_as_the_providers_sign(ingest: ModuleType, tmp_path: Path) -> None:
    for name, secret in (("twilio", support.AUTH_TOKEN), ("whatsapp", support.APP_SECRET)):
        provider = ingest.PROVIDERS[name]
        traffic = ingest.Traffic(provider, users=10, new_share=0.25, keyword_every=2)
        url = support.PUBLIC_BASE + provider.path
        payloads = ingest.Payloads(provider, url, secret, support.ACCOUNT_SID, support.PHONE_NUMBER_ID, traffic)
        payloads.write("closed", 8, [tmp_path / name])
        for i, line in enumerate((tmp_path / name).read_text().splitlines()):
            signature, body = line.split("\t", 1)
            if name == "twilio":
                pairs = parse_qsl(body, keep_blank_values=True)
                assert signature == support.twilio_sign(url, pairs)
                assert dict(pairs)["MessageSid"] == payloads.sid("closed", i)
            else:
                assert signature == support.meta_sign(body.encode())
                delivery = json.loads(body)
                value = delivery["entry"][0]["changes"][0]["value"]
                assert value["metadata"]["phone_number_id"] == support.PHONE_NUMBER_ID
                assert value["messages"][0]["id"] == payloads.sid("closed", i)
                assert value["messages"][0]["from"] == value["contacts"][0]["wa_id"]
