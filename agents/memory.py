"""What a lead's memory keeps across messages: the strongest commercial intent, what the lead wants, when,
what is still open, and the ai_summary built from them (so a later "HELP" or "thanks" erases none of it).

Pure functions: agents/leads.py merges a message's reading into the locked lead row at commit time.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from agents.intent import Intent
from agents.when import RequestedTime

# The strongest commercial intent wins: a booking is not overwritten by a later HELP, thanks, greeting or
# question. A lead saying no (not interested, opt-out, wrong number) is news and always replaces what was
# there; a lead who later comes back (a question, interest, a booking, an opt-in) replaces such a no.
# HELP and OTHER never replace anything but each other and nothing. A complaint outranks a question (it needs
# a person) but not interest or a booking: the message keeps its own intent in messages.intent.
RANK: Mapping[Intent, int] = {
    Intent.BOOKING: 6, Intent.INTERESTED: 5, Intent.COMPLAINT: 4, Intent.QUESTION: 3, Intent.OPT_IN: 2,
    Intent.HELP: 1, Intent.OTHER: 0,
}
TERMINAL = frozenset({Intent.NOT_INTERESTED, Intent.OPT_OUT, Intent.WRONG_NUMBER})
# Messages whose words name what the lead wants.
WANTS_INTENTS = frozenset({Intent.BOOKING, Intent.INTERESTED, Intent.QUESTION})


def strongest(previous: str | None, new: Intent) -> Intent:
    """The intent the lead keeps after a message of intent `new`."""
    if previous is None or new in TERMINAL:
        return new
    old = Intent(previous)
    if old in TERMINAL:
        return new if RANK[new] >= RANK[Intent.OPT_IN] else old
    return new if RANK[new] >= RANK[old] else old


_INTENT_PHRASES = {
    Intent.OPT_OUT: "Asked to stop receiving messages", Intent.OPT_IN: "Asked to receive messages again",
    Intent.HELP: "Asked for help", Intent.INTERESTED: "Interested", Intent.NOT_INTERESTED: "Not interested",
    Intent.QUESTION: "Has a question", Intent.BOOKING: "Wants to book, reschedule or cancel an appointment",
    Intent.COMPLAINT: "Complained", Intent.WRONG_NUMBER: "Says this is the wrong number", Intent.OTHER: "Replied",
}

# "What the lead wants": the words after a booking/interest verb, up to a word that starts the when/why.
_TRIGGERS = {
    "en": r"\b(?:appointment for|booking for|book(?:ing)?|schedule|reserve|interested in|looking for|need|"
          r"want(?! to\b)|get|price (?:of|for)|cost of|quote for|how much (?:is|are|for|does))\s+",
    "fr": r"\b(?:rendez-vous pour|rdv pour|reserver|besoin d'|besoin de|pour|interesse par|prix d'|prix de|"
          r"tarif d'|tarif de)\s*",
    "es": r"\b(?:cita para|reservar|agendar|necesito|quiero(?! reservar| agendar| una cita)|para|"
          r"interesado en|precio de)\s+",
}
_ARTICLES = {"en": {"a", "an", "the", "my", "some"}, "fr": {"un", "une", "le", "la", "les", "mon", "ma", "des",
                                                              "du", "l'"},
             "es": {"un", "una", "el", "la", "los", "las", "mi"}}
_STOP = set("""on at in for this next tomorrow today tonight please pls and with or by before after around
    sometime asap me it to is are can could would when what how much monday tuesday wednesday thursday friday
    saturday sunday morning afternoon evening demain aujourd'hui a le ce cette vers et avec svp s'il lundi mardi
    mercredi jeudi vendredi samedi dimanche matin soir apres-midi semaine prochain prochaine manana hoy el para
    por con y o lunes martes miercoles jueves viernes sabado domingo tarde noche esta este que favor de""".split())
_GENERIC = {"appointment", "rendez-vous", "rdv", "cita", "time", "slot", "booking", "reservation", "help",
            "question", "appointments", "information", "info", "this", "that", "something"}
_WORD = re.compile(r"[\w'-]+", re.UNICODE)


def wants_from(text: str, language: str) -> str | None:
    """The service or topic a booking/question/interest message names ("book a cleaning" -> "a cleaning"),
    or None when it names none (or only "an appointment")."""
    lang = language if language in _TRIGGERS else "en"
    low = text.lower()
    for m in re.finditer(_TRIGGERS[lang], _unaccent(low)):
        words = _WORD.findall(low[m.end():])[:5]
        kept: list[str] = []
        for w in words:
            plain = _unaccent(w)
            if not kept and plain in _ARTICLES[lang]:
                kept.append(w)
                continue
            if plain in _STOP or plain.isdigit() or re.match(r"\d", plain):
                break
            kept.append(w)
            if len(kept) >= 4:
                break
        nouns = [w for w in kept if _unaccent(w) not in _ARTICLES[lang]]
        if not nouns or _unaccent(nouns[0]) in _GENERIC:
            continue
        return " ".join(kept)
    return None


def _unaccent(s: str) -> str:
    return "".join(unicodedata.normalize("NFD", c)[0] for c in s)


_DAYS = {"en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
         "fr": ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"],
         "es": ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"]}
_MONTHS = {"en": ["January", "February", "March", "April", "May", "June", "July", "August", "September",
                  "October", "November", "December"],
           "fr": ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
                  "octobre", "novembre", "décembre"],
           "es": ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
                  "octubre", "noviembre", "diciembre"]}
_PART_NAMES = {"en": {9: "morning", 12: "afternoon", 17: "evening"},
               "fr": {9: "matin", 12: "après-midi", 17: "soir"},
               "es": {9: "por la mañana", 12: "por la tarde", 17: "por la noche"}}
_NOON = {"en": "midday", "fr": "midi", "es": "mediodía"}


def render_time(rt: RequestedTime, language: str) -> str:
    """"Friday 4 December, morning" / "vendredi 4 décembre, 15h00" / "viernes 4 de diciembre, por la mañana"."""
    lang = language if language in _DAYS else "en"
    start = rt.start.astimezone(ZoneInfo(rt.zone))
    day = f"{_DAYS[lang][start.weekday()]} {start.day} {'de ' if lang == 'es' else ''}{_MONTHS[lang][start.month - 1]}"
    if rt.precision == "time":
        clock = f"{start.hour}h{start.minute:02d}" if lang == "fr" else f"{start.hour}:{start.minute:02d}"
        return f"{day}, {clock}"
    if rt.precision == "part_of_day":
        end = rt.end.astimezone(ZoneInfo(rt.zone)) if rt.end else None
        if start.hour == 12 and end is not None and end.hour == 14:
            return f"{day}, {_NOON[lang]}"
        return f"{day}, {_PART_NAMES[lang].get(start.hour, f'{start.hour}:00')}"
    return day


@dataclass(frozen=True, slots=True)
class Reading:
    """What one inbound message says, before it is merged into the lead."""

    intent: Intent
    requested_time: RequestedTime | None
    wants: str | None
    question: str | None  # the message itself, when it asks something
    latest: str
    urgency: str
    tone: str
    earlier: str | None  # the conversation's stored summary


@dataclass(frozen=True, slots=True)
class Memory:
    intent: Intent
    intent_message_id: int
    requested_time: dict[str, Any] | None
    wants: str | None
    open_question: str | None
    ai_summary: str


def merge(old: Mapping[str, Any] | None, r: Reading, message_id: int, language: str | None) -> Memory:
    """The lead's memory after message `message_id`, from the locked previous row (None for a new lead)."""
    prev = old or {}
    intent = strongest(prev.get("intent"), r.intent)
    intent_message_id = message_id if intent != prev.get("intent") or r.intent == intent \
        else (prev.get("intent_message_id") or message_id)
    requested = ({**r.requested_time.as_json(), "message_id": message_id} if r.requested_time is not None
                 else _json(prev.get("requested_time")))
    wants = r.wants or prev.get("wants")
    if r.intent in TERMINAL:
        open_question = None
    elif r.question is not None:
        open_question = r.question
    else:
        open_question = prev.get("open_question")
    return Memory(intent, intent_message_id, requested, wants, open_question,
                  synopsis(intent, r, requested, wants, open_question, language or "en"))


def _json(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        loaded: dict[str, Any] = json.loads(value)
        return loaded
    return dict(value)


def _clip(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[:n - 3].rstrip() + "..."


def synopsis(intent: Intent, r: Reading, requested: dict[str, Any] | None, wants: str | None,
             open_question: str | None, language: str) -> str:
    """The lead's ai_summary: the kept intent, what and when, what is open, the latest message, then the
    conversation's stored summary (written every 50 messages). Microseconds per message."""
    head = _INTENT_PHRASES[intent]
    what = [x for x in (wants, render_time(RequestedTime.from_json(requested), language) if requested else None)
            if x]
    line = f"{head}: {'; '.join(what)}" if what else head
    line += f" ({r.urgency} urgency, {r.tone} tone)."
    if open_question:
        line += f" Open question: \u201c{_clip(open_question)}\u201d."
    line += f" Latest: \u201c{_clip(r.latest)}\u201d"
    return f"{line} Earlier: {r.earlier}" if r.earlier else line
