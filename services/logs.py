"""Structured JSON logs. Secrets never reach a line: known secret values are scrubbed on the way out.

A webhook logs one line per message, so a line's cost is part of every acknowledgement: lines are
encoded with orjson, skip the caller lookup nothing prints, and inside the event loop the lines of one
loop iteration leave in a single write (`TickHandler`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed with extra= and becomes a JSON field.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_REDACTED = "[redacted]"


def _encode(entry: dict[str, Any]) -> str:
    try:
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, an int beyond 64 bits
        return json.dumps(entry, default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Short values would redact innocent text; real tokens are long.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key[0] != "_":
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._scrub(_encode(entry))


class TickHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that, inside a running event loop, writes the lines of one loop iteration with
    one write: under load an iteration runs dozens of handlers, and a write per line was a system call
    per message. The flush is scheduled with `call_soon`, so an idle server's line leaves on the next
    iteration, microseconds later; a line logged outside the loop (another thread, start-up, shutdown)
    first writes what is pending, so lines keep their order. A process killed outright loses at most
    the current iteration's lines."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle() holds self.lock around emit().
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never take the caller down
            self.handleError(record)
            return
        self._pending.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or loop.is_closed():
            self._write_pending()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_tick)

    def _flush_tick(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # noqa: BLE001 - a closed or full stream must not break the service
            pass

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
        super().flush()


def configure(level: str = "INFO", secrets: Iterable[str] = (), stream: Any = None) -> None:
    # The standard library's documented optimisations: nothing prints the caller's file and line, the
    # thread or the process name, so don't look them up for every record.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False
    handler = TickHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log line carries query strings (hub.verify_token!): keep it off.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # pgserver narrates every pg_ctl call at info level, with full command lines.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # The twilio client logs every request (its URL carries the recipient's number) at info level.
    logging.getLogger("twilio").setLevel(logging.WARNING)
