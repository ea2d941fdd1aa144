"""The per-channel token bucket: the Redis script shared by processes, the in-process bucket, and the
fall-back between them when Redis goes away.

Time is simulated: each Throughput gets a clock the test moves, which the Lua script takes instead of
Redis's TIME, so counts are exact and nothing depends on how fast this machine is.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.orchestrator import throughput


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    yield redis
    await redis.aclose()


@pytest.fixture
def prefix() -> str:
    # The session's Redis is shared by every test (and maybe every helper): keys of our own.
    return f"test:throughput:{uuid.uuid4().hex}:"


async def _drive(buckets: list[throughput.Throughput], clock: Clock, *, channel: int, rate: float, burst: float,
                 seconds: float, step: float, cost: int = 1, tries: int = 3) -> int:
    """Every `step` of simulated time, each bucket tries `tries` takes; the tokens taken in total."""
    taken = 0
    start = clock.now
    for i in range(round(seconds / step) + 1):
        clock.now = start + i * step
        for bucket in buckets:
            for _ in range(tries):
                if await bucket.take(channel, rate, burst, cost) == 0.0:
                    taken += cost
    return taken


async def test_two_processes_sharing_redis_hold_the_channel_rate_together(client, prefix, redis_url):
    clock = Clock()
    a = throughput.Throughput(client, clock=clock, key_prefix=prefix)
    other = aioredis.from_url(redis_url)  # a client of its own, as another process has
    try:
        b = throughput.Throughput(other, clock=clock, key_prefix=prefix)
        taken = await _drive([a, b], clock, channel=7, rate=5.0, burst=5.0, seconds=60.0, step=0.1)
    finally:
        await other.aclose()
    # 5 a second for 60 s plus the initial burst: exactly that, whichever process asks.
    assert taken == 5 * 60 + 5
    assert not a.degraded and not b.degraded


async def test_one_process_alone_gets_no_more_than_the_rate(client, prefix):
    clock = Clock()
    alone = throughput.Throughput(client, clock=clock, key_prefix=prefix)
    assert await _drive([alone], clock, channel=1, rate=1.0, burst=1.0, seconds=30.0, step=0.25) == 31


async def test_channels_have_separate_buckets(client, prefix):
    clock = Clock()
    bucket = throughput.Throughput(client, clock=clock, key_prefix=prefix)
    assert await bucket.take(1, 1.0, 1.0, 1) == 0.0
    assert await bucket.take(1, 1.0, 1.0, 1) > 0.0
    assert await bucket.take(2, 1.0, 1.0, 1) == 0.0


async def test_the_wait_returned_is_when_the_tokens_are_there(client, prefix):
    clock = Clock()
    bucket = throughput.Throughput(client, clock=clock, key_prefix=prefix)
    assert await bucket.take(3, 2.0, 4.0, 4) == 0.0
    wait = await bucket.take(3, 2.0, 4.0, 3)
    assert wait == pytest.approx(1.5)
    clock.now += wait * 0.9
    assert await bucket.take(3, 2.0, 4.0, 3) > 0.0  # nothing was taken by the refusals
    clock.now += wait * 0.1
    assert await bucket.take(3, 2.0, 4.0, 3) == 0.0


async def test_a_cost_above_the_burst_waits_for_a_full_bucket_then_goes_into_debt(client, prefix):
    clock = Clock()
    bucket = throughput.Throughput(client, clock=clock, key_prefix=prefix)
    assert await bucket.take(4, 1.0, 1.0, 1) == 0.0
    assert await bucket.take(4, 1.0, 1.0, 3) == pytest.approx(1.0)  # waits for the bucket to be full
    clock.now += 1.0
    assert await bucket.take(4, 1.0, 1.0, 3) == 0.0  # goes, leaving the bucket at -2
    assert await bucket.take(4, 1.0, 1.0, 1) == pytest.approx(3.0)  # the debt is repaid first
    # Over a long run, 3-segment messages on a 1/s sender leave one every 3 s.
    assert await _drive([bucket], clock, channel=5, rate=1.0, burst=1.0, seconds=300.0, step=0.5, cost=3) == \
        pytest.approx(300 + 3, abs=3)


async def test_an_idle_bucket_expires_from_redis(client, prefix):
    clock = Clock()
    bucket = throughput.Throughput(client, clock=clock, key_prefix=prefix)
    assert await bucket.take(6, 2.0, 10.0, 10) == 0.0
    ttl_ms = await client.pttl(prefix + "6")
    # Empty: full again after 5 s, and the key goes a second after that.
    assert 5_000 < ttl_ms <= 6_000


async def test_redis_time_is_used_without_a_test_clock(client, prefix):
    bucket = throughput.Throughput(client, key_prefix=prefix)
    assert await bucket.take(8, 0.001, 1.0, 1) == 0.0
    wait = await bucket.take(8, 0.001, 1.0, 1)
    assert 900.0 < wait <= 1000.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rate=st.sampled_from([0.5, 1.0, 3.0, 10.0, 80.0]), burst=st.sampled_from([1.0, 2.0, 10.0]),
       ops=st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(0, 12)), min_size=1, max_size=40))
async def test_the_in_process_bucket_answers_as_the_redis_script_does(client, prefix, rate, burst, ops):
    clock = Clock()
    shared = throughput.Throughput(client, clock=clock, key_prefix=prefix + uuid.uuid4().hex)
    local = throughput.Throughput(None, clock=clock)
    for advance, cost in ops:
        clock.now += advance
        assert await local.take(9, rate, burst, cost) == pytest.approx(await shared.take(9, rate, burst, cost),
                                                                      abs=1e-5)


@pytest.mark.parametrize(("kind", "address", "rate"), [
    ("twilio_sms", "+12125551234", 1.0),  # long code
    ("twilio_sms", "+18005551234", 3.0),  # toll-free
    ("twilio_sms", "+18885551234", 3.0),
    ("twilio_sms", "+18335551234", 3.0),
    ("twilio_sms", "+18015551234", 1.0),  # 801 is Utah, not toll-free
    ("twilio_sms", "+442071234567", 1.0),
    ("twilio_sms", "12345", 100.0),  # short codes
    ("twilio_sms", "123456", 100.0),
    ("twilio_sms", "Parley", 1.0),  # alphanumeric sender ID
    ("twilio_sms", "*", 1.0),  # a Messaging Service: paced as one long code
    ("twilio_whatsapp", "+14155238886", 10.0),
    ("whatsapp_cloud", "106540352242922", 80.0),
])
def test_default_rate_per_sender_kind_and_address(kind, address, rate):
    assert throughput.default_rate(kind, address) == rate


def test_default_burst_is_one_seconds_worth_and_at_least_one():
    assert throughput.default_burst(80.0) == 80.0
    assert throughput.default_burst(0.5) == 1.0


# --- Redis going away: a server of our own, killed and stopped mid-run.

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    def __init__(self) -> None:
        self.port = _free_port()
        self.workdir = tempfile.mkdtemp(prefix="parley-test-redis-own-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.workdir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    yield server
    server.close()


async def test_redis_killed_mid_run_falls_back_in_process_and_the_overshoot_is_one_bucket(own_redis, caplog):
    clock = Clock()
    clients = [aioredis.from_url(own_redis.url, socket_timeout=1, socket_connect_timeout=1) for _ in range(2)]
    try:
        # retry_after_s=0: every take tries Redis again, so the outage is logged once however many fail.
        buckets = [throughput.Throughput(c, clock=clock, retry_after_s=0.0) for c in clients]
        before = await _drive(buckets, clock, channel=1, rate=2.0, burst=2.0, seconds=20.0, step=0.5)
        assert before == 2 * 20 + 2  # the burst, then 2/s
        own_redis.kill()
        with caplog.at_level(logging.WARNING, logger="parley.orchestrator.throughput"):
            during = await _drive(buckets, clock, channel=1, rate=2.0, burst=2.0, seconds=20.0, step=0.5)
        assert all(b.degraded for b in buckets)
        # Each process paces on its own (its bucket starts empty): together at most twice the rate,
        # each at most the rate, never a burst on top.
        assert 0 < during <= 2 * (2 * 20 + 1)
        warnings = [r for r in caplog.records if r.name == "parley.orchestrator.throughput"]
        assert len(warnings) == 2  # once per process for the whole outage
        # Redis back: the shared bucket again.
        own_redis.start()
        clock.now += 10.0
        assert await buckets[0].take(1, 2.0, 2.0, 1) == 0.0
        assert not buckets[0].degraded
        assert await clients[0].exists("parley:throughput:1") == 1
    finally:
        for c in clients:
            await c.aclose()


async def test_a_hung_redis_falls_back_after_the_timeout_instead_of_blocking(own_redis):
    clock = Clock()
    client = aioredis.from_url(own_redis.url, socket_timeout=30, socket_connect_timeout=30)
    try:
        bucket = throughput.Throughput(client, clock=clock, redis_timeout_s=0.2, retry_after_s=60.0)
        assert await bucket.take(1, 1.0, 1.0, 1) == 0.0
        assert own_redis.proc is not None
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            wait = await bucket.take(1, 1.0, 1.0, 1)
            assert bucket.degraded
            assert wait == pytest.approx(1.0)  # the fallback bucket starts empty
            clock.now += 1.0
            # Within retry_after_s, Redis is not asked again (this would hang for 30 s otherwise).
            assert await bucket.take(1, 1.0, 1.0, 1) == 0.0
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
    finally:
        await client.aclose()


async def test_no_redis_configured_paces_in_process():
    clock = Clock()
    bucket = throughput.Throughput(None, clock=clock)
    assert await _drive([bucket], clock, channel=1, rate=10.0, burst=10.0, seconds=10.0, step=0.05) == 10 * 10 + 10
    assert not bucket.degraded


async def test_invalid_arguments_are_refused_and_a_zero_cost_always_goes():
    bucket = throughput.Throughput(None, clock=Clock())
    with pytest.raises(ValueError):
        await bucket.take(1, 0.0, 1.0, 1)
    with pytest.raises(ValueError):
        await bucket.take(1, 1.0, 1.0, -1)
    assert await bucket.take(1, 1.0, 1.0, 1) == 0.0
    assert await bucket.take(1, 1.0, 1.0, 0) == 0.0


async def test_rates_stored_as_numeric_are_accepted(client, prefix):
    from decimal import Decimal

    clock = Clock()
    for bucket in (throughput.Throughput(client, clock=clock, key_prefix=prefix),
                   throughput.Throughput(None, clock=clock)):
        assert await bucket.take(1, Decimal("1.5"), Decimal("1"), 1) == 0.0
        assert await bucket.take(1, Decimal("1.5"), Decimal("1"), 1) == pytest.approx(1 / 1.5)
