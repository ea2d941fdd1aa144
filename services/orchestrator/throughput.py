"""Provider throughput: a token bucket per sender channel, in message segments per second.

With Redis, one Lua script (throughput.lua) keeps each channel's bucket for every process, timed by the
Redis server's clock so all processes agree. Without Redis, or while Redis is unreachable, each process
keeps its own buckets (same semantics); an outage is logged once, Redis is tried again every few
seconds, and a caller never sees an error: pacing degrades, sending does not stop. While falling back,
a process's buckets start empty, so the overshoot past the shared rate is at most that process's own
rate for the outage's length, with no extra burst.

A cost above the burst (a 10-segment SMS on a long code with a burst of 1) waits until the bucket is
full, then takes it and leaves the bucket in debt: the next message waits for the debt to be repaid.
Over time the rate holds, as with Twilio's per-sender queue ("a 3-segment message leaves every 3 s").
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.channels.base import ChannelKind

log = logging.getLogger("parley.orchestrator.throughput")

LUA = (Path(__file__).with_name("throughput.lua")).read_text()
KEY_PREFIX = "parley:throughput:"

# Defaults per sender, from ../shared/reference/provider-outbound.md. Segments (SMS) or messages
# (WhatsApp) per second; channels.send_rate overrides.
# §2.4 "Throughput and queueing": US/Canada long code 1 segment/s.
TWILIO_LONG_CODE = 1.0
# §2.4: US/Canada toll-free 3 segments/s (figure from Twilio's older FAQ, marked unverified there).
TWILIO_TOLL_FREE = 3.0
# §2.4: short code "over 100" segments/s.
TWILIO_SHORT_CODE = 100.0
# Alphanumeric sender IDs are not in the table; they are paced like a long code (1/s), the safe choice.
TWILIO_ALPHANUMERIC = 1.0
# §2.4: a WhatsApp sender on Twilio, 10 MPS text by default.
TWILIO_WHATSAPP = 10.0
# §3.7 "Throughput, pair rate, messaging limits, quality": 80 messages/s per number by default.
WHATSAPP_CLOUD = 80.0

# North American toll-free area codes (NANP: 800, 833, 844, 855, 866, 877, 888).
_TOLL_FREE = re.compile(r"\+1(800|833|844|855|866|877|888)[0-9]{7}")
_SHORT_CODE = re.compile(r"[0-9]{5,6}")
_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")


def default_rate(kind: ChannelKind | str, address: str) -> float:
    """The provider's default throughput for a sender (segments or messages per second)."""
    kind = ChannelKind(kind)
    if kind is ChannelKind.WHATSAPP_CLOUD:
        return WHATSAPP_CLOUD
    if kind is ChannelKind.TWILIO_WHATSAPP:
        return TWILIO_WHATSAPP
    address = (address or "").strip()
    if address.startswith("whatsapp:"):
        address = address[len("whatsapp:"):]
    if _TOLL_FREE.fullmatch(address):
        return TWILIO_TOLL_FREE
    if _SHORT_CODE.fullmatch(address):
        return TWILIO_SHORT_CODE
    if _ALPHANUMERIC.fullmatch(address):
        return TWILIO_ALPHANUMERIC
    # A long code, or '*' (a catch-all sending through its Messaging Service, whose pool we cannot see:
    # paced as one long code unless channels.send_rate says more).
    return TWILIO_LONG_CODE


def default_burst(rate: float) -> float:
    """One second's worth, and at least one segment (so a 1-segment message can ever go)."""
    return max(1.0, float(rate))


# As in throughput.lua: float dust is not worth a wait.
_EPSILON = 1e-9


@dataclass(slots=True)
class _Bucket:
    tokens: float
    ts: float
    rate: float = 1.0
    burst: float = 1.0


class LocalBuckets:
    """The in-process bucket, with the Lua script's semantics exactly."""

    def __init__(self, *, start_empty: bool = False, max_idle: int = 10_000) -> None:
        self._buckets: dict[int, _Bucket] = {}
        self._start_empty = start_empty
        self._max_idle = max_idle

    def take(self, channel_id: int, rate: float, burst: float, cost: float, now: float) -> float:
        bucket = self._buckets.get(channel_id)
        if bucket is None:
            bucket = self._buckets[channel_id] = _Bucket(0.0 if self._start_empty else burst, now)
        if now > bucket.ts:
            tokens = min(burst, bucket.tokens + (now - bucket.ts) * rate)
        else:
            tokens = min(burst, bucket.tokens)
        need = min(cost, burst)
        if tokens + _EPSILON < need:
            return (need - tokens) / rate
        bucket.tokens, bucket.ts = tokens - cost, max(now, bucket.ts)
        bucket.rate, bucket.burst = rate, burst
        if len(self._buckets) > self._max_idle:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        # A bucket that has refilled reads the same as a missing one (as the Redis key's expiry); with
        # buckets that start empty, a missing one is stricter, so pruning only ever slows a sender.
        for key in [k for k, b in self._buckets.items() if b.tokens + (now - b.ts) * b.rate >= b.burst]:
            del self._buckets[key]


class Throughput:
    """Per-channel pacing. `take` never raises for Redis trouble; it falls back in-process.

    clock: seconds, for tests that simulate time. When given, it is passed into the Lua script
    instead of Redis's TIME, and used by the in-process buckets (default: time.monotonic)."""

    def __init__(self, redis: Any | None = None, *, clock: Callable[[], float] | None = None,
                 retry_after_s: float = 3.0, redis_timeout_s: float = 0.5, key_prefix: str = KEY_PREFIX) -> None:
        self._redis = redis
        self._script = redis.register_script(LUA) if redis is not None else None
        self._clock = clock
        self._retry_after_s = retry_after_s
        self._redis_timeout_s = redis_timeout_s
        self._key_prefix = key_prefix
        self._local = LocalBuckets()  # no Redis configured
        self._fallback = LocalBuckets(start_empty=True)  # Redis configured but unreachable
        self._down_since: float | None = None  # monotonic, while in an outage
        self._retry_at = 0.0

    @property
    def degraded(self) -> bool:
        """Whether Redis is configured but the last attempt could not reach it."""
        return self._down_since is not None

    async def take(self, channel_id: int, rate: float | Decimal, burst: float | Decimal, cost: int) -> float:
        """Take `cost` tokens from the channel's bucket: 0.0 when taken, else the seconds until they
        will be there (nothing taken then). A cost of 0 is always taken."""
        rate, burst = float(rate), float(burst)  # channels.send_rate/send_burst arrive as Decimal (numeric)
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate and burst must be positive (rate={rate}, burst={burst})")
        if cost < 0:
            raise ValueError(f"cost must not be negative ({cost})")
        if cost == 0:
            return 0.0
        if self._script is None:
            return self._local.take(channel_id, rate, burst, cost, self._now())
        mono = time.monotonic()
        if self._down_since is not None and mono < self._retry_at:
            return self._fallback.take(channel_id, rate, burst, cost, self._now())
        try:
            now_arg = "" if self._clock is None else repr(float(self._clock()))
            async with asyncio.timeout(self._redis_timeout_s):
                raw = await self._script(keys=[self._key_prefix + str(channel_id)],
                                         args=[repr(float(rate)), repr(float(burst)), str(int(cost)), now_arg])
            wait = float(raw.decode() if isinstance(raw, bytes) else raw)
        except Exception as exc:  # noqa: BLE001 - any Redis failure (down, timeout, OOM...): pace in-process
            if self._down_since is None:
                self._down_since = mono
                log.warning("redis unavailable: pacing sends in-process until it is back",
                            extra={"channel_id": channel_id, "error": type(exc).__name__})
            self._retry_at = mono + self._retry_after_s
            return self._fallback.take(channel_id, rate, burst, cost, self._now())
        if self._down_since is not None:
            log.info("redis back: pacing sends through it again",
                     extra={"outage_s": round(mono - self._down_since, 1)})
            self._down_since = None
            self._fallback = LocalBuckets(start_empty=True)
        return max(0.0, wait)

    def _now(self) -> float:
        return self._clock() if self._clock is not None else time.monotonic()
