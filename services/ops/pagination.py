"""Keyset pagination: lists answer {"items": [...], "next_cursor": ...} with an opaque cursor."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class BadParameter(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def decode(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = raw.partition(":")
        if version != "v1":
            raise ValueError(version)
        last_id = int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadParameter("cursor", "is not a cursor this API issued") from None
    if last_id < 0:
        raise BadParameter("cursor", "is not a cursor this API issued")
    return last_id


def limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter("limit", "must be an integer") from None
    if not 1 <= value <= MAX_LIMIT:
        raise BadParameter("limit", f"must be between 1 and {MAX_LIMIT}")
    return value


def page(rows: Sequence[Mapping[str, Any]], size: int, key: str = "id") -> dict[str, Any]:
    """`rows` was fetched with LIMIT size + 1: the extra row only says whether there is a next page."""
    items = [dict(r) for r in rows[:size]]
    next_cursor = encode(items[-1][key]) if len(rows) > size else None
    return {"items": items, "next_cursor": next_cursor}
