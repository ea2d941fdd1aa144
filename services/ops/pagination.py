"""Keyset pagination: lists answer {"items": [...], "next_cursor": ...} with an opaque cursor.

A cursor is the last id of a page and a MAC over it and the list's name, keyed from the operator
key: 24 bytes, 32 URL-safe base64 characters. Clients cannot forge one (so no position we did not
issue, above int8 or otherwise, ever reaches a query), and one list's cursor is refused by another
list instead of silently skipping rows there. Rotating the operator key invalidates every cursor.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.badinput import BadInput

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

_POSITION_BYTES = 8
_MAC_BYTES = 16
_CURSOR_CHARS = 32  # base64 of 24 bytes, no padding needed
_MAX_POSITION = 2**63 - 1  # bigint


@functools.lru_cache(maxsize=8)
def cursor_key(operator_key: str) -> bytes:
    """The MAC key for cursors, derived from (never equal to) the operator key."""
    return hmac.new(operator_key.encode("utf-8", "surrogateescape"), b"parley pagination cursor v1",
                    hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Pager:
    """Cursors of one list (`listing`, e.g. "users"), signed with `key` (see `cursor_key`)."""

    key: bytes
    listing: str

    def _mac(self, position: bytes) -> bytes:
        return hmac.new(self.key, self.listing.encode() + b"\x00" + position, hashlib.sha256).digest()[:_MAC_BYTES]

    def cursor(self, position: int) -> str:
        if not 0 < position <= _MAX_POSITION:
            raise ValueError(f"position {position} is not a bigint id")
        raw = position.to_bytes(_POSITION_BYTES, "big")
        return base64.urlsafe_b64encode(raw + self._mac(raw)).decode()

    def position(self, cursor: str | None) -> int:
        """The id a cursor of this list points after; 0 (the start) without one."""
        if not cursor:
            return 0
        if len(cursor) != _CURSOR_CHARS or not cursor.isascii():
            raise BadInput("cursor", "is not a cursor this list issued")
        try:
            data = base64.urlsafe_b64decode(cursor)
        except (ValueError, binascii.Error):
            raise BadInput("cursor", "is not a cursor this list issued") from None
        raw, mac = data[:_POSITION_BYTES], data[_POSITION_BYTES:]
        if not hmac.compare_digest(mac, self._mac(raw)):
            raise BadInput("cursor", "is not a cursor this list issued")
        position = int.from_bytes(raw, "big")
        if not 0 < position <= _MAX_POSITION:  # only a cursor issued by a broken build could say so
            raise BadInput("cursor", "is not a cursor this list issued")
        return position

    def page(self, rows: Sequence[Mapping[str, Any]], size: int, key: str = "id") -> dict[str, Any]:
        """`rows` was fetched with LIMIT size + 1: the extra row only says whether there is a next page."""
        items = [dict(r) for r in rows[:size]]
        next_cursor = self.cursor(items[-1][key]) if len(rows) > size else None
        return {"items": items, "next_cursor": next_cursor}


def limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    # Digits only: int() would also take " 5", "+5", "1_0" and other scripts' digits, and its cost
    # grows with the length of the text.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 4:
        raise BadInput("limit", f"must be an integer between 1 and {MAX_LIMIT}")
    value = int(raw)
    if not 1 <= value <= MAX_LIMIT:
        raise BadInput("limit", f"must be an integer between 1 and {MAX_LIMIT}")
    return value
