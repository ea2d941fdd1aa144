"""The classifier the settings ask for: OpenAI when OPENAI_API_KEY is set (falling back to local), else local."""

from __future__ import annotations

from typing import Any

from agents.intent import Classifier
from agents.intent.local import LocalClassifier
from services.settings import Settings


def openai_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments shared by the OpenAI classifier and summarizer (OPENAI_API_KEY must be set)."""
    assert settings.openai_api_key is not None
    return {"api_key": settings.openai_api_key.get_secret_value(),
            "base_url": str(settings.openai_base_url) if settings.openai_base_url else None,
            "model": settings.openai_model, "timeout_s": settings.openai_timeout_s,
            "max_retries": settings.openai_max_retries}


def from_settings(settings: Settings) -> Classifier:
    local = LocalClassifier()
    if settings.openai_api_key is None:
        return local
    from agents.intent.openai_classifier import OpenAIClassifier

    return OpenAIClassifier(fallback=local, **openai_options(settings))
