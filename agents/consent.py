"""Consent decisions checked again at commit, under the users' row locks.

A batch decides from what it loaded, but webhooks keep changing consent meanwhile: a STOP and START
processed late both read the final state, and an opt-out the classifier read in one message can be
overtaken by a keyword START sent after it. So in the committing transaction, before anything is
written, the batch's users are locked and every consent decision is held against their consent as
committed: a classifier opt-out stands only if no consent change was recorded after its message, a
confirmation is queued only if the change it confirms is still the user's latest, and nothing else is
queued for a user who is opted out. What no longer holds is dropped and logged as skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import asyncpg

from agents import replies
from agents.decision_log import Entry, Status
from db import queries
from services.inbound.store import ConsentState

if TYPE_CHECKING:
    from agents.pipeline import Outcome

Q = queries.load(__file__, "consent.sql")

# What a confirmation confirms: ("change", consent change id) for a keyword the webhook applied,
# ("message", message id) for a classifier opt-out this batch applies.
_Source = tuple[str, int | None]

CONFIRMS = {replies.Reason.OPT_OUT_CONFIRMATION: ConsentState.OPTED_OUT,
            replies.Reason.OPT_IN_CONFIRMATION: ConsentState.OPTED_IN}


async def settle(conn: asyncpg.Connection, outcomes: Sequence[Outcome]) -> None:
    """Lock the users these outcomes change consent for or queue replies to, then drop what their
    committed consent no longer allows. Two statements for a batch with such work, none otherwise."""
    acting = [o for o in outcomes if o.consent is not None or o.replies]
    if not acting:
        return
    await conn.execute(Q.lock_users, sorted({o.user_id for o in acting}))
    now = {r["message_id"]: r for r in await conn.fetch(
        Q.consent_now, [o.message_id for o in acting], [o.user_id for o in acting])}
    state: dict[int, ConsentState] = {}
    latest: dict[int, _Source] = {}
    for o in acting:
        r = now[o.message_id]
        state.setdefault(o.user_id, ConsentState(r["consent_state"]))
        latest.setdefault(o.user_id, ("change", r["change_id"]))

    # Opt-outs in message order, as the user sent them.
    for o in sorted(acting, key=lambda o: o.message_id):
        if o.consent is not ConsentState.OPTED_OUT:
            continue
        r = now[o.message_id]
        if r["change_is_newer"]:
            why = f"consent change {r['change_id']} ({r['change_state']}) was recorded after this message"
        elif state[o.user_id] is ConsentState.OPTED_OUT:
            why = "the user is already opted out"
        else:
            state[o.user_id] = ConsentState.OPTED_OUT
            latest[o.user_id] = ("message", o.message_id)
            continue
        o.consent = None
        o.consent_reason = None
        _mark_skipped(o, lambda e: e.agent == "consent" and e.action == "opt_out", "applied", why)

    # Replies against the consent the batch commits with, so the order the batch then writes in does
    # not matter.
    for o in acting:
        kept: list[replies.Reply] = []
        for reply in o.replies:
            refused = _refusal(reply, state[o.user_id], latest[o.user_id])
            if refused is None:
                kept.append(reply)
            else:
                _mark_skipped(o, _queue_entry(reply.dedupe_key), "queued", refused)
        o.replies = kept


def _refusal(reply: replies.Reply, state: ConsentState, latest: _Source) -> str | None:
    """Why this reply may not be queued now, or None."""
    confirms = CONFIRMS.get(reply.reason)
    if confirms is None:
        return "user opted out" if state is ConsentState.OPTED_OUT else None
    source: _Source = (("change", reply.confirms) if reply.confirms is not None
                       else ("message", reply.source_message_id))
    if source != latest or state is not confirms:
        return (f"the consent it confirms ({confirms.value}) is no longer the user's latest "
                f"(now {state.value})")
    return None


def _queue_entry(dedupe_key: str) -> Callable[[Entry], bool]:
    return lambda e: e.action == "queue_reply" and e.output.get("dedupe_key") == dedupe_key


def _mark_skipped(o: Outcome, which: Callable[[Entry], bool], done: str, why: str) -> None:
    """Turn the decision's log entry into a skipped one with the reason (one entry per decision, telling
    what happened); log a new one if none matched."""
    for i, e in enumerate(o.log):
        if which(e):
            o.log[i] = dataclasses.replace(e, status=Status.SKIPPED, error=why,
                                           output={**e.output, done: False, "reason": why})
            return
    o.log.append(Entry(o.tenant_id, "consent", "recheck", o.conversation_id, o.message_id, o.task_id,
                       input={}, output={"reason": why}, latency_ms=0.0, status=Status.SKIPPED, error=why))
