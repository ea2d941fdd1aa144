"""Reading a requested date/time ("Friday morning", "demain à 15h", "el martes a las 10") in the lead's zone.

A small table-driven reader rather than dateparser (1.2, measured on this machine against a fixed base,
languages=[lang], PREFER_DATES_FROM=future, TIMEZONE): its import takes ~150 ms and its first call ~195 ms
(paid at every process start), and a warm `search_dates` costs 1-2.5 ms per message (12 ms for "demain à
15h"), most of the responder's 5 ms p50 budget; and it is wrong on the cases that matter here:
"el martes a las 10" -> 2 October 2027, "mañana por la mañana" -> tomorrow at the current clock time (no
morning), "I may come by" -> May 2027, "l'après-midi" -> nothing, and it has no notion of a part of day
(precision). This reader costs ~30 µs per message and its tables are the list of what it understands.

Rules (the moment returned is ahead of `now`, read in `zone`, except a relative day kept as said):
- A weekday names its next occurrence; a weekday equal to today means today if the requested time (or the
  part of day's end) is still ahead, else the same weekday next week; a bare weekday said on that weekday
  ("Friday" on a Friday, no time) means next week: "today" says today. "next Tuesday" never means today.
- A time or a part of day without a day is today if still ahead, else tomorrow.
- An explicit date already past this year is next year's. "12/12" is month/day in English, day/month in
  French and Spanish.
- A clock hour 1-7 without am/pm (or a part of day) is read as the afternoon: businesses book 9-19.
- Spanish "mañana" alone is tomorrow; "por la mañana" / "de la mañana" is the morning.
- Ambiguous short words ("may", "sat", "sun", "mar") are not read on their own: a month only next to a day.
- A relative day ("today", "demain", "hoy") is kept as said even when its time is already past.
A wall-clock time that does not exist (skipped by a DST change) moves forward by the gap.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class RequestedTime:
    """A requested moment: `start` (aware, in `zone`); `end` for a day or part of day, None for a clock time."""

    text: str  # the words it was read from, as the lead wrote them
    start: datetime
    end: datetime | None
    zone: str
    precision: str  # "day" | "part_of_day" | "time"

    def as_json(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start.isoformat(),
                "end": self.end.isoformat() if self.end else None, "zone": self.zone, "precision": self.precision}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RequestedTime:
        return cls(d["text"], datetime.fromisoformat(d["start"]),
                   datetime.fromisoformat(d["end"]) if d.get("end") else None, d["zone"], d["precision"])


_WEEKDAYS = {
    "en": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"],
    "fr": ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"],
    "es": ["lunes", "martes", "miercoles", "jueves", "viernes", "sabado", "domingo"],
}
_MONTHS = {
    "en": ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"],
    "fr": ["janvier", "fevrier", "mars", "avril", "mai", "juin", "juillet", "aout", "septembre", "octobre",
           "novembre", "decembre"],
    "es": ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
           "noviembre", "diciembre"],
}
_MONTH_ABBR = {"jan": 1, "feb": 2, "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "sept": 9, "oct": 10,
               "nov": 11, "dec": 12}
# Parts of the day: (start hour, end hour). Patterns are matched on lowercased, accent-free text.
_PARTS = {"morning": (9, 12), "noon": (12, 14), "afternoon": (12, 17), "evening": (17, 21)}
_PART_WORDS = {
    "en": [(r"\bmorning\b", "morning"), (r"\b(?:noon|midday|lunch ?time)\b", "noon"),
           (r"\bafternoon\b", "afternoon"), (r"\b(?:evening|tonight)\b", "evening")],
    "fr": [(r"\bmatin(?:ee)?\b", "morning"), (r"\bmidi\b(?<!apres-midi)(?<!apres midi)", "noon"),
           (r"\bapres[- ]midi\b", "afternoon"), (r"\bsoir(?:ee)?\b", "evening")],
    "es": [(r"\b(?:por|de|en) la manana\b", "morning"), (r"\bmediodia\b", "noon"),
           (r"\b(?:por|de|en|esta) la tarde\b|\besta tarde\b", "afternoon"),
           (r"\b(?:por|de|en) la noche\b|\besta noche\b", "evening")],
}
# Relative days: (pattern, days from today). Longer phrases first.
_RELATIVE = {
    "en": [(r"\bday after tomorrow\b", 2), (r"\btomorrow\b", 1), (r"\btoday\b|\btonight\b", 0)],
    "fr": [(r"\bapres[- ]demain\b", 2), (r"\bdemain\b", 1), (r"\baujourd'?hui\b|\bce soir\b", 0)],
    "es": [(r"\bpasado manana\b", 2), (r"(?<!la )\bmanana\b", 1), (r"\bhoy\b|\besta (?:tarde|noche)\b", 0)],
}
_NEXT = {"en": r"next ", "fr": r"", "es": r""}
_NEXT_AFTER = {"en": "", "fr": r" prochain", "es": r" (?:que viene|proximo)"}

_AMPM = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*([ap])\.?\s?m\b\.?")
_COLON = re.compile(r"\b(?:at |a las |a la |vers |a )?(\d{1,2}):(\d{2})\b")
_FR_H = re.compile(r"\b(?:a |vers )?(\d{1,2})\s?h\s?(\d{2})?\b")
_ES_LAS = re.compile(r"\ba (?:las|la) (\d{1,2}|una)(?: y (media|cuarto))?\b")
_EN_AT = re.compile(r"\bat (\d{1,2})\b(?![/:.\d])")
_NUMERIC_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})(?:/(\d{2,4}))?\b")


def _fold(text: str) -> str:
    """Lowercase, accents removed, apostrophes unified: the same length as the text, so spans map back."""
    out = []
    for ch in text.lower():
        base = unicodedata.normalize("NFD", ch)[0]
        out.append("'" if base in "\u2019`" else base)
    return "".join(out)


@dataclass
class _Found:
    day: date | None = None
    weekday: int | None = None
    strictly_after_today: bool = False
    part: str | None = None
    hour: int | None = None
    minute: int = 0
    meridiem: str | None = None  # "a" | "p"
    spans: list[tuple[int, int]] | None = None

    def span(self, s: int, e: int) -> None:
        if self.spans is None:
            self.spans = []
        self.spans.append((s, e))


def read_requested_time(text: str, language: str, zone: str, now: datetime) -> RequestedTime | None:
    """The date/time `text` asks for, in `zone`, or None when it names none. `language`: en | fr | es
    (anything else is read as English)."""
    lang = language if language in _WEEKDAYS else "en"
    s = _fold(text)
    tz = ZoneInfo(zone)
    local_now = now.astimezone(tz)
    today = local_now.date()
    f = _Found()
    _read_day(s, lang, today, f)
    _read_part(s, lang, f)
    _read_clock(s, lang, f)
    if f.spans is None:
        return None
    hour = f.hour
    if hour is not None:
        if f.meridiem == "p" and hour < 12:
            hour += 12
        elif f.meridiem == "a" and hour == 12:
            hour = 0
        elif f.meridiem is None and f.part in ("afternoon", "evening") and hour < 12:
            hour += 12
        elif f.meridiem is None and f.part is None and 1 <= hour <= 7:
            hour += 12
        if hour > 23 or f.minute > 59:
            hour = None
    if f.day is None and f.weekday is None and hour is None and f.part is None:
        return None

    def moment(d: date) -> tuple[datetime, datetime | None, str]:
        if hour is not None:
            return _at(d, time(hour, f.minute), tz), None, "time"
        if f.part is not None:
            a, b = _PARTS[f.part]
            return _at(d, time(a), tz), _at(d, time(b), tz), "part_of_day"
        return _at(d, time(0), tz), _at(d + timedelta(days=1), time(0), tz), "day"

    if f.day is not None:
        d = f.day
        start, end, precision = moment(d)
        while (end or start) <= local_now and d < today + timedelta(days=366):
            # An explicit date already past is next year's; a relative day's time already past stays (it was asked).
            if f.weekday == -1:
                break
            d = date(d.year + 1, d.month, d.day) if not (d.month == 2 and d.day == 29) else d + timedelta(days=365)
            start, end, precision = moment(d)
    elif f.weekday is not None:
        ahead = (f.weekday - today.weekday()) % 7
        if ahead == 0 and (f.strictly_after_today or (hour is None and f.part is None)):
            ahead = 7
        d = today + timedelta(days=ahead)
        start, end, precision = moment(d)
        if (end or start) <= local_now:
            d += timedelta(days=7)
            start, end, precision = moment(d)
    else:
        d = today
        start, end, precision = moment(d)
        if (end or start) <= local_now:
            d += timedelta(days=1)
            start, end, precision = moment(d)
    spans = f.spans
    a, b = min(x for x, _ in spans), max(y for _, y in spans)
    return RequestedTime(text[a:b].strip(), start, end, zone, precision)


def _at(d: date, t: time, tz: ZoneInfo) -> datetime:
    # Through UTC and back: a wall time skipped by DST moves forward by the gap instead of being kept as is.
    return datetime.combine(d, t, tz).astimezone(UTC).astimezone(tz)


def _read_day(s: str, lang: str, today: date, f: _Found) -> None:
    for pattern, days in _RELATIVE[lang]:
        m = re.search(pattern, s)
        if m:
            f.day, f.weekday = today + timedelta(days=days), -1  # -1: a relative day, never moved a year
            f.span(*m.span())
            return
    for index, name in enumerate(_WEEKDAYS[lang]):
        m = re.search(rf"\b({_NEXT[lang]})?{name}({_NEXT_AFTER[lang]})?\b", s)
        if m:
            f.weekday = index
            f.strictly_after_today = bool(m.group(1) or m.group(2))
            f.span(*m.span())
            break
    found = _explicit_date(s, lang, today)
    if found is not None:
        d, span = found
        f.day = d
        if f.weekday is not None and f.weekday != d.weekday():
            f.weekday = None  # the date wins over a mismatching weekday
        f.span(*span)


def _explicit_date(s: str, lang: str, today: date) -> tuple[date, tuple[int, int]] | None:
    months = {name: i + 1 for i, name in enumerate(_MONTHS[lang])}
    if lang == "en":
        months.update(_MONTH_ABBR)
    names = "|".join(sorted(months, key=len, reverse=True))
    m = (re.search(rf"\b({names})\.? (\d{{1,2}})(?:st|nd|rd|th)?\b", s) if lang == "en" else None) or \
        re.search(rf"\b(\d{{1,2}})(?:st|nd|rd|th|er)?(?: de)? ({names})\b", s)
    if m:
        a, b = m.group(1), m.group(2)
        day_s, month_s = (b, a) if a in months else (a, b)
        return _valid(today.year, months[month_s], int(day_s), m.span())
    m = _NUMERIC_DATE.search(s)
    if m:
        x, y = int(m.group(1)), int(m.group(2))
        month, day = (x, y) if lang == "en" else (y, x)
        year = int(m.group(3)) if m.group(3) else today.year
        year = year + 2000 if year < 100 else year
        return _valid(year, month, day, m.span())
    return None


def _valid(year: int, month: int, day: int, span: tuple[int, int]) -> tuple[date, tuple[int, int]] | None:
    try:
        return date(year, month, day), span
    except ValueError:
        return None


def _read_part(s: str, lang: str, f: _Found) -> None:
    for pattern, part in _PART_WORDS[lang]:
        m = re.search(pattern, s)
        if m:
            f.part = part
            f.span(*m.span())
            return


def _read_clock(s: str, lang: str, f: _Found) -> None:
    m = _AMPM.search(s)
    if m:
        f.hour, f.minute, f.meridiem = int(m.group(1)), int(m.group(2) or 0), m.group(3)
        f.span(*m.span())
        return
    m = _COLON.search(s)
    if m:
        f.hour, f.minute = int(m.group(1)), int(m.group(2))
        f.span(*m.span())
        return
    if lang == "fr":
        m = _FR_H.search(s)
        if m:
            f.hour, f.minute = int(m.group(1)), int(m.group(2) or 0)
            f.span(*m.span())
            return
    if lang == "es":
        m = _ES_LAS.search(s)
        if m:
            f.hour = 1 if m.group(1) == "una" else int(m.group(1))
            f.minute = {"media": 30, "cuarto": 15}.get(m.group(2) or "", 0)
            f.span(*m.span())
            return
    if lang == "en":
        m = _EN_AT.search(s)
        if m:
            f.hour = int(m.group(1))
            f.span(*m.span())
