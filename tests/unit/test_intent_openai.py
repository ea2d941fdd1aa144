"""The OpenAI intent classifier, with the real `openai` client talking HTTP to a local fake server.

Every failure must fall back to the local classifier with a machine-readable reason, never raise,
and never outlive the time budget; opt-out is never decided by the LLM alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from agents.intent import Classification, Intent
from agents.intent.local import LocalClassifier
from agents.intent.openai_classifier import OpenAIClassifier
from tests.fakes import openai_server as fake
from tests.fakes.openai_server import FakeOpenAI

API_KEY = "sk-test-intent-0123456789abcdef"
MODEL = "gpt-4o-mini"
BOOKING_REQUEST = "Can we move my appointment to Friday afternoon?"
BOOKING = {"intent": "booking", "confidence": 0.91, "language": "en"}
CONTEXT = ("Summary: Ana Ruiz booked a plumber visit for Tuesday 4pm.", "Agent: See you Tuesday at 4pm!")
# Hang guard only: a call that never returns fails the test instead of stalling the suite.
HANG_GUARD_S = 30.0


@pytest.fixture(scope="module")
def local() -> LocalClassifier:
    return LocalClassifier()


MakeClassifier = Callable[..., OpenAIClassifier]


@pytest.fixture
async def make_classifier(openai_server: FakeOpenAI, local: LocalClassifier) -> AsyncIterator[MakeClassifier]:
    made: list[OpenAIClassifier] = []

    def make(*, base_url: str | None = None, timeout_s: float = 2.0, max_retries: int = 0) -> OpenAIClassifier:
        made.append(
            OpenAIClassifier(
                api_key=API_KEY,
                base_url=base_url or openai_server.base_url,
                model=MODEL,
                fallback=local,
                timeout_s=timeout_s,
                max_retries=max_retries,
            )
        )
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


async def classify(classifier: OpenAIClassifier, text: str, context: tuple[str, ...] = ()) -> Classification:
    return await asyncio.wait_for(classifier.classify(text, context), HANG_GUARD_S)


def local_fallback(local: LocalClassifier, text: str, reason: str) -> Classification:
    return dataclasses.replace(local.classify_sync(text), fallback_reason=reason)


async def test_llm_intent_confidence_language_and_token_usage_are_returned(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier
) -> None:
    openai_server.script(fake.reply(BOOKING, prompt_tokens=321, completion_tokens=14))

    result = await classify(make_classifier(), BOOKING_REQUEST, CONTEXT)

    assert result == Classification(
        intent=Intent.BOOKING,
        confidence=0.91,
        language="en",
        implementation="openai",
        model=MODEL,
        tokens_in=321,
        tokens_out=14,
    )


async def test_request_carries_the_model_a_strict_json_schema_and_the_context(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier
) -> None:
    openai_server.script(fake.reply(BOOKING))

    await classify(make_classifier(), BOOKING_REQUEST, CONTEXT)

    [request] = openai_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.model == MODEL
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    response_format = request.response_format
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True
    schema = response_format["json_schema"]["schema"]
    assert set(schema["required"]) == {"intent", "confidence", "language"}
    assert schema["additionalProperties"] is False
    assert set(schema["$defs"]["Intent"]["enum"]) == {intent.value for intent in Intent}
    for text in (BOOKING_REQUEST, *CONTEXT):
        assert text in request.prompt_text


FAILURES = [
    pytest.param(fake.status(500), "http_500", id="server-error"),
    pytest.param(fake.status(503), "http_503", id="overloaded"),
    pytest.param(fake.status(400), "http_400", id="bad-request"),
    pytest.param(fake.status(401), "http_401", id="bad-api-key"),
    pytest.param(fake.status(404), "http_404", id="unknown-model"),
    pytest.param(fake.rate_limit(0.01, code="insufficient_quota"), "insufficient_quota", id="quota-exhausted"),
    pytest.param(fake.malformed(), "invalid_output", id="prose-instead-of-json"),
    pytest.param(fake.malformed('{"intent": "booking", "confidence": 0.9'), "invalid_output", id="truncated-json"),
    pytest.param(fake.reply({"label": "booking", "score": 0.9}), "invalid_output", id="json-of-another-shape"),
    pytest.param(fake.reply({**BOOKING, "intent": "dance"}), "invalid_output", id="intent-not-in-enum"),
    pytest.param(fake.reply({**BOOKING, "confidence": 7}), "invalid_output", id="confidence-above-one"),
    pytest.param(fake.reply({**BOOKING, "confidence": -0.2}), "invalid_output", id="confidence-below-zero"),
    pytest.param(fake.reply({**BOOKING, "language": "English"}), "invalid_output", id="language-not-iso"),
    pytest.param(fake.reply({**BOOKING, "extra": 1}), "invalid_output", id="unexpected-field"),
    pytest.param(fake.reply(None), "invalid_output", id="null-content"),
    pytest.param(fake.reply(""), "invalid_output", id="empty-content"),
    pytest.param(fake.refusal(), "refusal", id="refusal"),
    pytest.param(fake.reply(BOOKING, finish_reason="length"), "truncated", id="finish-reason-length"),
    pytest.param(fake.reply(BOOKING, finish_reason="content_filter"), "content_filter", id="content-filter"),
    pytest.param(fake.garbage_http(), "invalid_response", id="html-instead-of-json"),
    pytest.param(fake.status(200, {"object": "list", "data": []}), "invalid_response", id="json-not-a-completion"),
]


@pytest.mark.parametrize(("behaviour", "reason"), FAILURES)
async def test_failure_falls_back_to_the_local_classifier_with_its_reason(
    openai_server: FakeOpenAI,
    make_classifier: MakeClassifier,
    local: LocalClassifier,
    behaviour: fake.Behaviour,
    reason: str,
) -> None:
    openai_server.script(behaviour)

    result = await classify(make_classifier(), BOOKING_REQUEST, CONTEXT)

    assert result == local_fallback(local, BOOKING_REQUEST, reason)
    assert len(openai_server.requests) == 1


async def test_rate_limit_is_retried_a_bounded_number_of_times_then_falls_back(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier, local: LocalClassifier
) -> None:
    max_retries = 2
    openai_server.script(*[fake.rate_limit(0.01)] * (1 + max_retries))

    result = await classify(make_classifier(max_retries=max_retries), BOOKING_REQUEST)

    assert result == local_fallback(local, BOOKING_REQUEST, "rate_limited")
    assert len(openai_server.requests) == 1 + max_retries


async def test_rate_limit_followed_by_success_within_the_retries_uses_the_llm(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier
) -> None:
    openai_server.script(fake.rate_limit(0.01), fake.reply(BOOKING))

    result = await classify(make_classifier(max_retries=2), BOOKING_REQUEST)

    assert (result.implementation, result.intent, result.fallback_reason) == ("openai", Intent.BOOKING, None)
    assert len(openai_server.requests) == 2


async def test_server_error_is_retried_then_falls_back(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier, local: LocalClassifier
) -> None:
    # retry-after-ms keeps the client's back-off short; the retry count is what is checked.
    quick_retry = {"retry-after-ms": "10"}
    openai_server.script(fake.status(500, headers=quick_retry), fake.status(500, headers=quick_retry))

    result = await classify(make_classifier(max_retries=1), BOOKING_REQUEST)

    assert result == local_fallback(local, BOOKING_REQUEST, "http_500")
    assert len(openai_server.requests) == 2


async def test_slow_server_times_out_and_falls_back(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier, local: LocalClassifier
) -> None:
    openai_server.script(fake.delay(5.0, then=fake.reply(BOOKING)))

    result = await classify(make_classifier(timeout_s=0.3), BOOKING_REQUEST)

    assert result == local_fallback(local, BOOKING_REQUEST, "timeout")


async def test_long_retry_after_is_cut_short_by_the_overall_deadline(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier, local: LocalClassifier
) -> None:
    # The client would honour a 60 s Retry-After; the classifier's deadline must not let it.
    openai_server.script(fake.rate_limit(60.0))

    result = await classify(make_classifier(timeout_s=0.3, max_retries=1), BOOKING_REQUEST)

    assert result == local_fallback(local, BOOKING_REQUEST, "timeout")
    assert len(openai_server.requests) == 1


async def test_unreachable_server_falls_back_with_connection_error(
    make_classifier: MakeClassifier, local: LocalClassifier
) -> None:
    result = await classify(make_classifier(base_url=fake.unused_base_url()), BOOKING_REQUEST)

    assert result == local_fallback(local, BOOKING_REQUEST, "connection_error")


async def test_fallback_reason_and_logs_never_carry_the_api_key(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    openai_server.script(fake.status(401, fake.error_body(401, f"Incorrect API key provided: {API_KEY}.")))

    result = await classify(make_classifier(), BOOKING_REQUEST)

    assert result.fallback_reason == "http_401"
    assert any(r.name == "agents.intent.openai_classifier" for r in caplog.records)
    assert API_KEY not in caplog.text
    assert all(API_KEY not in str(value) for r in caplog.records for value in vars(r).values())


@pytest.mark.parametrize("text", ["STOP", "stop.", "Unsubscribe", " Stop! "])
async def test_compliance_keyword_is_decided_locally_and_never_sent_to_the_llm(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier, text: str
) -> None:
    result = await classify(make_classifier(), text, CONTEXT)

    assert (result.intent, result.implementation) == (Intent.OPT_OUT, "rules")
    assert result.keyword is not None
    assert openai_server.requests == []


async def test_llm_opt_out_the_local_model_disagrees_with_is_flagged_not_acted_on(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier, local: LocalClassifier
) -> None:
    text = "I'm good, thanks"
    local_view = local.classify_sync(text)
    assert local_view.intent is not Intent.OPT_OUT  # the premise of this test
    openai_server.script(
        fake.reply({"intent": "opt_out", "confidence": 0.8, "language": "en"}, prompt_tokens=200, completion_tokens=9)
    )

    result = await classify(make_classifier(), text)

    assert result.intent is local_view.intent
    assert result.confidence == local_view.confidence
    assert result.possible_opt_out is True
    # The call was made and billed: its model and tokens are kept for cost accounting.
    assert (result.implementation, result.model, result.tokens_in, result.tokens_out) == ("openai", MODEL, 200, 9)
    assert len(openai_server.requests) == 1


async def test_llm_opt_out_the_local_model_agrees_with_stands(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier, local: LocalClassifier
) -> None:
    text = "Not interested, stop bothering me"
    local_view = local.classify_sync(text)
    assert (local_view.intent, local_view.implementation) == (Intent.OPT_OUT, "local")  # the premise
    openai_server.script(fake.reply({"intent": "opt_out", "confidence": 0.97, "language": "en"}))

    result = await classify(make_classifier(), text)

    assert (result.intent, result.implementation, result.possible_opt_out) == (Intent.OPT_OUT, "openai", False)
    assert result.keyword is None


async def test_llm_non_opt_out_intent_is_taken_as_is(
    openai_server: FakeOpenAI, make_classifier: MakeClassifier
) -> None:
    openai_server.script(fake.reply({"intent": "not_interested", "confidence": 0.75, "language": "fr"}))

    result = await classify(make_classifier(), "Non merci, pas pour le moment")

    assert (result.intent, result.language, result.possible_opt_out) == (Intent.NOT_INTERESTED, "fr", False)
