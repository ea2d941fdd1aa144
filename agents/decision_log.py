"""The decision log (`agent_actions_log`): every agent decision with its inputs, outputs, latency and cost.

Phone numbers and emails are masked in inputs and outputs unless the tenant turns masking off; the
lead record itself keeps the real values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

import asyncpg

from agents import redact
from db import queries
from services.settings import ModelPrice

Q = queries.load(__file__, "decision_log.sql")

_MILLION = Decimal(1_000_000)


class Status(StrEnum):
    """Matches the CHECK constraint on agent_actions_log.status."""

    OK = "ok"
    FALLBACK = "fallback"  # the LLM failed and the local implementation decided
    POSSIBLE_OPT_OUT = "possible_opt_out"  # flagged for an operator, not acted on
    SKIPPED = "skipped"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Entry:
    tenant_id: int
    agent: str
    action: str
    conversation_id: int | None
    message_id: int | None
    task_id: int | None
    input: Mapping[str, Any]
    output: Mapping[str, Any]
    latency_ms: float
    status: Status = Status.OK
    implementation: str | None = None
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    error: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def cost_usd(prices: Mapping[str, ModelPrice], model: str | None, tokens_in: int, tokens_out: int) -> Decimal:
    """USD for one call, from the price table in settings (USD per million tokens). Unknown models cost
    0 here; the tokens are still logged so the cost can be recomputed."""
    if not model or (tokens_in == 0 and tokens_out == 0):
        return Decimal(0)
    price = prices.get(model)
    if price is None:
        # "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini".
        price = next((p for name, p in sorted(prices.items(), key=lambda kv: -len(kv[0]))
                      if model.startswith(name)), None)
    if price is None:
        return Decimal(0)
    return (price.input * tokens_in + price.output * tokens_out) / _MILLION


async def insert(conn: asyncpg.Connection, entries: Sequence[Entry], prices: Mapping[str, ModelPrice],
                 masking: Mapping[int, bool]) -> None:
    """Write entries; `masking` says, per tenant, whether PII is masked (default: masked)."""
    if not entries:
        return
    rows = []
    for e in entries:
        mask = masking.get(e.tenant_id, True)
        rows.append((
            e.tenant_id, e.agent, e.action, e.conversation_id, e.message_id, e.task_id,
            redact.mask_pii(dict(e.input)) if mask else dict(e.input),
            redact.mask_pii(dict(e.output)) if mask else dict(e.output),
            e.implementation, e.model, round(e.latency_ms, 3), e.tokens_in, e.tokens_out,
            cost_usd(prices, e.model, e.tokens_in, e.tokens_out), e.status.value, e.error,
        ))
    await conn.executemany(Q.insert_entries, rows)
