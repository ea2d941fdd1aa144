"""Conversation summaries: the local extractive summarizer, and the OpenAI one over real HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest

from agents import summarizer
from agents.summarizer import Direction, LocalSummarizer, OpenAISummarizer, SummaryInput
from tests.fakes import openai_server as fake
from tests.fakes.openai_server import FakeOpenAI

API_KEY = "sk-test-summarizer-0123456789abcdef"
MODEL = "gpt-4o-mini"
START = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


def conversation(*turns: tuple[str, str]) -> list[SummaryInput]:
    """Messages one minute apart; each turn is ("in" | "out", body)."""
    return [
        SummaryInput(
            Direction.INBOUND if who == "in" else Direction.OUTBOUND, body, START + timedelta(minutes=i)
        )
        for i, (who, body) in enumerate(turns)
    ]


PLUMBING = conversation(
    ("out", "Hi! This is Bright Plumbing, following up on your request. Do you still need help?"),
    ("in", "Hi"),
    ("in", "Yes please. My name is Ana Ruiz and the sink in my kitchen is leaking badly."),
    ("out", "Sorry to hear that. When would suit you for a visit?"),
    ("in", "Tuesday after 3pm works, I'm at 12 Baker Street."),
    ("in", "Thanks!"),
    ("out", "Great, booked you for Tuesday at 4pm. See you then."),
    ("in", "ok cool thanks"),
)


async def test_local_summary_keeps_name_need_date_and_address() -> None:
    summary = await LocalSummarizer().summarize(None, PLUMBING)

    for fact in ("Ana Ruiz", "leaking", "Tuesday", "4pm", "12 Baker Street"):
        assert fact in summary.text
    assert summary == summarizer.Summary(summary.text, "local", None, 0, 0, None)


async def test_local_summary_drops_greetings_and_thanks() -> None:
    summary = await LocalSummarizer().summarize(None, PLUMBING)

    assert "Hi" not in summary.text.split()
    assert "Thanks" not in summary.text
    assert "ok cool" not in summary.text


async def test_local_summary_keeps_conversation_order_and_says_who_said_what() -> None:
    text = (await LocalSummarizer().summarize(None, PLUMBING)).text

    assert text.index("Ana Ruiz") < text.index("Baker Street") < text.index("booked you")
    assert "Contact: My name is Ana Ruiz" in text
    assert "Agent: Great, booked you for Tuesday at 4pm." in text


async def test_local_summary_respects_its_length_cap_on_a_long_conversation() -> None:
    items = ["oranges", "apples", "pears", "lemons", "melons", "grapes", "plums", "kiwis", "figs", "limes"]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
    long_conversation = conversation(
        *[("in", f"Add {n + 2} crates of {items[n % 10]} for {days[n % 5]} delivery.") for n in range(40)],
        ("in", "My name is Claire Dubois, I'm the buyer."),
        *[("in", f"I would like {n} boxes of oranges delivered to Lyon on Friday.") for n in range(40)],
    )

    summary = await LocalSummarizer().summarize("Claire runs a grocery chain.", long_conversation)

    assert 0 < len(summary.text) <= summarizer.SUMMARY_MAX_CHARS
    assert "Claire Dubois" in summary.text
    assert "oranges" in summary.text


async def test_local_summary_clips_a_single_run_on_message_to_the_cap() -> None:
    run_on = conversation(("in", "need a quote for " + "tiles " * 500))

    summary = await LocalSummarizer().summarize(None, run_on)

    assert 0 < len(summary.text) <= summarizer.SUMMARY_MAX_CHARS
    assert summary.text.endswith("…")


async def test_local_summary_carries_facts_from_the_previous_summary_forward() -> None:
    previous = (await LocalSummarizer().summarize(None, PLUMBING)).text
    later = conversation(("in", "Actually can we move it to Wednesday morning? I have a dentist visit."))

    text = (await LocalSummarizer().summarize(previous, later)).text

    assert "Ana Ruiz" in text
    assert "Wednesday morning" in text
    assert text.index("Ana Ruiz") < text.index("Wednesday morning")


async def test_local_summary_with_no_new_messages_is_the_previous_summary() -> None:
    previous = "Contact: My name is Ana Ruiz and my kitchen sink leaks."

    summary = await LocalSummarizer().summarize(previous, [])

    assert summary.text == previous


async def test_local_summary_ignores_media_only_messages() -> None:
    photo = SummaryInput(Direction.INBOUND, None, START - timedelta(minutes=1))
    messages = [photo, *conversation(("in", "I need a quote for 3 windows."))]

    summary = await LocalSummarizer().summarize(None, messages)

    assert summary.text == "Contact: I need a quote for 3 windows."


@pytest.fixture
async def make_summarizer(
    openai_server: FakeOpenAI,
) -> AsyncIterator[Callable[..., OpenAISummarizer]]:
    made: list[OpenAISummarizer] = []

    def make(
        *, base_url: str | None = None, timeout_s: float = 2.0, max_retries: int = 0
    ) -> OpenAISummarizer:
        made.append(
            OpenAISummarizer(
                api_key=API_KEY,
                base_url=base_url or openai_server.base_url,
                model=MODEL,
                fallback=LocalSummarizer(),
                timeout_s=timeout_s,
                max_retries=max_retries,
            )
        )
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


async def test_openai_summary_returns_the_model_text_and_token_usage(
    openai_server: FakeOpenAI,
    make_summarizer: Callable[..., OpenAISummarizer],
) -> None:
    written = "Ana Ruiz has a leaking kitchen sink; visit booked Tuesday 4pm at 12 Baker Street."
    openai_server.script(fake.reply(written, prompt_tokens=310, completion_tokens=25))

    summary = await make_summarizer().summarize("Ana asked about plumbing.", PLUMBING)

    assert summary == summarizer.Summary(written, "openai", MODEL, 310, 25, None)


async def test_openai_summary_request_carries_model_previous_summary_and_new_messages(
    openai_server: FakeOpenAI,
    make_summarizer: Callable[..., OpenAISummarizer],
) -> None:
    openai_server.script(fake.reply("Ana Ruiz needs a plumber."))

    await make_summarizer().summarize("Ana asked about plumbing.", PLUMBING)

    [request] = openai_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.model == MODEL
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert "Ana asked about plumbing." in request.prompt_text
    assert "12 Baker Street" in request.prompt_text


async def test_openai_summary_longer_than_the_cap_is_clipped(
    openai_server: FakeOpenAI,
    make_summarizer: Callable[..., OpenAISummarizer],
) -> None:
    openai_server.script(fake.reply("Ana needs a plumber. " * 100))

    summary = await make_summarizer().summarize(None, PLUMBING)

    assert summary.implementation == "openai"
    assert len(summary.text) <= summarizer.SUMMARY_MAX_CHARS


async def test_openai_summarizer_makes_no_call_when_there_is_nothing_new(
    openai_server: FakeOpenAI,
    make_summarizer: Callable[..., OpenAISummarizer],
) -> None:
    photo_only = [SummaryInput(Direction.INBOUND, None, START)]

    summary = await make_summarizer().summarize("Ana needs a plumber.", photo_only)

    assert openai_server.requests == []
    assert summary == summarizer.Summary("Ana needs a plumber.", "local", None, 0, 0, None)


FAILURES = [
    pytest.param(fake.status(500), "http_500", id="server-error"),
    pytest.param(fake.status(400), "http_400", id="bad-request"),
    pytest.param(fake.status(401), "http_401", id="bad-api-key"),
    pytest.param(fake.rate_limit(0.01), "rate_limited", id="rate-limited"),
    pytest.param(fake.refusal(), "refusal", id="refusal"),
    pytest.param(fake.reply(""), "invalid_output", id="empty-content"),
    pytest.param(fake.reply("Ana needs", finish_reason="length"), "truncated", id="truncated"),
    pytest.param(fake.garbage_http(), "invalid_response", id="non-json-http-body"),
    pytest.param(fake.status(200, {"object": "list"}), "invalid_response", id="json-that-is-no-completion"),
]


@pytest.mark.parametrize(("behaviour", "reason"), FAILURES)
async def test_openai_summary_failure_falls_back_to_the_local_summary(
    openai_server: FakeOpenAI,
    make_summarizer: Callable[..., OpenAISummarizer],
    behaviour: fake.Behaviour,
    reason: str,
) -> None:
    openai_server.script(behaviour)

    summary = await make_summarizer().summarize(None, PLUMBING)

    local = await LocalSummarizer().summarize(None, PLUMBING)
    assert summary == summarizer.Summary(local.text, "local", None, 0, 0, reason)


async def test_openai_summary_times_out_and_falls_back(
    openai_server: FakeOpenAI,
    make_summarizer: Callable[..., OpenAISummarizer],
) -> None:
    openai_server.script(fake.delay(5.0, then=fake.reply("too late")))

    summary = await make_summarizer(timeout_s=0.3).summarize(None, PLUMBING)

    assert (summary.implementation, summary.fallback_reason) == ("local", "timeout")
    assert "Ana Ruiz" in summary.text


async def test_openai_summary_falls_back_when_the_server_is_unreachable(
    make_summarizer: Callable[..., OpenAISummarizer],
) -> None:
    summary = await make_summarizer(base_url=fake.unused_base_url()).summarize(None, PLUMBING)

    assert (summary.implementation, summary.fallback_reason) == ("local", "connection_error")


async def test_openai_summary_fallback_never_logs_the_api_key(
    openai_server: FakeOpenAI,
    make_summarizer: Callable[..., OpenAISummarizer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    openai_server.script(fake.status(401, fake.error_body(401, f"Incorrect API key provided: {API_KEY}.")))

    summary = await make_summarizer().summarize(None, PLUMBING)

    assert summary.fallback_reason == "http_401"
    assert any(r.name == "agents.intent.openai_classifier" for r in caplog.records)
    assert API_KEY not in caplog.text
    assert all(API_KEY not in str(value) for r in caplog.records for value in vars(r).values())
