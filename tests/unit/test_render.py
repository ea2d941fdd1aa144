"""Rendering a queue row for its provider: segments and encoding stored, the provider's length limit
enforced before any call, templates chosen when the gates say so."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.channels import segments
from services.channels.base import ChannelKind
from services.orchestrator import render


def test_an_sms_body_is_counted_in_segments_and_encoding() -> None:
    assert render.render(ChannelKind.TWILIO_SMS, "a" * 160, None, None, None, use_template=False).segments == 1
    long = render.render(ChannelKind.TWILIO_SMS, "a" * 161, None, None, None, use_template=False)
    assert (long.segments, long.encoding, long.cost) == (2, "gsm7", 2)
    emoji = render.render(ChannelKind.TWILIO_SMS, "Table for two 🍷", None, None, None, use_template=False)
    assert (emoji.segments, emoji.encoding) == (1, "ucs2")
    extension = render.render(ChannelKind.TWILIO_SMS, "€" * 81, None, None, None, use_template=False)
    assert extension.segments == 2  # 162 septets: each € is ESC + code


def test_a_whatsapp_body_costs_one_message_and_has_no_sms_encoding() -> None:
    r = render.render(ChannelKind.WHATSAPP_CLOUD, "x" * 4000, None, None, None, use_template=False)
    assert (r.segments, r.encoding, r.cost, r.body) == (None, None, 1, "x" * 4000)


@pytest.mark.parametrize(("kind", "limit"), [(ChannelKind.TWILIO_SMS, 1600), (ChannelKind.TWILIO_WHATSAPP, 1600),
                                             (ChannelKind.WHATSAPP_CLOUD, 4096)])
def test_a_body_over_the_providers_limit_is_refused_with_the_numbers(kind: ChannelKind, limit: int) -> None:
    render.render(kind, "x" * limit, None, None, None, use_template=False)
    with pytest.raises(render.RenderError) as refused:
        render.render(kind, "x" * (limit + 1), None, None, None, use_template=False)
    assert refused.value.reason == f"body too long: {limit + 1} characters, the provider accepts at most {limit}"


def test_the_template_goes_when_chosen_or_when_there_is_no_body() -> None:
    chosen = render.render(ChannelKind.WHATSAPP_CLOUD, "hi", "order_update", "en_US", {"1": "Ana", "2": 3},
                           use_template=True)
    assert chosen.body is None and chosen.template is not None
    assert (chosen.template.name, chosen.template.language, chosen.template.variables) == \
        ("order_update", "en_US", {"1": "Ana", "2": "3"})
    only = render.render(ChannelKind.TWILIO_WHATSAPP, None, "HX" + "0" * 32, "en", {}, use_template=False)
    assert only.template is not None and only.cost == 1
    with pytest.raises(render.RenderError):
        render.render(ChannelKind.TWILIO_SMS, None, None, None, None, use_template=False)


@given(st.text(alphabet=st.sampled_from([*map(chr, range(0x20, 0x7F)), "\n", "\r", "€", "é", "ç"]), max_size=700))
def test_the_plain_ascii_fast_path_counts_as_the_segment_module_does(body: str) -> None:
    counted = segments.count(body)
    assert render.sms_segments(body) == (counted.segments, {"GSM-7": "gsm7", "UCS-2": "ucs2"}[counted.encoding])
