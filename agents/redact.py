"""Masking personal data out of what the agents write to their decision log.

`mask_pii` walks a JSON-like value (dicts, lists, tuples, strings, numbers, booleans, None) and returns
the same shape with phone numbers and email addresses masked inside every string value. Dict keys,
numbers and booleans are returned untouched: a JSON integer is a count or an id, never a phone number
we were given as text.

What counts as a phone number, in order:

- Digits starting with "+" (separators allowed): an international number, 8 to 15 digits. Masked the way
  `services.phone.mask` masks E.164 ("+1 (415) 555-0101" -> "+14*******01").
- Digits with separators (space, ".", "-", parentheses), 7 digits or more: "415.555.0101",
  "06 12 34 56 78", "(415) 555-0101". Not when the groups read as thousands ("1 250 000",
  "12.500.000"), a decimal ("3.14159265"), a price ("125 000 000 €"), or a list of single digits.
- A bare run of digits only when it looks national or international: 10 NANP digits ("4155550101"),
  11 with a leading 1, 10 or 11 starting with the trunk 0 (France, UK), 9 starting with 6-9 (Spain), or
  11-15 digits that start with a country calling code other than 1 (WhatsApp's "wa_id" form). A 10-digit
  Unix timestamp starts with 1 and is left alone, as are order numbers of 8 digits or fewer.

Numbers glued to letters (Twilio's "SM0123...", hex ids, UUID tails), dates ("2026-11-22",
"22.11.2026"), times, ranges of years or hours ("2019-2026", "0900-1730"), ZIP+4 codes and IPv4
addresses are never phone numbers. Numbers without "+" become stars and their last two digits
("********01"): without a country code there is nothing more worth keeping.

An email address keeps its first character and its domain: "jane.doe@example.com" -> "j***@example.com".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, TypeVar, cast

import phonenumbers

from services import phone

_T = TypeVar("_T")

# Shared with agents.signals, which reads a stated email out of a message.
EMAIL = re.compile(
    r"(?<![\w.+\-])"  # start of the local part only: keeps a long word from being rescanned at every offset
    r"[\w+\-]+(?:\.[\w+\-]+)*@[^\W_](?:[\w\-]*[^\W_])?(?:\.[^\W_](?:[\w\-]*[^\W_])?)*\.[^\W\d_]{2,24}"
    r"(?![\w\-])"
)

_SEP_CHARS = " \u00a0\u202f.\\-\u2010-\u2013"  # spaces (incl. the French narrow no-break space), dot, dashes
_SEP = rf"(?:[{_SEP_CHARS}]|\)[{_SEP_CHARS}]?|[{_SEP_CHARS}]?\()"
_SKIP = (
    # ISO dates and timestamps, with or without a time and a UTC offset.
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+\-]\d{2}(?::?\d{2})?)?)?"
    # Day-month-year with a four-digit year; "06.12.34.56.78" must stay a phone number.
    r"|\d{1,2}(?P<dsep>[.\-])\d{1,2}(?P=dsep)\d{4}(?![.\-]?\d)"
    r"|(?:19|20)\d{2} ?[\-\u2013] ?(?:19|20)\d{2}(?![.\-]?\d)"  # years: "2019-2026"
    r"|(?:[01]\d|2[0-3])[0-5]\d ?[\-\u2013] ?(?:[01]\d|2[0-3])[0-5]\d(?![.\-]?\d)"  # hours: "0900-1730"
    r"|\d{5}-\d{4}(?![.\-]?\d)"  # ZIP+4
    r"|\d{1,3}(?:\.\d{1,3}){3}(?![.\d])"  # IPv4
)
# A separator is never empty, so the digit groups split one way only and matching stays linear.
_PHONE = rf"(?:\+|%2[Bb])?\(?\d{{1,15}}(?:{_SEP}\d{{1,15}}){{0,12}}"
# The lookahead first: most positions fail on one character test instead of two lookbehinds.
_PHONE_OR_SKIP = re.compile(
    rf"(?=[\d+(%])(?<!\w)(?<!\w[.\-])(?:(?P<skip>{_SKIP})|(?P<phone>{_PHONE})(?!(?!x\d)\w)(?![.\-]\w))"
)
_DIGIT = re.compile(r"\d")
_DIGIT_GROUP = re.compile(r"\d+")
_NOT_DIGIT = re.compile(r"\D+")
_NANP = re.compile(r"[2-9]\d{2}[2-9]\d{6}")
_CURRENCY_BEFORE = re.compile(r"[$€£¥]\s?\(?$")
_CURRENCY_AFTER = re.compile(
    r"\s?(?:[$€£¥]|(?:eur|euros?|usd|dollars?|pesos?|mxn|cad|gbp)(?![^\W_]))", re.IGNORECASE
)
_THOUSANDS_SEPARATORS = frozenset(" \u00a0\u202f.")
_CYCLE = "[cycle]"


def mask_pii(value: _T) -> _T:
    """`value` with every phone number and email address inside its strings masked; same shape.

    Never raises on JSON-like input, however deeply nested (the walk is iterative). A container that
    contains itself, which JSON cannot express, has the repeated reference replaced by "[cycle]".
    """
    if isinstance(value, str):
        return cast(_T, _mask_str(value))
    if isinstance(value, dict | list | tuple):
        return cast(_T, _mask_container(value))
    return value


def mask_text(text: str) -> str:
    """`text` with its phone numbers and email addresses masked."""
    # Emails first, so that "4155550101@vtext.com" is masked as an address, not as a number.
    if "@" in text:
        text = EMAIL.sub(_replace_email, text)
    if _DIGIT.search(text):
        text = _PHONE_OR_SKIP.sub(_replace_phone, text)
    return text


def _mask_str(value: str) -> str:
    masked = mask_text(value)
    # Hands back the very object when nothing changed, so a StrEnum stays a StrEnum.
    return value if masked == value else masked


def _children(container: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> Iterator[tuple[Any, Any]]:
    return iter(container.items()) if isinstance(container, dict) else enumerate(container)


def _empty_like(container: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> Any:
    # Lists (and tuples, frozen once full) are pre-sized, so every output is filled by `out[key] = ...`.
    return {} if isinstance(container, dict) else [None] * len(container)


def _mask_container(root: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> Any:
    # Depth-first with an explicit stack: nesting depth is bounded by memory, not the recursion limit.
    # A frame is (children left to visit, output, source, parent's output, key in the parent).
    root_out = _empty_like(root)
    stack = [(_children(root), root_out, root, None, None)]
    on_path = {id(root)}
    while stack:
        children, out, source, parent, slot = stack[-1]
        for key, child in children:
            if isinstance(child, str):
                out[key] = _mask_str(child)
            elif isinstance(child, dict | list | tuple):
                if id(child) in on_path:
                    out[key] = _CYCLE
                    continue
                out[key] = child_out = _empty_like(child)
                stack.append((_children(child), child_out, child, out, key))
                on_path.add(id(child))
                break
            else:
                out[key] = child
        else:
            stack.pop()
            on_path.discard(id(source))
            if isinstance(source, tuple) and parent is not None:
                parent[slot] = tuple(out)
    return tuple(root_out) if isinstance(root, tuple) else root_out


def _replace_email(match: re.Match[str]) -> str:
    email = match.group()
    return f"{email[0]}***@{email.rpartition('@')[2]}"


def _replace_phone(match: re.Match[str]) -> str:
    candidate = match.group("phone")
    if candidate is None:
        return match.group(0)  # a date, range, ZIP+4 or IP address: consumed so no phone starts inside it
    digits = _NOT_DIGIT.sub("", candidate)
    if candidate.startswith(("+", "%2B", "%2b")):
        if candidate[0] == "%":  # URL-encoded "+", as in a provider's query string
            digits = digits[1:]
        if len(digits) < 8:
            return candidate
        masked = (phone.mask("+" + digits) or "") if len(digits) <= 15 else _stars(digits)
        return candidate[:3] + masked[1:] if candidate[0] == "%" else masked
    if _is_national_phone(candidate, digits, match.string, match.start(), match.end()):
        return _stars(digits)
    return candidate


def _stars(digits: str) -> str:
    return "*" * (len(digits) - 2) + digits[-2:]


def _is_national_phone(candidate: str, digits: str, text: str, start: int, end: int) -> bool:
    groups = _DIGIT_GROUP.findall(candidate)
    if len(groups) == 1:
        return _is_bare_phone(digits)
    if len(digits) < 7:
        return False
    if _CURRENCY_BEFORE.search(text, max(0, start - 3), start) or _CURRENCY_AFTER.match(text, end):
        return False
    separators = set(_NOT_DIGIT.findall(candidate))
    if (
        len(separators) == 1
        and separators <= _THOUSANDS_SEPARATORS
        and len(groups[0]) <= 2
        and all(len(group) == 3 for group in groups[1:])
    ):
        return False  # "1 250 000", "12.500.000"
    if len(groups) == 2 and (separators == {"."} or min(len(g) for g in groups) < 3):
        return False  # "3.14159265", "12 34567"
    return sum(len(group) == 1 for group in groups) <= 2  # "1 2 3 4 5 6 7" is a list, not a number


def _is_bare_phone(digits: str) -> bool:
    n = len(digits)
    if n == 9:
        return digits[0] in "6789"
    if n == 10:
        return digits[0] == "0" or _NANP.fullmatch(digits) is not None
    if n == 11 and digits[0] in "01":
        return digits[0] == "0" or _NANP.fullmatch(digits, 1) is not None
    if 11 <= n <= 15:
        return _starts_with_country_code(digits)
    return False


def _starts_with_country_code(digits: str) -> bool:
    # Country calling codes are prefix-free, so at most one of the three prefixes is a code. NANP (1)
    # is handled by its own exact rule, which keeps 15-digit Meta ids like "1065403522..." unmasked.
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return code != 1
    return False
