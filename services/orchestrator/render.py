"""A queue row made ready to send: the body or template that goes, its segments and encoding, checked
against the provider's limit before the first provider call.

The segment count (3GPP TS 23.038, services/channels/segments.py) is stored on the row and is the
message's cost against its sender's throughput. A body the provider would refuse for its length fails
here, with a reason that says by how much, rather than being sent to be refused.
"""

from __future__ import annotations

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
        counted = segments_mod.count(body)
        return Rendered(body, None, counted.segments, _ENCODING[counted.encoding])
    return Rendered(body, None, None, None)
