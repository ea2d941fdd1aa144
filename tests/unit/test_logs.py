"""Structured JSON logs: one object a line, secrets scrubbed, and one write per event-loop iteration."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading

import pytest

from services import logs


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stream():
    out = CountingStream()
    logs.configure("INFO", ["s3cr3t-token-value"], out)
    yield out
    logging.getLogger().handlers[0].flush()
    logs.configure("WARNING", [], io.StringIO())


def lines(stream: CountingStream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_one_json_object_with_extras_and_no_secret(stream):
    logging.getLogger("parley.test").info("stored %s", "x", extra={"message_id": 7, "token": "s3cr3t-token-value",
                                                                   "text": "ünï\x00"})
    [line] = lines(stream)
    assert line["msg"] == "stored x" and line["level"] == "info" and line["logger"] == "parley.test"
    assert line["message_id"] == 7 and line["token"] == "[redacted]" and line["text"] == "ünï\x00"
    assert "s3cr3t" not in stream.getvalue()


def test_values_json_cannot_encode_natively_are_written_as_text(stream):
    logging.getLogger("parley.test").info("odd", extra={"big": 2**70, "obj": object(), "lone": "\ud800"})
    [line] = lines(stream)
    assert line["big"] == 2**70 and line["obj"].startswith("<object") and line["lone"] == "\ud800"


async def test_lines_of_one_loop_iteration_leave_in_one_write_in_order(stream):
    log = logging.getLogger("parley.test")
    for n in range(50):
        log.info("line", extra={"n": n})
    assert stream.writes == 0  # nothing written yet: the flush waits for the next iteration
    await asyncio.sleep(0)
    assert stream.writes == 1
    log.info("line", extra={"n": 50})
    await asyncio.sleep(0)
    assert stream.writes == 2
    assert [line["n"] for line in lines(stream)] == list(range(51))


async def test_a_line_from_another_thread_first_writes_what_is_pending(stream):
    log = logging.getLogger("parley.test")
    log.info("from the loop", extra={"n": 0})
    thread = threading.Thread(target=lambda: log.info("from a thread", extra={"n": 1}))
    thread.start()
    thread.join()
    log.info("from the loop again", extra={"n": 2})
    assert [line["n"] for line in lines(stream)] == [0, 1]  # the thread's line did not overtake
    await asyncio.sleep(0)
    assert [line["n"] for line in lines(stream)] == [0, 1, 2]


def test_outside_an_event_loop_every_line_is_written_at_once(stream):
    logging.getLogger("parley.test").warning("no loop here")
    assert stream.writes == 1 and lines(stream)[0]["msg"] == "no loop here"


async def test_flush_writes_what_is_pending_when_the_loop_stops(stream):
    logging.getLogger("parley.test").info("last words")
    logging.shutdown()  # what the interpreter runs at exit
    assert lines(stream)[0]["msg"] == "last words"


def test_the_twilio_clients_request_lines_stay_out_of_the_log_and_its_warnings_do_not(stream):
    # twilio.http_client logs each request's URL and query (To=+1...) at info level.
    logging.getLogger("twilio.http_client").info("-- BEGIN Twilio API Request --  To=+15551230000")
    logging.getLogger("twilio.http_client").warning("connection pool is full")
    assert [line["msg"] for line in lines(stream)] == ["connection pool is full"]
