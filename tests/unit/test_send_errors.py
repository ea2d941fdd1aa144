"""Refusals the simulator does not produce: bodies without a provider code, and unreadable bodies."""

from __future__ import annotations

import pytest

from services.channels import twilio_send, whatsapp_cloud_send
from services.channels.outbound import ErrorKind


@pytest.mark.parametrize(("status", "code", "kind", "maybe_sent", "our_code"), [
    # The SDK falls back to the HTTP status as `code` when the body has none.
    (503, 503, ErrorKind.TRANSIENT, True, None),
    (401, 401, ErrorKind.CONFIG, False, None),
    (403, 403, ErrorKind.CONFIG, False, None),
    (429, 429, ErrorKind.THROTTLED, False, None),
    (400, 400, ErrorKind.REJECTED, False, None),
    (400, 30500, ErrorKind.TRANSIENT, True, "30500"),
])
def test_twilio_refusals_without_a_code(status: int, code: int, kind: ErrorKind, maybe_sent: bool,
                                        our_code: str | None) -> None:
    error = twilio_send.error_from(status, code, "refused", {"Retry-After": "7"})
    assert (error.kind, error.maybe_sent, error.code, error.http_status) == (kind, maybe_sent, our_code, status)
    assert error.retry_after_s == (7.0 if kind is ErrorKind.THROTTLED else None)


@pytest.mark.parametrize(("status", "body", "kind", "maybe_sent"), [
    (502, b"<html>Bad gateway</html>", ErrorKind.TRANSIENT, True),
    (429, b"", ErrorKind.THROTTLED, False),
    (401, b"nope", ErrorKind.CONFIG, False),
    (400, b'{"error": "a string"}', ErrorKind.REJECTED, False),
    (400, b'{"error": {"code": "x"}}', ErrorKind.REJECTED, False),
    (400, b'{"error": {"code": 131016}}', ErrorKind.TRANSIENT, False),
])
def test_graph_refusals_without_a_usable_error(status: int, body: bytes, kind: ErrorKind, maybe_sent: bool) -> None:
    error = whatsapp_cloud_send.error_from(status, body, "3")
    assert (error.kind, error.maybe_sent, error.http_status) == (kind, maybe_sent, status)


def test_graph_details_are_the_message_an_operator_reads() -> None:
    body = (b'{"error": {"message": "(#131047) Re-engagement message", "code": 131047, '
            b'"error_data": {"details": "More than 24 hours have passed."}}}')
    error = whatsapp_cloud_send.error_from(400, body)
    assert (error.kind, error.code) == (ErrorKind.WINDOW_CLOSED, "131047")
    assert error.detail == "More than 24 hours have passed."
