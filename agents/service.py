"""Assembling the agents from settings: classifier (local or OpenAI), summarizer, pipeline, workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web

from agents.intent import select
from agents.pipeline import Pipeline
from agents.summarizer import LocalSummarizer, OpenAISummarizer, Summarizer
from agents.worker import Worker
from services import appkeys
from services.settings import Settings

log = logging.getLogger("parley.agents")


def summarizer(settings: Settings) -> Summarizer:
    local = LocalSummarizer()
    if settings.openai_api_key is None:
        return local
    return OpenAISummarizer(fallback=local, **select.openai_options(settings))


def pipeline(settings: Settings) -> Pipeline:
    return Pipeline(settings, select.from_settings(settings), summarizer(settings),
                    uses_context=settings.openai_api_key is not None)


def worker(settings: Settings, pool: asyncpg.Pool, dsn: str, worker_id: str | None = None, *,
           concurrency: int | None = None, batch_size: int = 64,
           pace: Callable[[], Awaitable[None]] | None = None) -> Worker:
    return Worker(pool, dsn, pipeline(settings), worker_id=worker_id,
                  concurrency=concurrency or settings.worker_concurrency, batch_size=batch_size,
                  lease_s=settings.task_lease_s, poll_interval_s=settings.poll_interval_s, pace=pace)


class IngestFirst:
    """Paces the agents that `parley serve` runs on the webhooks' event loop and database.

    While ingest is saturated, a batch of agent work waits (up to `max_wait_s`) before it starts:
    acknowledging a provider's webhook cannot wait (providers time out and retry), a reply to a
    message already committed can. The queue is durable, so nothing is lost, only answered later; below
    saturation the agents run at full speed. For agent capacity under sustained peaks, run
    `parley worker` processes beside `parley serve`.
    """

    def __init__(self, saturated: Callable[[], bool], max_wait_s: float, check_s: float = 0.02) -> None:
        self.saturated = saturated
        self.max_wait_s = max_wait_s
        self.check_s = check_s
        self.waited_s = 0.0  # total time agents gave way, for tests and benchmarks

    async def __call__(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A load reading, not an event to wait on: look again every check_s.
        while self.saturated() and loop.time() - started < self.max_wait_s:  # noqa: ASYNC110
            await asyncio.sleep(self.check_s)
        self.waited_s += loop.time() - started



async def run_workers(settings: Settings, pool: asyncpg.Pool, dsn: str, stop: asyncio.Event, *,
                      concurrency: int | None = None, batch_size: int = 64,
                      pace: Callable[[], Awaitable[None]] | None = None) -> None:
    """`settings.workers` workers in this process until `stop` is set; in-flight work finishes first."""
    workers = [worker(settings, pool, dsn, concurrency=concurrency, batch_size=batch_size, pace=pace)
               for _ in range(settings.workers)]
    log.info("agent workers started", extra={"workers": len(workers)})
    await asyncio.gather(*(w.run(stop) for w in workers))


def background(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx for `parley serve`: workers run beside the HTTP server and stop before the pool."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runtime = app[appkeys.RUNTIME]
        stop = asyncio.Event()
        # Small batches: a batch's classification runs between webhook callbacks on this event loop.
        gate = IngestFirst(app[appkeys.BATCHER].saturated, settings.serve_agent_max_wait_s)
        task = asyncio.create_task(
            run_workers(settings, runtime.pool, runtime.dsn, stop,
                        concurrency=settings.serve_worker_concurrency, batch_size=16, pace=gate),
            name="agent-workers")
        yield
        stop.set()
        await task

    return ctx
