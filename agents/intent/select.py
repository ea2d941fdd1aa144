"""The classifier the settings ask for: OpenAI when OPENAI_API_KEY is set (falling back to local), else local."""

from __future__ import annotations

from agents.intent import Classifier
from agents.intent.local import LocalClassifier
from services.settings import Settings


def from_settings(settings: Settings) -> Classifier:
    local = LocalClassifier()
    if settings.openai_api_key is None:
        return local
    from agents.intent.openai_classifier import OpenAIClassifier

    return OpenAIClassifier(settings.openai_api_key.get_secret_value(),
                            str(settings.openai_base_url) if settings.openai_base_url else None,
                            settings.openai_model, local, timeout_s=settings.openai_timeout_s,
                            max_retries=settings.openai_max_retries)
