"""A local stand-in for the OpenAI chat-completions endpoint, scripted per test.

Our code talks to it through the real `openai` client over real HTTP, so retries, timeouts, error
mapping and response parsing are the library's own. Each request consumes the next scripted
behaviour; a request with nothing scripted gets a 500 and fails the test at teardown.

    async def test_something(openai_server: FakeOpenAI) -> None:
        openai_server.script(reply({"intent": "booking", "confidence": 0.9, "language": "en"}))
        ...  # point the code under test at openai_server.base_url
        assert openai_server.requests[0].model == "gpt-4o-mini"

Import the `openai_server` fixture into a test module or a conftest to use it. Wire format:
https://platform.openai.com/docs/api-reference/chat/object and
https://platform.openai.com/docs/guides/error-codes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web


@dataclass(frozen=True, slots=True)
class Reply:
    """A 200 chat completion whose first choice carries `content` (or a `refusal`)."""

    content: str | None
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


@dataclass(frozen=True, slots=True)
class Status:
    """An error status with an OpenAI-style `{"error": {...}}` body (or any `body` given)."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delay:
    """Hold the response back for `seconds`, then behave as `then` (the client has usually gone)."""

    seconds: float
    then: Behaviour


@dataclass(frozen=True, slots=True)
class GarbageHttp:
    """A 200 whose body is not JSON at all, as from a misconfigured proxy."""

    body: str = "<html><body><h1>502 Bad Gateway</h1></body></html>"


Behaviour = Reply | Status | Delay | GarbageHttp


def reply(
    content: str | Mapping[str, Any] | None,
    prompt_tokens: int = 42,
    completion_tokens: int = 7,
    finish_reason: str = "stop",
) -> Reply:
    """A completion; a mapping is sent as its JSON text, the way structured outputs arrive."""
    text = json.dumps(content) if isinstance(content, Mapping) else content
    return Reply(text, None, prompt_tokens, completion_tokens, finish_reason)


def malformed(content: str = "Sure! This looks like a booking request.") -> Reply:
    """A completion whose content is not the JSON asked for (plain prose by default)."""
    return Reply(content, None, 40, 12)


def refusal(text: str = "I'm sorry, I can't help with that request.") -> Reply:
    """A completion where the model refused: `content` is null and `refusal` is set."""
    return Reply(None, text, 40, 9)


_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid value for 'response_format'.", "invalid_request_error", None),
    401: (
        "Incorrect API key provided: sk-test-********************1234. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error",
          "model_not_found"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def error_body(status_code: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`."""
    default_message, error_type, default_code = _ERROR_DEFAULTS.get(
        status_code, ("Unexpected error.", "server_error", None)
    )
    return {
        "error": {
            "message": message or default_message,
            "type": error_type,
            "param": None,
            "code": code or default_code,
        }
    }


def status(status_code: int, body: Any = None, headers: Mapping[str, str] | None = None) -> Status:
    """An error response; `body` defaults to OpenAI's error envelope for that status."""
    return Status(status_code, error_body(status_code) if body is None else body, dict(headers or {}))


def rate_limit(retry_after: float, code: str = "rate_limit_exceeded") -> Status:
    """A 429 asking the client to wait `retry_after` seconds.

    Sends `retry-after-ms` (which the openai client prefers, allowing sub-second waits in tests)
    alongside the standard whole-second `retry-after`.
    """
    headers = {
        "retry-after": str(math.ceil(retry_after)),
        "retry-after-ms": str(round(retry_after * 1000)),
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": f"{retry_after}s",
    }
    message = "You exceeded your current quota." if code == "insufficient_quota" else None
    return Status(429, error_body(429, message, code), headers)


def delay(seconds: float, then: Behaviour | None = None) -> Delay:
    """Answer only after `seconds` (to trigger client timeouts); then a plain reply by default."""
    return Delay(seconds, then if then is not None else reply("{}"))


def garbage_http(body: str | None = None) -> GarbageHttp:
    """A 200 with an HTML body instead of JSON."""
    return GarbageHttp(body) if body is not None else GarbageHttp()


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any  # the decoded JSON body, or None if it was not JSON

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def response_format(self) -> Any:
        return self.body.get("response_format") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def prompt_text(self) -> str:
        """Every message's content joined, for asserting what reached the LLM."""
        return "\n".join(str(message.get("content", "")) for message in self.messages)


class FakeOpenAI:
    """The server's scriptable state. Use through the `openai_server` fixture."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.unscripted: list[RecordedRequest] = []
        self.base_url = ""
        self._script: deque[Behaviour] = deque()
        self._ids = itertools.count(1)
        # Set at shutdown so responses still being delayed end at once instead of holding teardown.
        self._closing = asyncio.Event()

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each request consumes the next one, in order."""
        self._script.extend(behaviours)

    @property
    def pending(self) -> int:
        """Scripted behaviours not consumed yet."""
        return len(self._script)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        return app

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        recorded = RecordedRequest(request.method, request.path, dict(request.headers), body)
        self.requests.append(recorded)
        if not self._script:
            self.unscripted.append(recorded)
            return web.json_response(error_body(500, "fake OpenAI server: no behaviour scripted"), status=500)
        return await self._perform(self._script.popleft(), recorded)

    async def _perform(self, behaviour: Behaviour, recorded: RecordedRequest) -> web.StreamResponse:
        number = next(self._ids)
        headers = {"x-request-id": f"req_fake_{number}", "openai-processing-ms": "12"}
        match behaviour:
            case Delay(seconds, then):
                try:
                    await asyncio.wait_for(self._closing.wait(), seconds)
                except TimeoutError:
                    pass
                return await self._perform(then, recorded)
            case Status(status_code, body, extra_headers):
                if isinstance(body, str):
                    return web.Response(status=status_code, text=body, headers={**headers, **extra_headers})
                return web.json_response(body, status=status_code, headers={**headers, **extra_headers})
            case GarbageHttp(text):
                return web.Response(status=200, text=text, content_type="text/html", headers=headers)
            case Reply():
                return web.json_response(self._completion(behaviour, recorded, number), headers=headers)
        raise AssertionError(f"unknown behaviour {behaviour!r}")

    @staticmethod
    def _completion(behaviour: Reply, recorded: RecordedRequest, number: int) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": recorded.model or "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": behaviour.content,
                        "refusal": behaviour.refusal,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": behaviour.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": behaviour.prompt_tokens,
                "completion_tokens": behaviour.completion_tokens,
                "total_tokens": behaviour.prompt_tokens + behaviour.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    async def close(self) -> None:
        self._closing.set()


def unused_base_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens, for connection-refused cases."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    """A running fake OpenAI server on a free 127.0.0.1 port; fails the test on unscripted requests."""
    fake = FakeOpenAI()
    runner = web.AppRunner(fake.app(), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield fake
    finally:
        await fake.close()
        await runner.cleanup()
    assert not fake.unscripted, f"{len(fake.unscripted)} request(s) reached the fake OpenAI server unscripted"
