"""The pacing of the agents inside `parley serve`: they give way while webhooks saturate the process."""

from __future__ import annotations

import asyncio

import pytest

from agents import worker
from agents.service import IngestFirst


async def test_no_wait_when_ingest_is_not_saturated():
    readings: list[bool] = []

    def saturated() -> bool:
        readings.append(False)
        return False

    gate = IngestFirst(saturated, max_wait_s=60)
    await asyncio.wait_for(gate(), 5)  # would time out if it waited for the 60 s bound
    assert readings == [False]


async def test_waits_while_saturated_and_goes_when_the_load_drops():
    load = iter([True, True, True, False])
    gate = IngestFirst(lambda: next(load), max_wait_s=60, check_s=0.001)
    await asyncio.wait_for(gate(), 5)
    assert next(load, "exhausted") == "exhausted"  # it looked until the load dropped, then went
    assert gate.waited_s > 0


async def test_never_waits_longer_than_its_bound_so_agents_are_not_starved():
    gate = IngestFirst(lambda: True, max_wait_s=0.05, check_s=0.01)
    await asyncio.wait_for(gate(), 5)
    assert gate.waited_s >= 0.05


async def test_a_worker_paces_itself_before_every_claim():
    calls: list[str] = []

    async def pace() -> None:
        calls.append("pace")

    w = worker.Worker(pool=None, dsn="", handler=None, pace=pace, poll_interval_s=0.01)  # type: ignore[arg-type]

    async def claim_once() -> int:
        calls.append("claim")
        if calls.count("claim") == 3:
            stop.set()
        return w.batch_size  # a full batch: claim again at once

    w.claim_once = claim_once  # type: ignore[method-assign]
    stop = asyncio.Event()
    await asyncio.wait_for(w._loop(stop), 5)
    assert calls == ["pace", "claim"] * 3


@pytest.mark.parametrize("writers, in_flight, saturated", [(1, 0, False), (1, 8, False), (1, 9, True),
                                                           (4, 32, False), (4, 33, True)])
async def test_batcher_is_saturated_when_many_webhooks_wait_per_lane(writers, in_flight, saturated):
    from services.inbound.batcher import Batcher

    b = Batcher(pool=None, writers=writers)  # type: ignore[arg-type]
    b.in_flight = in_flight
    assert b.saturated() is saturated


async def test_saturation_holds_through_the_troughs_of_a_burst():
    from services.inbound import batcher

    b = batcher.Batcher(pool=None, writers=1)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    # A burst: more webhooks wait than the threshold, then a group commit answers them all at once.
    waiting = [loop.create_task(b.submit(None, _Msg(), None, 5))  # type: ignore[arg-type]
               for _ in range(batcher.SATURATED_PER_LANE + 1)]
    await asyncio.sleep(0)
    assert b.in_flight > batcher.SATURATED_PER_LANE
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert b.in_flight == 0
    assert b.saturated()  # the trough between commits is not the end of the burst
    b._saturated_until = loop.time() - 0.001  # the hold has passed
    assert not b.saturated()


class _Sender:
    phone = "+14155550101"


class _Msg:
    sender = _Sender()
