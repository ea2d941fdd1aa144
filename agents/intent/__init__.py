"""Intent classification: one interface, a local (default, offline) and an OpenAI implementation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Intent(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    INTERESTED = "interested"
    NOT_INTERESTED = "not_interested"
    QUESTION = "question"
    BOOKING = "booking"  # book, reschedule or cancel an appointment
    COMPLAINT = "complaint"
    WRONG_NUMBER = "wrong_number"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Classification:
    intent: Intent
    confidence: float  # in [0, 1]
    language: str  # ISO 639-1 ("en", "fr", "es") or "und"
    implementation: str  # "rules" | "local" | "openai"
    model: str | None = None  # "local-v1", or the OpenAI model name
    keyword: str | None = None  # the explicit compliance keyword that decided it, if any
    tokens_in: int = 0
    tokens_out: int = 0
    fallback_reason: str | None = None  # why the OpenAI path fell back to the local classifier
    # The LLM said opt_out, no explicit keyword was present and the local model disagreed:
    # not acted on, flagged for an operator.
    possible_opt_out: bool = False


class Classifier(Protocol):
    async def classify(self, text: str, context: Sequence[str] = ()) -> Classification:
        """Classify `text`; `context` is the conversation's latest summary and recent messages."""
        ...
