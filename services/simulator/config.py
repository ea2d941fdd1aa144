"""What the simulator knows (credentials, where Parley is) and how it behaves (latency, errors, limits).

Error rates are keyed `provider:code` ("twilio:21610", "meta:131047"); `parse_rate` reads the CLI's
`CODE=P`, where a bare code belongs to the provider that owns it. Besides provider codes, `timeout`
creates the message and then answers only after `hang_s` (a send whose answer is lost), and a failure
rate (`failure_rates`) accepts the message and then fails it through its status callback, the way
delivery errors (Twilio 30xxx, Meta 131026 after the fact) really arrive.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from services import badinput

TWILIO: Final = "twilio"
META: Final = "meta"
TIMEOUT: Final = "timeout"

# Graph's codes that are not six digits; every code of 100000 and above is Meta's too.
_META_SHORT_CODES: Final = frozenset({0, 1, 2, 3, 4, 10, 100, 190, 368, 80007, *range(200, 300)})


@dataclass(frozen=True, slots=True)
class MetaNumber:
    """A WhatsApp Cloud business number: who may send from it, and who signs its webhooks."""

    phone_number_id: str
    access_token: str
    app_secret: str
    display_phone_number: str = "15550000000"
    waba_id: str = "100000000000001"


@dataclass(slots=True)
class Knobs:
    """Behaviour, changed at run time through POST /sim/config."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rates: dict[str, float] = field(default_factory=dict)  # "twilio:21610" -> probability
    failure_rates: dict[str, float] = field(default_factory=dict)  # "twilio:30006" -> probability
    throughput: dict[str, float] = field(default_factory=dict)  # sender (From, MG..., phone_number_id) -> msg/s
    default_throughput: float | None = None  # per sender, for senders not named above; None: unlimited
    callbacks: bool = True
    callback_delay_ms: float = 5.0  # between a message's statuses
    hang_s: float = 30.0  # how long a `timeout` error holds the answer back


@dataclass(slots=True)
class SimConfig:
    # Twilio: account SID -> auth token (Basic auth, and the key of its webhook signatures).
    twilio_accounts: dict[str, str] = field(default_factory=dict)
    # API key SID -> (account SID, secret): the other accepted Basic auth.
    twilio_api_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Our business numbers (E.164) -> account SID: which account an inbound SMS to them belongs to.
    twilio_numbers: dict[str, str] = field(default_factory=dict)
    meta_numbers: dict[str, MetaNumber] = field(default_factory=dict)
    # Where Parley listens (webhooks are posted there) and the public URL Parley believes it has
    # (what signatures cover; the same unless a proxy stands between them).
    parley_url: str | None = None
    parley_public_url: str | None = None
    knobs: Knobs = field(default_factory=Knobs)
    seed: int | None = None

    def initial_knobs(self) -> Knobs:
        return copy.deepcopy(self.knobs)

    @property
    def public_url(self) -> str | None:
        return (self.parley_public_url or self.parley_url or "").rstrip("/") or None


def provider_of(code: str) -> str:
    if code.isdigit() and (int(code) >= 100000 or int(code) in _META_SHORT_CODES):
        return META
    return TWILIO


def rate_key(code: str) -> str:
    """`twilio:21610` as given, or a bare code with its provider; `timeout` bare means both (caller)."""
    provider, _, rest = code.partition(":")
    if rest:
        if provider not in (TWILIO, META) or not (rest.isdigit() or rest == TIMEOUT):
            raise badinput.BadInput("code", f"{code!r} is not twilio:<code>, meta:<code> or <provider>:timeout")
        return f"{provider}:{rest}"
    if not code.isdigit():
        raise badinput.BadInput("code", f"{code!r} is not an error code")
    return f"{provider_of(code)}:{code}"


def parse_rate(text: str) -> dict[str, float]:
    """`CODE=P` (`21610=0.1`, `meta:131047=0.5`, `timeout=0.01`) as {key: probability}."""
    code, sep, value = text.partition("=")
    if not sep:
        raise badinput.BadInput("rate", f"{text!r} is not CODE=P")
    try:
        probability = float(value)
    except ValueError:
        raise badinput.BadInput("rate", f"{value!r} is not a probability") from None
    if not 0.0 <= probability <= 1.0:
        raise badinput.BadInput("rate", f"{value!r} is not between 0 and 1")
    code = code.strip()
    if code == TIMEOUT:
        return {f"{TWILIO}:{TIMEOUT}": probability, f"{META}:{TIMEOUT}": probability}
    return {rate_key(code): probability}


class KnobsUpdate(BaseModel):
    """The body of POST /sim/config: any of the knobs; rates replace the whole table given."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float | None = Field(None, ge=0, le=600_000)
    latency_jitter_ms: float | None = Field(None, ge=0, le=600_000)
    error_rates: dict[str, float] | None = None
    failure_rates: dict[str, float] | None = None
    throughput: dict[str, float] | None = None
    default_throughput: float | None = Field(None, gt=0)
    unlimited: bool | None = None  # true clears default_throughput
    callbacks: bool | None = None
    callback_delay_ms: float | None = Field(None, ge=0, le=600_000)
    hang_s: float | None = Field(None, ge=0, le=3600)

    def apply(self, knobs: Knobs) -> None:
        for name in ("latency_ms", "latency_jitter_ms", "callbacks", "callback_delay_ms", "hang_s",
                     "default_throughput"):
            value = getattr(self, name)
            if value is not None:
                setattr(knobs, name, value)
        if self.unlimited:
            knobs.default_throughput = None
        if self.error_rates is not None:
            knobs.error_rates = _rates(self.error_rates, "error_rates")
        if self.failure_rates is not None:
            knobs.failure_rates = _rates(self.failure_rates, "failure_rates")
        if self.throughput is not None:
            for sender, rate in self.throughput.items():
                if not rate > 0:
                    raise badinput.BadInput(f"throughput.{sender}", "must be above 0")
            knobs.throughput = dict(self.throughput)


def _rates(given: dict[str, float], name: str) -> dict[str, float]:
    rates: dict[str, float] = {}
    for code, probability in given.items():
        if not 0.0 <= probability <= 1.0:
            raise badinput.BadInput(f"{name}.{code}", "must be between 0 and 1")
        rates.update(parse_rate(f"{code}={probability}"))
    return rates


def knobs_json(knobs: Knobs) -> dict[str, object]:
    return {
        "latency_ms": knobs.latency_ms, "latency_jitter_ms": knobs.latency_jitter_ms,
        "error_rates": knobs.error_rates, "failure_rates": knobs.failure_rates,
        "throughput": knobs.throughput, "default_throughput": knobs.default_throughput,
        "callbacks": knobs.callbacks, "callback_delay_ms": knobs.callback_delay_ms, "hang_s": knobs.hang_s,
    }
