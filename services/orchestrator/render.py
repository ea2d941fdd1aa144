"""A queue row made ready to send: the body or template that goes, its segments and encoding, checked
against the provider's limit before the first provider call.

The segment count (3GPP TS 23.038, services/channels/segments.py) is stored on the row and is the
message's cost against its sender's throughput. A body the provider would refuse for its length fails
here, with a reason that says by how much, rather than being sent to be refused.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from services.channels import segments as segments_mod
from services.channels.base import ChannelKind
from services.channels.outbound import Template

# ../shared/reference/provider-outbound.md: Twilio's Messages API takes a Body of at most 1,600
# characters (SMS and WhatsApp alike); the WhatsApp Cloud API a text body of at most 4,096.
BODY_LIMIT = {ChannelKind.TWILIO_SMS: 1600, ChannelKind.TWILIO_WHATSAPP: 1600, ChannelKind.WHATSAPP_CLOUD: 4096}

# message_queue.encoding's CHECK
_ENCODING = {segments_mod.Encoding.GSM7: "gsm7", segments_mod.Encoding.UCS2: "ucs2"}

# Printable ASCII and \n that are one GSM-7 septet each and one grapheme each: a body made only of these
# is counted by division (the general count walks grapheme clusters, ~60 us a body). Not in it: the
# extension characters (two septets, never split), '`' (not GSM-7 at all) and '\r' (CR LF is one
# cluster, which must not straddle two segments).
_PLAIN_GSM7 = frozenset(c for c in map(chr, range(0x20, 0x7F)) if c in segments_mod.GSM7_BASIC) | {"\n"}
_SINGLE = segments_mod.SINGLE[segments_mod.Encoding.GSM7]
_PER_PART = segments_mod.PER_PART[segments_mod.Encoding.GSM7]


def sms_segments(body: str) -> tuple[int, str]:
    """(segments, encoding) of an SMS body, per services/channels/segments.py."""
    if body.isascii() and _PLAIN_GSM7.issuperset(body):
        return (1 if len(body) <= _SINGLE else math.ceil(len(body) / _PER_PART)), "gsm7"
    return _counted(body)


@functools.lru_cache(maxsize=4096)
def _counted(body: str) -> tuple[int, str]:
    # Cached: a broadcast, a HELP answer or a confirmation is the same body many times over.
    counted = segments_mod.count(body)
    return counted.segments, _ENCODING[counted.encoding]


@dataclass(frozen=True, slots=True)
class Rendered:
    body: str | None  # None when the template goes
    template: Template | None
    segments: int | None  # SMS segments of the body; None for a template or a WhatsApp message
    encoding: str | None  # 'gsm7' | 'ucs2' for an SMS body

    @property
    def cost(self) -> int:
        """Tokens of the sender's throughput bucket: segments for an SMS, one message otherwise."""
        return self.segments or 1


class RenderError(Exception):
    """The row cannot be sent as it is; `reason` is the verdict's (message_queue_verdicts.reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def render(kind: ChannelKind | str, body: str | None, template_name: str | None, template_language: str | None,
           template_variables: dict[str, Any] | None, *, use_template: bool) -> Rendered:
    """What goes out for a row: the template when the gates chose it (outside WhatsApp's window) or when
    the row has no body; the body otherwise."""
    kind = ChannelKind(kind)
    if use_template or body is None:
        if template_name is None:
            raise RenderError("no body and no template to send")
        variables = {str(k): str(v) for k, v in (template_variables or {}).items()}
        return Rendered(None, Template(template_name, template_language or "en", variables), None, None)
    limit = BODY_LIMIT[kind]
    if len(body) > limit:
        raise RenderError(f"body too long: {len(body)} characters, the provider accepts at most {limit}")
    if kind is ChannelKind.TWILIO_SMS:
        segments, encoding = sms_segments(body)
        return Rendered(body, None, segments, encoding)
    return Rendered(body, None, None, None)
