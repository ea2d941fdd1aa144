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


@pytest.mark.parametrize("in_flight, saturated", [(0, False), (4, False), (5, True)])
def test_batcher_is_saturated_when_more_webhooks_wait_than_it_has_writers(in_flight, saturated):
    from services.inbound.batcher import Batcher

    b = Batcher(pool=None, writers=4)  # type: ignore[arg-type]
    b.in_flight = in_flight
    assert b.saturated() is saturated
