"""The business profile (issue 12 §1): who the business is, how its agents speak, when they may reply,
and its FAQ. One row per tenant in `business_profiles` (a tenant without one has the defaults, its
business name being the tenant's name) and its `faq_entries`; this module is their one writer.

Templates in the profile (tagline, handoff message, FAQ answers) are Jinja2 rendered in the sandbox with
StrictUndefined: a template that names an unknown variable, does not parse, or reaches for Python
internals is refused when it is written, as a BadInput naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg
import jinja2
from jinja2 import sandbox

from db import queries
from services.badinput import BadInput

Q = queries.load(__file__, "profile.sql")


class Tone(StrEnum):
    FRIENDLY = "Friendly"
    PROFESSIONAL = "Professional"
    FORMAL = "Formal"
    ENERGETIC = "Energetic"


class FollowupSpeed(StrEnum):
    INSTANT = "Instant"
    WITHIN_1_HOUR = "Within 1 hour"
    SAME_DAY = "Same day"


LANGUAGES = ("en", "fr", "es")

# The columns PATCH /api/tenant's `profile` and `parley tenant apply` may set, in the table's order.
FIELDS = ("business_name", "industry", "primary_service", "booking_link", "tagline", "tone", "language",
          "followup_speed", "ai_personalized_reply", "opening_hours", "handoff_message")
# Fields that are templates (validated when written, rendered when used).
TEMPLATE_FIELDS = ("tagline", "handoff_message")

MAX_FAQ_ENTRIES = 200
MAX_QUESTION = 500
MAX_ANSWER = 1000
MAX_KEYWORDS = 20
MAX_KEYWORD = 100

DEFAULT_HANDOFF = {
    "en": "Thanks for your message. A member of the {{ business_name }} team will get back to you shortly.",
    "fr": "Merci pour votre message. Un membre de l'équipe {{ business_name }} vous répondra très bientôt.",
    "es": "Gracias por su mensaje. Una persona del equipo de {{ business_name }} le responderá en breve.",
}

# Follow-up speed → how long an agent reply waits (docs/conversation-design.md; quiet hours apply on top).
REPLY_DELAY = {
    FollowupSpeed.INSTANT: timedelta(0),
    FollowupSpeed.WITHIN_1_HOUR: timedelta(minutes=15),
    FollowupSpeed.SAME_DAY: timedelta(hours=2),
}

_env = sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


@dataclass(frozen=True)
class FaqEntry:
    id: int
    question: str
    answer: str
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    tenant_id: int
    business_name: str  # the tenant's name when unset
    industry: str | None = None
    primary_service: str | None = None
    booking_link: str | None = None
    tagline: str | None = None
    tone: Tone = Tone.FRIENDLY
    language: str = "en"  # "en" | "fr" | "es"
    followup_speed: FollowupSpeed = FollowupSpeed.INSTANT
    ai_personalized_reply: bool = True
    opening_hours: str | None = None
    handoff_message: str | None = None
    help_text: str = ""
    faq: tuple[FaqEntry, ...] = field(default=())

    def variables(self) -> dict[str, object]:
        """What a template may name: the profile's plain fields (not the FAQ, nor the templates themselves)."""
        skip = {"faq", "handoff_message", "tagline"}
        found: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        found["tone"], found["followup_speed"] = str(self.tone), str(self.followup_speed)
        return found

    def render(self, field: str, template: str, **extra: object) -> str:
        """`template` rendered with the profile's fields (and `extra`, e.g. lead_name) as variables;
        BadInput(field) for an undefined variable, a syntax error or a sandbox escape."""
        return _render(field, template, {**self.variables(), **extra})

    def handoff_text(self, language: str | None = None) -> str:
        """The handoff message (the profile's, else the default in `language`, else the profile's language)."""
        if self.handoff_message is not None:
            return self.render("profile.handoff_message", self.handoff_message)
        lang = language if language in DEFAULT_HANDOFF else self.language
        return self.render("profile.handoff_message", DEFAULT_HANDOFF.get(lang, DEFAULT_HANDOFF["en"]))

    def as_json(self) -> dict[str, Any]:
        """The profile fields as the API shows them (the FAQ apart)."""
        return {name: (str(v) if isinstance(v, StrEnum) else v)
                for name in FIELDS for v in [getattr(self, name)]}


def faq_json(entries: Sequence[FaqEntry]) -> list[dict[str, Any]]:
    return [{"id": e.id, "question": e.question, "answer": e.answer, "keywords": list(e.keywords)} for e in entries]


def _render(field: str, template: str, variables: Mapping[str, object]) -> str:
    try:
        return _env.from_string(template).render(**variables)
    except jinja2.TemplateSyntaxError as exc:
        raise BadInput(field, f"is not a valid template: {exc.message} (line {exc.lineno})") from None
    except sandbox.SecurityError as exc:
        raise BadInput(field, f"is refused by the template sandbox: {exc}") from None
    except jinja2.UndefinedError as exc:
        raise BadInput(field, f"names an unknown template variable: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - a template may fail in any way ({{ 1/0 }}): the writer's input
        raise BadInput(field, f"cannot be rendered: {type(exc).__name__}") from None


# A stand-in profile for validating templates when written: every variable defined, with a value of its type.
_SAMPLE_VARIABLES = {**Profile(0, "Business", "Industry", "Service", "https://example.com", "Tagline",
                               opening_hours="Mon-Fri 9-5", help_text="Help").variables(),
                     "lead_name": "Alex"}
# Extra variables a template may name when rendered (the caller passes them).
EXTRA_VARIABLES = ("lead_name",)


def check_template(field: str, template: str) -> str:
    """`template` if it renders with every profile variable defined, else BadInput(field)."""
    _render(field, template, _SAMPLE_VARIABLES)
    return template


def reply_at(speed: FollowupSpeed, now: datetime) -> datetime:
    """When an agent reply may go (its `scheduled_for`): Instant now, Within 1 hour in 15 min, Same day in 2 h."""
    return now + REPLY_DELAY[FollowupSpeed(speed)]


# --- reading --------------------------------------------------------------------------------------


def _keywords(raw: object) -> tuple[str, ...]:
    return tuple(str(k) for k in raw) if isinstance(raw, list) else ()


def _profile(row: asyncpg.Record) -> Profile:
    faq = row["faq"]
    if isinstance(faq, str):  # a connection without the pool's jsonb codec
        faq = json.loads(faq)
    return Profile(
        tenant_id=row["tenant_id"], business_name=row["business_name"] or row["tenant_name"],
        industry=row["industry"], primary_service=row["primary_service"], booking_link=row["booking_link"],
        tagline=row["tagline"], tone=Tone(row["tone"]), language=row["language"],
        followup_speed=FollowupSpeed(row["followup_speed"]), ai_personalized_reply=row["ai_personalized_reply"],
        opening_hours=row["opening_hours"], handoff_message=row["handoff_message"], help_text=row["help_text"],
        faq=tuple(FaqEntry(int(e["id"]), e["question"], e["answer"], _keywords(e["keywords"])) for e in faq),
    )


async def load_many(conn: asyncpg.Connection, tenant_ids: Sequence[int]) -> dict[int, Profile]:
    """The profiles of `tenant_ids` (those that are tenants), in one round trip."""
    rows = await conn.fetch(Q.load_many, list(tenant_ids))
    return {row["tenant_id"]: _profile(row) for row in rows}


async def load(conn: asyncpg.Connection, tenant_id: int) -> Profile | None:
    """The tenant's profile; None when there is no such tenant."""
    return (await load_many(conn, [tenant_id])).get(tenant_id)


# --- writing --------------------------------------------------------------------------------------


def check_changes(changes: Mapping[str, object], prefix: str = "profile.") -> dict[str, object]:
    """`changes` (field → value, None resets) checked: enums, language, link, templates; BadInput naming
    `prefix + field`. The API's and the file's bodies check types and lengths before this."""
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise BadInput(prefix + sorted(unknown)[0], "is not a profile field")
    checked: dict[str, object] = {}
    for name, value in changes.items():
        if value is None:
            checked[name] = None
        elif name == "tone":
            checked[name] = _choice(prefix + name, value, [t.value for t in Tone])
        elif name == "followup_speed":
            checked[name] = _choice(prefix + name, value, [s.value for s in FollowupSpeed])
        elif name == "language":
            checked[name] = _choice(prefix + name, value, list(LANGUAGES))
        elif name == "booking_link":
            checked[name] = check_link(prefix + name, str(value))
        elif name in TEMPLATE_FIELDS:
            checked[name] = check_template(prefix + name, str(value))
        else:
            checked[name] = value
    return checked


def _choice(field: str, value: object, allowed: Sequence[str]) -> str:
    text = str(value)
    if text not in allowed:
        raise BadInput(field, f"must be one of {', '.join(allowed)}")
    return text


def check_link(field: str, value: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
    except ValueError:
        raise BadInput(field, "is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise BadInput(field, "must be an http(s) URL (e.g. https://example.com/book)")
    return value


async def set_profile(conn: asyncpg.Connection, tenant_id: int, changes: Mapping[str, object]) -> bool:
    """Write the profile fields named in `changes` (None: the field's default), checked as check_changes
    does. False when there is no such tenant."""
    checked = check_changes(changes)
    await conn.execute(Q.ensure_profile, tenant_id)
    args: list[object] = []
    for name in FIELDS:
        args += [name in checked, checked.get(name)]
    return await conn.fetchval(Q.set_profile, tenant_id, *args) is not None


@dataclass(frozen=True)
class NewFaqEntry:
    question: str
    answer: str
    keywords: tuple[str, ...] = ()


def check_faq(entries: Sequence[NewFaqEntry], prefix: str = "faq") -> list[NewFaqEntry]:
    """The entries checked (limits, answers as templates); BadInput naming e.g. `faq[2].answer`."""
    if len(entries) > MAX_FAQ_ENTRIES:
        raise BadInput(prefix, f"has more than {MAX_FAQ_ENTRIES} entries")
    for i, e in enumerate(entries):
        where = f"{prefix}[{i}]"
        if not 1 <= len(e.question) <= MAX_QUESTION:
            raise BadInput(f"{where}.question", f"must be 1 to {MAX_QUESTION} characters")
        if not 1 <= len(e.answer) <= MAX_ANSWER:
            raise BadInput(f"{where}.answer", f"must be 1 to {MAX_ANSWER} characters")
        if len(e.keywords) > MAX_KEYWORDS:
            raise BadInput(f"{where}.keywords", f"has more than {MAX_KEYWORDS} keywords")
        for k in e.keywords:
            if not 1 <= len(k) <= MAX_KEYWORD:
                raise BadInput(f"{where}.keywords", f"must each be 1 to {MAX_KEYWORD} characters")
        check_template(f"{where}.answer", e.answer)
    return list(entries)


async def replace_faq(conn: asyncpg.Connection, tenant_id: int, entries: Sequence[NewFaqEntry]) -> None:
    """The tenant's FAQ becomes `entries`, in order (call inside a transaction)."""
    checked = check_faq(entries)
    await conn.execute(Q.delete_faq, tenant_id)
    if checked:
        await conn.execute(Q.insert_faq, tenant_id, [e.question for e in checked], [e.answer for e in checked],
                           [json.dumps(list(e.keywords)) for e in checked])
