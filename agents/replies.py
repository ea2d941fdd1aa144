"""Replies the agents queue for the orchestrator to send: HELP text and consent confirmations.

They go through the outbox (services/orchestrator/outbox.py), from the channel the user wrote to.
Consent confirmations are class compliance and pass the opt-out guard (an opt-out gets exactly one
confirmation); HELP is a reply. Every reply is deduplicated on the consent change or message that
caused it, so a retried task never queues twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from services.orchestrator import outbox
from services.orchestrator.policy import MessageClass


class Reason(StrEnum):
    """The agents' part of message_queue.reason (outbox.Reason holds them all)."""

    HELP = "help"
    OPT_OUT_CONFIRMATION = "opt_out_confirmation"
    OPT_IN_CONFIRMATION = "opt_in_confirmation"


PRIORITY = {Reason.OPT_OUT_CONFIRMATION: 100, Reason.OPT_IN_CONFIRMATION: 90, Reason.HELP: 80}

CONFIRMATIONS: dict[Reason, dict[str, str]] = {
    Reason.OPT_OUT_CONFIRMATION: {
        "en": "You have been unsubscribed and will receive no more messages. Reply START to resubscribe.",
        "fr": "Vous êtes désinscrit et ne recevrez plus de messages. Répondez START pour vous réinscrire.",
        "es": "Se ha dado de baja y no recibirá más mensajes. Responda START para volver a suscribirse.",
    },
    Reason.OPT_IN_CONFIRMATION: {
        "en": "You have been resubscribed. Reply STOP to unsubscribe, HELP for help.",
        "fr": "Vous êtes réinscrit. Répondez STOP pour vous désinscrire, HELP pour de l'aide.",
        "es": "Se ha vuelto a suscribir. Responda STOP para darse de baja, HELP para ayuda.",
    },
}


@dataclass(frozen=True, slots=True)
class Reply:
    tenant_id: int
    conversation_id: int
    user_id: int
    body: str
    reason: Reason
    source_message_id: int
    dedupe_key: str
    # The consent change a confirmation confirms; None for one this batch's own opt-out causes.
    confirms: int | None = None

    @property
    def priority(self) -> int:
        return PRIORITY[self.reason]

    @property
    def message_class(self) -> MessageClass:
        """Consent confirmations are the only messages that may bypass consent and quiet hours (the
        database ties the two: message_queue_compliance_is_confirmation)."""
        return MessageClass.REPLY if self.reason is Reason.HELP else MessageClass.COMPLIANCE

    def item(self) -> outbox.Item:
        return outbox.Item(
            tenant_id=self.tenant_id, user_id=self.user_id, conversation_id=self.conversation_id, channel_id=None,
            klass=self.message_class, reason=outbox.Reason(self.reason.value), priority=self.priority,
            body=self.body, idempotency_key=self.dedupe_key, source_message_id=self.source_message_id)


def confirmation(reason: Reason, language: str | None) -> str:
    texts = CONFIRMATIONS[reason]
    return texts.get(language or "en", texts["en"])


async def enqueue(conn: asyncpg.Connection, reply: Reply) -> int | None:
    """Queue a reply in the caller's transaction; None when one was already queued for its cause.

    The cause (the dedupe key) decides, not the text: a retried task may word a confirmation in
    another language than its first run did, and the first one stands."""
    try:
        queued = await outbox.enqueue(conn, reply.item())
    except outbox.IdempotencyConflict:
        return None
    return queued.id if queued.created else None
