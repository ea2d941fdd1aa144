"""Compliance keywords (STOP / START / HELP), matched the way Twilio and the FCC describe them.

Only a single-word reply counts ("STOP PLEASE" is not a keyword; the intent classifier handles such
phrasings). Matching is case-insensitive, ignores surrounding whitespace and trailing punctuation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Keyword(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    # "YES" opts back in only a user who is currently opted out; otherwise it is an ordinary reply.
    YES = "yes"


_KEYWORDS: dict[str, Keyword] = {
    **dict.fromkeys(
        ["stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout", "opt out", "opt-out"],
        Keyword.OPT_OUT,
    ),
    **dict.fromkeys(["start", "unstop"], Keyword.OPT_IN),
    **dict.fromkeys(["help", "info"], Keyword.HELP),
    "yes": Keyword.YES,
}

_TRAILING_PUNCTUATION = re.compile(r"[\s.!?,;:¡¿…]+$")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class KeywordMatch:
    keyword: Keyword
    word: str  # the normalised word as received, e.g. "stop"


def normalise(body: str) -> str:
    text = _TRAILING_PUNCTUATION.sub("", body.strip()).casefold()
    return _WHITESPACE.sub(" ", text)


def match(body: str | None) -> KeywordMatch | None:
    """The compliance keyword `body` consists of, if it is exactly one."""
    if not body or len(body) > 40:
        return None
    word = normalise(body)
    keyword = _KEYWORDS.get(word)
    return KeywordMatch(keyword, word) if keyword else None
