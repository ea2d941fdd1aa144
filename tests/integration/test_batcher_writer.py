"""A group-commit writer survives a failure of its own, so one bad moment never hangs every later webhook."""

from __future__ import annotations

import asyncio

from services.inbound import batcher
from tests import support
from tests.integration.test_twilio_webhook import post_twilio


async def test_a_writer_that_fails_after_its_commit_keeps_writing_later_batches(client, db, monkeypatch):
    def broken_log(*_: object) -> None:
        raise RuntimeError("log handler broke")

    monkeypatch.setattr(batcher, "_log_batch", broken_log)
    for n in range(3):
        # Generous bound: a dead writer task would leave this request waiting for ever.
        resp = await asyncio.wait_for(post_twilio(client, support.sms_pairs(f"m{n}", f"SM{n:032x}")), 30)
        assert resp.status == 200  # committed before the failure, so acknowledged
    assert await db.fetchval("SELECT count(*) FROM messages") == 3
