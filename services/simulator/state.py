"""What the simulator holds: the messages it accepted (in order, for /sim/messages), counters, and the
per-sender token buckets of its throughput limits."""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from services.simulator.config import Knobs, SimConfig


def twilio_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


def wamid() -> str:
    return "wamid." + base64.b64encode(b"\x15\x02\x00\x11\x18\x12" + secrets.token_bytes(18)).decode()


def e164(address: str | None) -> str | None:
    """+15551230000 from "whatsapp:+15551230000", "15551230000" or "+15551230000"."""
    if not address:
        return None
    bare = address.strip().removeprefix("whatsapp:")
    digits = bare.lstrip("+")
    return "+" + digits if digits.isdigit() else bare


@dataclass(slots=True)
class SimMessage:
    seq: int
    provider: str  # "twilio" | "meta"
    channel: str  # "sms" | "whatsapp"
    sid: str
    to: str  # as the provider shows it: "+1...", "whatsapp:+1..."
    from_: str | None
    body: str | None
    status: str
    created_at: datetime
    account_sid: str | None = None
    messaging_service_sid: str | None = None
    content_sid: str | None = None
    content_variables: str | None = None
    template: dict[str, Any] | None = None
    status_callback: str | None = None
    phone_number_id: str | None = None
    callback_data: str | None = None  # Meta's biz_opaque_callback_data
    num_segments: int = 1
    error_code: int | None = None
    error_message: str | None = None
    sent_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def queue_id(self) -> int | None:
        """Parley's queue id, from StatusCallback's `q=` or Meta's "q:<id>"."""
        raw: str | None = None
        if self.callback_data and self.callback_data.startswith("q:"):
            raw = self.callback_data[2:]
        elif self.status_callback:
            values = parse_qs(urlsplit(self.status_callback).query).get("q")
            raw = values[0] if values else None
        return int(raw) if raw and raw.isdigit() else None

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "provider": self.provider, "channel": self.channel, "sid": self.sid,
            "to": e164(self.to), "from": e164(self.from_) if self.provider == "twilio" else self.phone_number_id,
            "body": self.body, "template": self.template or (
                {"content_sid": self.content_sid, "variables": self.content_variables} if self.content_sid else None),
            "status": self.status, "queue_id": self.queue_id, "error_code": self.error_code,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass
class Store:
    config: SimConfig
    knobs: Knobs = field(init=False)
    messages: list[SimMessage] = field(default_factory=list)
    by_sid: dict[str, SimMessage] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    queue_ids: Counter[int] = field(default_factory=Counter)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    rng: random.Random = field(init=False)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.knobs = self.config.initial_knobs()
        self.rng = random.Random(self.config.seed)

    def reset(self) -> None:
        self.knobs = self.config.initial_knobs()
        self.messages.clear()
        self.by_sid.clear()
        self.stats.clear()
        self.errors.clear()
        self.queue_ids.clear()
        self._buckets.clear()
        self.rng = random.Random(self.config.seed)

    async def add(self, message: SimMessage) -> None:
        self.messages.append(message)
        self.by_sid[message.sid] = message
        self.stats[f"{message.provider}_accepted"] += 1
        queue_id = message.queue_id
        if queue_id is not None:
            self.queue_ids[queue_id] += 1
            if self.queue_ids[queue_id] > 1:
                self.stats["duplicate_queue_ids"] += 1
        async with self._changed:
            self._changed.notify_all()

    def next_seq(self) -> int:
        return len(self.messages) + 1

    async def wait_for(self, after: int, to: str | None, wait_s: float) -> list[SimMessage]:
        """Messages after `after` (to `to`), waiting up to `wait_s` for the first one."""
        deadline = time.monotonic() + wait_s
        while True:
            found = [m for m in self.messages[max(after, 0):] if to is None or e164(m.to) == to]
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass

    def roll(self, rates: dict[str, float], provider: str) -> str | None:
        """The code (without its provider) one draw picks among `provider`'s rates, or None."""
        draw = self.rng.random()
        total = 0.0
        for key, probability in rates.items():
            owner, _, code = key.partition(":")
            if owner != provider:
                continue
            total += probability
            if draw < total:
                return code
        return None

    def take(self, sender: str) -> float:
        """Take one message from `sender`'s bucket: 0 when allowed, else the seconds until it would be."""
        rate = self.knobs.throughput.get(sender, self.knobs.default_throughput)
        if rate is None:
            return 0.0
        now = time.monotonic()
        burst = max(1.0, rate)
        bucket = self._buckets.get(sender)
        if bucket is None:
            bucket = self._buckets[sender] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    async def latency(self) -> None:
        knobs = self.knobs
        delay = knobs.latency_ms + (self.rng.uniform(-1, 1) * knobs.latency_jitter_ms if knobs.latency_jitter_ms else 0)
        if delay > 0:
            await asyncio.sleep(delay / 1000)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def stats_json(self) -> dict[str, Any]:
        by_status: dict[str, int] = defaultdict(int)
        for message in self.messages:
            by_status[f"{message.provider}:{message.status}"] += 1
        return {"messages": len(self.messages), "counters": dict(self.stats), "errors": dict(self.errors),
                "statuses": dict(by_status), "duplicate_queue_ids": self.stats["duplicate_queue_ids"]}


def now() -> datetime:
    return datetime.now(UTC)
