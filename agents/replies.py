"""Replies the agents queue for the orchestrator to send: HELP text and consent confirmations.

Consent confirmations bypass the opt-out guard (an opt-out gets exactly one confirmation); every reply is
deduplicated on the consent change or message that caused them, so a retried task never queues twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from db import queries

Q = queries.load(__file__, "replies.sql")


class Reason(StrEnum):
    """Matches the CHECK constraint on message_queue.reason."""

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
    def compliance(self) -> bool:
        """Consent confirmations are the only messages that may bypass consent and quiet hours (the
        database ties the two: message_queue_compliance_is_confirmation)."""
        return self.reason is not Reason.HELP


def confirmation(reason: Reason, language: str | None) -> str:
    texts = CONFIRMATIONS[reason]
    return texts.get(language or "en", texts["en"])


async def enqueue(conn: asyncpg.Connection, reply: Reply) -> int | None:
    """Queue a compliance reply; None when an identical one was already queued."""
    queued: int | None = await conn.fetchval(
        Q.enqueue, reply.tenant_id, reply.conversation_id, reply.user_id, reply.body, reply.priority,
        reply.reason.value, "compliance" if reply.compliance else "reply", reply.source_message_id, reply.dedupe_key)
    return queued
