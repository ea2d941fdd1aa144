"""The outbox: the one road into message_queue.

Every producer (agents' replies and consent confirmations, operator sends, later sequences and
broadcasts) calls `enqueue` inside its own transaction and `wake` after it commits; nothing else
inserts queue rows, and nothing but the dispatcher calls a provider. The operator's `cancel` and
`requeue` live here too, each with its verdict row, and `resolve_recipient` finds (or creates) who a
first message goes to and the channel it goes from.

Idempotency is per tenant: a key names one request. The same key with the same request (its
`request_hash`, over everything but the key) answers the first row; another request with that key
raises `IdempotencyConflict`, detected without a failed statement, so the caller's transaction stays
usable. The opt-out guard is the database's (migration 0013); it surfaces as `db.errors.OptedOut`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from db import errors as db_errors
from db import notify, queries
from services import phone as phone_mod
from services.channels.base import ChannelKind
from services.channels.outbound import Template
from services.inbound import store
from services.inbound.directory import CATCH_ALL
from services.orchestrator.policy import MessageClass

Q = queries.load(__file__, "outbox.sql")



class Reason(StrEnum):
    """Matches the CHECK on message_queue.reason."""

    HELP = "help"
    OPT_OUT_CONFIRMATION = "opt_out_confirmation"
    OPT_IN_CONFIRMATION = "opt_in_confirmation"
    AGENT_REPLY = "agent_reply"
    SEQUENCE = "sequence"
    BROADCAST = "broadcast"
    OPERATOR = "operator"


class Status(StrEnum):
    """Matches the CHECK on message_queue.status."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    SENDING = "sending"
    UNKNOWN = "unknown"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    UNDELIVERED = "undelivered"
    EXPIRED = "expired"
    CANCELED = "canceled"
    SUPPRESSED = "suppressed"
    SUPERSEDED = "superseded"


# An operator may cancel what has not gone to a provider. Not 'unknown': the provider may already have
# it, and only a status or a lookup can say (services/orchestrator/reconcile.py settles those).
CANCELABLE = frozenset({Status.QUEUED, Status.DEFERRED})
# And put back in line what ended without being sent.
REQUEUEABLE = frozenset({Status.FAILED, Status.EXPIRED, Status.CANCELED})


class ChannelFamily(StrEnum):
    """What a request names: which provider kinds can carry it."""

    SMS = "sms"
    WHATSAPP = "whatsapp"


KINDS: dict[ChannelFamily, tuple[ChannelKind, ...]] = {
    ChannelFamily.SMS: (ChannelKind.TWILIO_SMS,),
    ChannelFamily.WHATSAPP: (ChannelKind.TWILIO_WHATSAPP, ChannelKind.WHATSAPP_CLOUD),
}


class OutboxError(Exception):
    """A request the outbox refuses; `field` names what in it is at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


class IdempotencyConflict(OutboxError):
    """The key was first used for another request (HTTP 409)."""

    def __init__(self, queue_id: int) -> None:
        super().__init__("idempotency_key", f"was already used for another request (message {queue_id})")
        self.queue_id = queue_id


class NoSender(OutboxError):
    """No channel of the tenant can send this message (HTTP 422)."""


class NotFound(OutboxError):
    """No such row for this tenant (HTTP 404)."""


class WrongStatus(OutboxError):
    """The row's status does not allow the transition (HTTP 409)."""

    def __init__(self, status: Status, allowed: frozenset[Status]) -> None:
        super().__init__("status", f"is {status.value}; only {', '.join(sorted(allowed))} can be")
        self.status = status


@dataclass(frozen=True, slots=True)
class Item:
    """One message to queue. `body`, `template` or both (the template goes outside WhatsApp's window)."""

    tenant_id: int
    user_id: int
    conversation_id: int
    channel_id: int | None  # None: the conversation's (a reply goes from the number the user wrote to)
    klass: MessageClass
    reason: Reason
    priority: int = 0
    body: str | None = None
    template: Template | None = None
    scheduled_for: datetime | None = None  # None: now
    expires_at: datetime | None = None
    idempotency_key: str | None = None
    source_message_id: int | None = None
    # None: PARLEY_SEND_MAX_ATTEMPTS, as it is when the row is attempted.
    max_attempts: int | None = None
    # The request as its producer received it (the operator API's body, canonical JSON, key left out).
    # When set, the key is compared on it rather than on the row's content: the row's channel and
    # conversation are resolved, and may resolve differently the second time for the same request.
    request: str | None = None

    def request_hash(self) -> str:
        """What the idempotency key stands for: the request, or every field of the row but the key."""
        if self.request is not None:
            return hashlib.sha256(f"{self.tenant_id}\n{self.request}".encode()).hexdigest()
        content: dict[str, Any] = {
            "tenant_id": self.tenant_id, "user_id": self.user_id, "conversation_id": self.conversation_id,
            "channel_id": self.channel_id, "class": self.klass.value, "reason": self.reason.value,
            "priority": self.priority, "body": self.body,
            "template": None if self.template is None else {
                "name": self.template.name, "language": self.template.language,
                "variables": dict(self.template.variables)},
            "scheduled_for": None if self.scheduled_for is None else self.scheduled_for.isoformat(),
            "expires_at": None if self.expires_at is None else self.expires_at.isoformat(),
            "source_message_id": self.source_message_id, "max_attempts": self.max_attempts,
        }
        encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Enqueued:
    id: int
    status: Status
    created: bool  # False: the key's first row, answered again


async def enqueue(conn: asyncpg.Connection, item: Item) -> Enqueued:
    """Queue `item` in the caller's transaction (call `wake` after it commits).

    Raises IdempotencyConflict (the key names another request) and db.errors.OptedOut (a message
    other than the opt-out confirmation for a user who opted out; the statement failed, so the
    transaction is aborted)."""
    digest = item.request_hash()
    template = item.template
    with db_errors.translating():
        row = await conn.fetchrow(
            Q.enqueue, item.tenant_id, item.user_id, item.conversation_id, item.channel_id, item.klass.value,
            item.reason.value, item.priority, item.body, template.name if template else None,
            template.language if template else None, dict(template.variables) if template else {},
            item.scheduled_for, item.expires_at, item.idempotency_key, digest, item.source_message_id,
            item.max_attempts)
    if row is not None:
        return Enqueued(row["id"], Status(row["status"]), True)
    # The key is taken (and committed: ON CONFLICT waited for its transaction), so this finds it.
    first = await conn.fetchrow(Q.by_key, item.tenant_id, item.idempotency_key)
    assert first is not None, "a conflicting key must be visible once its row committed"
    if first["request_hash"] != digest:
        raise IdempotencyConflict(first["id"])
    return Enqueued(first["id"], Status(first["status"]), False)


def wake(pool: asyncpg.Pool) -> None:
    """After a commit that queued rows or put rows back in line: a hint to idle dispatchers (they poll too)."""
    notify.wake(pool, notify.QUEUE)


# --- operator transitions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Moved:
    id: int
    previous: Status
    status: Status


async def cancel(conn: asyncpg.Connection, tenant_id: int, queue_id: int, actor: str = "operator") -> Moved:
    """queued or deferred -> canceled, with the operator's verdict. Raises NotFound, WrongStatus."""
    async with conn.transaction():
        previous = await _lock(conn, tenant_id, queue_id, CANCELABLE)
        row = await conn.fetchrow(Q.cancel, queue_id)
        await conn.execute(Q.operator_verdict, tenant_id, queue_id, "cancel", f"canceled by {actor}",
                           {"previous_status": previous.value, "actor": actor})
    return Moved(queue_id, previous, Status(row["status"]))


async def requeue(conn: asyncpg.Connection, tenant_id: int, queue_id: int, actor: str = "operator") -> Moved:
    """failed, expired or canceled -> queued with its attempts reset, with the operator's verdict.
    Raises NotFound, WrongStatus, and db.errors.OptedOut for a user who opted out. Call `wake` after."""
    async with conn.transaction():
        locked = await conn.fetchrow(Q.lock_row, tenant_id, queue_id)
        previous = _check(locked, REQUEUEABLE)
        with db_errors.translating():
            row = await conn.fetchrow(Q.requeue, queue_id)
        detail: dict[str, Any] = {"previous_status": previous.value, "actor": actor}
        if locked["expires_at"] is not None:
            detail["expires_at"] = locked["expires_at"].isoformat()
        await conn.execute(Q.operator_verdict, tenant_id, queue_id, "requeue", f"requeued by {actor}", detail)
    return Moved(queue_id, previous, Status(row["status"]))


async def _lock(conn: asyncpg.Connection, tenant_id: int, queue_id: int, allowed: frozenset[Status]) -> Status:
    return _check(await conn.fetchrow(Q.lock_row, tenant_id, queue_id), allowed)


def _check(row: asyncpg.Record | None, allowed: frozenset[Status]) -> Status:
    if row is None:
        raise NotFound("id", "is not a message of this tenant")
    status = Status(row["status"])
    if status not in allowed:
        raise WrongStatus(status, allowed)
    return status


# --- who a message goes to, and from --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recipient:
    user_id: int
    conversation_id: int
    channel_id: int
    phone: str
    user_created: bool


async def resolve_recipient(conn: asyncpg.Connection, tenant_id: int, phone: str, family: ChannelFamily,
                            channel_id: int | None = None) -> Recipient:
    """The user with this phone (created if the tenant has none) and the conversation the message goes in.

    The channel: `channel_id` when the request names one; else the one of this family the user last
    wrote to (a reply goes from the number the user wrote to); else the tenant's default sender for the
    family (tenants.default_sms_channel_id / default_whatsapp_channel_id). Raises OutboxError("to")
    for a number that is not E.164-possible and NoSender when no channel can send."""
    e164 = phone_mod.to_e164(phone)
    if e164 is None:
        raise OutboxError("to", "is not a valid phone number (E.164, e.g. +14155550123)")
    kinds = [k.value for k in KINDS[family]]
    if channel_id is not None:
        await _sending_channel(conn, tenant_id, channel_id, kinds, "channel_id")
    person = await store.user_for_phone(conn, tenant_id, e164, phone_mod.time_zone_for(e164))
    if channel_id is None and not person.created:
        last = await conn.fetchrow(Q.last_conversation, tenant_id, person.user_id, kinds)
        if last is not None:
            return Recipient(person.user_id, last["conversation_id"], last["channel_id"], e164, False)
    if channel_id is None:
        senders = await conn.fetchrow(Q.tenant_senders, tenant_id)
        column = "default_sms_channel_id" if family is ChannelFamily.SMS else "default_whatsapp_channel_id"
        channel_id = senders[column] if senders is not None else None
        if channel_id is None:
            raise NoSender("channel", f"has no default {family.value} sender for this tenant "
                                      "(name a channel_id, or configure one at start-up)")
        await _sending_channel(conn, tenant_id, channel_id, kinds, "channel")
    conversation_id = await store.conversation_for(conn, tenant_id, person.user_id, channel_id)
    return Recipient(person.user_id, conversation_id, channel_id, e164, person.created)


async def _sending_channel(conn: asyncpg.Connection, tenant_id: int, channel_id: int, kinds: list[str],
                           field_name: str) -> None:
    row = await conn.fetchrow(Q.channel, tenant_id, channel_id)
    if row is None:
        raise NoSender(field_name, "is not a channel of this tenant")
    if row["kind"] not in kinds:
        raise NoSender(field_name, f"is a {row['kind']} channel, not one of {', '.join(kinds)}")
    if not row["active"]:
        raise NoSender(field_name, "is not active")
    if row["address"] == CATCH_ALL and row["messaging_service_sid"] is None:
        raise NoSender(field_name, "is a catch-all with no Messaging Service to send through")
