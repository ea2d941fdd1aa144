"""The per-message agent pipeline, run over a claimed batch of `process_message` tasks.

For each message: classify intent, act on consent (a natural-language opt-out opts out exactly like a
keyword), queue the compliance replies, enrich the lead, fold the conversation into a summary every
50 messages, and log every decision. Slow work (the LLM) happens before the transaction; all writes
of a batch then commit together with the tasks' completion, so a task's effects exist exactly once; an
outcome the database refuses is split off and fails its own task alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from agents import consent, decision_log, leads, memory, replies, signals, when
from agents.decision_log import Entry, Status
from agents.intent import Classification, Classifier, Intent
from agents.summarizer import Direction, Summarizer, SummaryInput
from agents.worker import Claim, TaskFailed
from db import errors as db_errors
from db import notify, queries
from services import events
from services.inbound import store
from services.inbound.store import ConsentState
from services.orchestrator import outbox, policy
from services.settings import Settings

Q = queries.load(__file__, "pipeline.sql")
log = logging.getLogger("parley.agents")

SUMMARY_EVERY = 50
# Rules (keywords and explicit phrasings) always act on an opt-out. The statistical model acts alone
# only when it is sure; below this it flags the message for an operator instead of silencing a lead.
MODEL_OPT_OUT_MIN_CONFIDENCE = 0.7
CONTEXT_MESSAGES = 10
# Message types whose text is worth classifying (media captions included).
_TEXTUAL = {"text", "interactive", "button", "image", "video", "document", "media"}


@dataclass
class Outcome:
    """Everything one message's processing decided, written in the batch transaction."""

    task_id: int
    tenant_id: int
    conversation_id: int
    user_id: int
    message_id: int
    mask_pii: bool
    log: list[Entry] = field(default_factory=list)
    events: list[events.Event] = field(default_factory=list)
    consent: ConsentState | None = None
    consent_reason: str | None = None
    replies: list[replies.Reply] = field(default_factory=list)
    enrichment: leads.Enrichment | None = None
    enrichment_started: float = 0.0
    summary: tuple[int, int, Any] | None = None  # (up_to_message_id, message_count, Summary)


class Pipeline:
    def __init__(self, settings: Settings, classifier: Classifier, summarizer: Summarizer,
                 uses_context: bool) -> None:
        self.settings = settings
        self.classifier = classifier
        self.summarizer = summarizer
        # The local classifier reads one message; only the LLM is given the conversation's context.
        self.uses_context = uses_context

    async def __call__(self, pool: asyncpg.Pool, claim: Claim) -> Sequence[TaskFailed]:
        ids = [t.id for t in claim.tasks]
        async with pool.acquire() as conn:
            rows = {r["task_id"]: r for r in await conn.fetch(Q.load_batch, ids)}
        failures: list[TaskFailed] = []
        outcomes: list[Outcome] = []

        async def one(task_id: int) -> None:
            row = rows.get(task_id)
            try:
                if row is None:
                    raise LookupError("task's message no longer exists")
                outcomes.append(await self._decide(pool, task_id, row))
            except Exception as exc:  # noqa: BLE001 - one bad message must not fail its batch
                log.exception("agent pipeline failed", extra={"task_id": task_id})
                failures.append(TaskFailed(task_id, f"{type(exc).__name__}: {exc}"))

        await asyncio.gather(*(one(i) for i in ids))
        if outcomes:
            failures += await self._commit_isolating(pool, claim, outcomes)
        return failures

    # --- deciding (no writes) ---------------------------------------------------------------------

    async def _decide(self, pool: asyncpg.Pool, task_id: int, row: asyncpg.Record) -> Outcome:
        out = Outcome(task_id, row["tenant_id"], row["conversation_id"], row["user_id"], row["message_id"],
                      row["mask_pii"])
        text = (row["body"] or "").strip()
        base: dict[str, Any] = {"tenant_id": out.tenant_id, "conversation_id": out.conversation_id,
                                "message_id": out.message_id, "task_id": task_id}
        if row["direction"] != "inbound" or row["message_type"] not in _TEXTUAL or not text:
            out.log.append(Entry(**base, agent="intent", action="classify",
                                 input={"message_type": row["message_type"], "text": text},
                                 output={"reason": "nothing to classify"}, latency_ms=0.0, status=Status.SKIPPED))
            await self._maybe_summarize(pool, row, out, base)
            return out

        context = await self._context(pool, row) if self.uses_context else []
        started = time.perf_counter()
        result = await self.classifier.classify(text, context)
        latency = (time.perf_counter() - started) * 1000
        out.log.append(Entry(
            **base, agent="intent", action="classify",
            input={"text": text, "context_messages": len(context), "phone": row["phone"]},
            output={"intent": result.intent.value, "confidence": round(result.confidence, 4),
                    "language": result.language, "keyword": result.keyword,
                    "possible_opt_out": result.possible_opt_out, "fallback_reason": result.fallback_reason},
            latency_ms=latency, implementation=result.implementation, model=result.model,
            tokens_in=result.tokens_in, tokens_out=result.tokens_out,
            status=Status.FALLBACK if result.fallback_reason else Status.OK, error=result.fallback_reason))
        out.events.append(events.Event(out.tenant_id, f"intent.{result.intent.value}", out.conversation_id,
                                       out.user_id, out.message_id,
                                       {"confidence": round(result.confidence, 4), "language": result.language}))
        self._consent(row, result, out, base)
        self._enrich(row, text, result, out)
        await self._maybe_summarize(pool, row, out, base)
        return out

    def _consent(self, row: asyncpg.Record, result: Classification, out: Outcome, base: dict[str, Any]) -> None:
        keyword = row["keyword"]  # set by the webhook, which already changed consent in its transaction
        state = ConsentState(row["consent_state"])
        language = result.language if result.language in ("en", "fr", "es") else None

        unsure = (result.intent is Intent.OPT_OUT and result.implementation == "local"
                  and result.confidence < MODEL_OPT_OUT_MIN_CONFIDENCE)
        if keyword is None and result.intent is Intent.OPT_OUT and not unsure and state is not ConsentState.OPTED_OUT:
            # A natural-language opt-out ("please stop texting me") is honoured exactly like STOP.
            out.consent = ConsentState.OPTED_OUT
            out.consent_reason = result.keyword or "classifier"
            out.log.append(Entry(**base, agent="consent", action="opt_out",
                                 input={"text": row["body"], "intent": result.intent.value},
                                 output={"consent_state": "opted_out", "source": "classifier",
                                         "implementation": result.implementation,
                                         "confidence": round(result.confidence, 4)},
                                 latency_ms=0.0, implementation=result.implementation))
        elif unsure and state is not ConsentState.OPTED_OUT:
            # The statistical model alone, and unsure ("Stop by anytime this week?"): an operator decides.
            self._flag_possible_opt_out(row, result, out, base, {
                "local_intent": "opt_out", "confidence": round(result.confidence, 4),
                "note": "review: the local model read an opt-out with low confidence"})
        elif result.possible_opt_out:
            self._flag_possible_opt_out(row, result, out, base, {
                "llm_intent": "opt_out", "local_intent": result.intent.value,
                "note": "review: the LLM read an opt-out, rules and the local model did not"})

        opted_out_now = keyword == "opt_out" and row["consent_change_id"] is not None
        if opted_out_now or out.consent is ConsentState.OPTED_OUT:
            key = f"opt_out:{row['consent_change_id']}" if opted_out_now else f"opt_out:message:{out.message_id}"
            self._reply(out, base, replies.Reason.OPT_OUT_CONFIRMATION,
                        replies.confirmation(replies.Reason.OPT_OUT_CONFIRMATION, language), key,
                        row["consent_change_id"] if opted_out_now else None)
        elif keyword == "opt_in" and row["consent_change_id"] is not None:
            self._reply(out, base, replies.Reason.OPT_IN_CONFIRMATION,
                        replies.confirmation(replies.Reason.OPT_IN_CONFIRMATION, language),
                        f"opt_in:{row['consent_change_id']}", row["consent_change_id"])
        elif keyword == "help" or (result.intent is Intent.HELP and keyword is None):
            if state is ConsentState.OPTED_OUT:
                # After an opt-out nothing is sent but its one confirmation, HELP answers included.
                out.log.append(Entry(**base, agent="responder", action="queue_reply", input={"reason": "help"},
                                     output={"queued": False, "reason": "user opted out"}, latency_ms=0.0,
                                     status=Status.SKIPPED))
            else:
                self._reply(out, base, replies.Reason.HELP, row["help_text"], f"help:{out.message_id}")

    @staticmethod
    def _flag_possible_opt_out(row: asyncpg.Record, result: Classification, out: Outcome, base: dict[str, Any],
                               why: dict[str, Any]) -> None:
        """Log (and announce) an opt-out nobody may act on alone: no consent change, no reply."""
        out.log.append(Entry(**base, agent="consent", action="possible_opt_out", input={"text": row["body"]},
                             output={**why, "acted": False}, latency_ms=0.0, implementation=result.implementation,
                             model=result.model, status=Status.POSSIBLE_OPT_OUT))
        out.events.append(events.Event(out.tenant_id, "intent.possible_opt_out", out.conversation_id,
                                       out.user_id, out.message_id, {}))

    def _reply(self, out: Outcome, base: dict[str, Any], reason: replies.Reason, body: str, key: str,
               confirms: int | None = None) -> None:
        reply = replies.Reply(out.tenant_id, out.conversation_id, out.user_id, body, reason, out.message_id, key,
                              confirms)
        out.replies.append(reply)
        out.log.append(Entry(**base, agent="responder", action="queue_reply", input={"reason": reason.value},
                             output={"body": body, "priority": reply.priority, "dedupe_key": key},
                             latency_ms=0.0))

    def _enrich(self, row: asyncpg.Record, text: str, result: Classification, out: Outcome) -> None:
        started = time.perf_counter()
        previous = float(row["lead_confidence"]) if row["lead_confidence"] is not None else None
        sig = signals.extract(text, result, previous)
        language = result.language if result.language != "und" else None
        lang = language or row["lead_language"] or "en"
        zone = policy.recipient_zone(row["user_time_zone"], row["phone"], policy.tenant_policy(
            self.settings, {"id": out.tenant_id, "time_zone": row["tenant_time_zone"]})).key
        asks = result.intent not in memory.TERMINAL and result.intent not in (Intent.HELP, Intent.OPT_IN)
        reading = memory.Reading(
            result.intent, when.read_requested_time(text, lang, zone, row["message_at"]) if asks else None,
            memory.wants_from(text, lang) if result.intent in memory.WANTS_INTENTS else None,
            text if result.intent is Intent.QUESTION else None, text, sig.urgency.value, sig.tone.value,
            row["conversation_summary"])
        out.enrichment = leads.Enrichment(
            out.tenant_id, out.user_id, out.conversation_id, out.message_id, sig.name, sig.email, language,
            None, result.intent.value, sig.tone.value, sig.urgency.value, sig.confidence,
            signals.is_test_number(row["phone"]), reading)
        out.enrichment_started = (time.perf_counter() - started) * 1000

    async def _maybe_summarize(self, pool: asyncpg.Pool, row: asyncpg.Record, out: Outcome,
                               base: dict[str, Any]) -> None:
        if row["unsummarized"] < SUMMARY_EVERY:
            return
        async with pool.acquire() as conn:
            msgs = await conn.fetch(Q.messages_since, out.conversation_id, row["summarized_through"] or 0,
                                    out.message_id)
        inputs = [SummaryInput(Direction(m["direction"]), m["body"], m["created_at"]) for m in msgs]
        started = time.perf_counter()
        summary = await self.summarizer.summarize(row["conversation_summary"], inputs)
        latency = (time.perf_counter() - started) * 1000
        out.summary = (out.message_id, len(inputs), summary)
        out.log.append(Entry(**base, agent="memory", action="summarize",
                             input={"previous_summary": row["conversation_summary"], "messages": len(inputs)},
                             output={"summary": summary.text, "fallback_reason": summary.fallback_reason},
                             latency_ms=latency, implementation=summary.implementation, model=summary.model,
                             tokens_in=summary.tokens_in, tokens_out=summary.tokens_out,
                             status=Status.FALLBACK if summary.fallback_reason else Status.OK,
                             error=summary.fallback_reason))

    async def _context(self, pool: asyncpg.Pool, row: asyncpg.Record) -> list[str]:
        """The latest summary plus the last messages before this one: never the whole history."""
        async with pool.acquire() as conn:
            recent = await conn.fetch(Q.recent_messages, row["conversation_id"], row["message_id"] - 1,
                                      CONTEXT_MESSAGES)
        context = [f"Summary so far: {row['conversation_summary']}"] if row["conversation_summary"] else []
        context += [f"{'Lead' if m['direction'] == 'inbound' else 'Business'}: {m['body']}"
                    for m in recent if m["body"]]
        return context

    # --- committing -------------------------------------------------------------------------------

    async def _commit_isolating(self, pool: asyncpg.Pool, claim: Claim, outcomes: list[Outcome]) -> list[TaskFailed]:
        """Commit the batch; if the database refuses it, commit each half on its own, down to single
        outcomes, so one outcome it refuses fails its own task only. A batch mixes conversations and
        tenants and shares its statements (the lead upsert, the decision log): without this, one bad
        row would fail up to 64 tasks, again on every retry. Costs nothing while batches commit; one bad
        outcome among n costs about 2·log2(n) extra transactions."""
        try:
            await self._commit(pool, claim, outcomes)
            return []
        except Exception as exc:  # noqa: BLE001 - which outcome is to blame is found below
            if isinstance(db_errors.translate(exc), db_errors.Unavailable):
                raise  # no outcome is to blame: the whole batch is retried
            if len(outcomes) == 1:
                log.exception("agent outcome could not be committed", extra={"task_id": outcomes[0].task_id})
                return [TaskFailed(outcomes[0].task_id, f"{type(exc).__name__}: {exc}")]
        half = len(outcomes) // 2
        return [*await self._commit_isolating(pool, claim, outcomes[:half]),
                *await self._commit_isolating(pool, claim, outcomes[half:])]

    async def _commit(self, pool: asyncpg.Pool, claim: Claim, outcomes: list[Outcome]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            owned = await claim.lock_owned(conn)
            mine = [o for o in outcomes if o.task_id in owned]
            # Consent may have changed since the batch decided: hold its decisions to the committed state.
            await consent.settle(conn, mine)
            entries: list[Entry] = []
            evts: list[events.Event] = []
            for o in mine:
                if o.consent is not None:
                    await store.change_consent(conn, o.user_id, o.consent, "classifier", o.consent_reason,
                                               o.message_id, "agent:intent")
                    evts.append(events.Event(o.tenant_id, f"consent.{o.consent.value}", o.conversation_id,
                                             o.user_id, o.message_id, {"source": "classifier"}))
                for reply in o.replies:
                    await replies.enqueue(conn, reply)
                if o.summary is not None:
                    up_to, count, summary = o.summary
                    await conn.execute(Q.insert_summary, o.tenant_id, o.conversation_id, up_to, count, summary.text,
                                       summary.implementation, summary.model)
            enriched = [o for o in mine if o.enrichment is not None]
            await store.set_intents(conn, [(o.message_id, o.enrichment.reading.intent.value) for o in enriched
                                           if o.enrichment is not None and o.enrichment.reading is not None])
            started = time.perf_counter()
            applied = await leads.apply_many(conn, [o.enrichment for o in enriched if o.enrichment],
                                             actor="agent:enrichment")
            share = (time.perf_counter() - started) * 1000 / max(1, len(enriched))
            for o, a in zip(enriched, applied, strict=True):
                e = o.enrichment
                assert e is not None
                entries.append(Entry(
                    o.tenant_id, "enrichment", "enrich", o.conversation_id, o.message_id, o.task_id,
                    input={"intent": e.intent, "lead_id": a.lead_id},
                    output={"tone": e.tone, "urgency": e.urgency, "confidence_score": round(e.confidence, 2),
                            "name": e.name, "email": e.email, "language": e.language, "created": a.created,
                            "changed": sorted(a.changes)},
                    latency_ms=o.enrichment_started + share, implementation="local"))
            for o in mine:
                entries.extend(o.log)
                evts.extend(o.events)
            await decision_log.insert(conn, entries, self.settings.openai_prices,
                                      {o.tenant_id: o.mask_pii for o in mine})
            await events.emit_many(conn, evts)
            await claim.complete(conn, [o.task_id for o in mine])
        if any(o.replies for o in mine):
            outbox.wake(pool)
        if evts:
            notify.wake(pool, notify.EVENTS)
