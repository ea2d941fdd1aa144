"""Agent pipeline benchmark: messages/s through claim → classify → enrich → log → commit with ONE worker
process, local classification latency, and macro-F1 on the held-out evaluation set.

    .venv/bin/python bench/agents.py [--messages 20000] [--users 500]

Targets (issue 3): ≥ 1,000 messages/s end to end with one worker; local classification p50 ≤ 1 ms;
macro-F1 ≥ 0.9 on agents/intent/data/eval.jsonl. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import service  # noqa: E402
from agents.intent import train  # noqa: E402
from agents.intent.local import LocalClassifier  # noqa: E402
from db import pool as db_pool  # noqa: E402
from services import runtime as runtime_mod  # noqa: E402
from services import settings as settings_mod  # noqa: E402
from services import tenants  # noqa: E402

SEED = """
WITH t AS (SELECT id FROM tenants WHERE slug = 'default'),
ch AS (
    INSERT INTO channels (tenant_id, kind, address, account_sid, credentials)
    SELECT id, 'twilio_sms', '+14155550100', 'AC0123456789abcdef0123456789abcdef', '{}' FROM t RETURNING id, tenant_id
),
u AS (
    INSERT INTO users (tenant_id, phone)
    SELECT ch.tenant_id, '+1415' || lpad((2000000 + g)::text, 7, '0') FROM ch, generate_series(1, $1) g
    RETURNING id, tenant_id
)
INSERT INTO conversations (tenant_id, user_id, channel_id) SELECT u.tenant_id, u.id, ch.id FROM u, ch
"""

MESSAGES = """
WITH convs AS (SELECT id, tenant_id, row_number() OVER (ORDER BY id) - 1 AS n FROM conversations),
texts AS (SELECT t, row_number() OVER () - 1 AS n FROM unnest($1::text[]) t),
m AS (
    INSERT INTO messages (tenant_id, conversation_id, direction, provider, provider_message_id, message_type,
                          body, status)
    SELECT c.tenant_id, c.id, 'inbound', 'twilio', 'SMbench' || g, 'text', x.t, 'received'
    FROM generate_series(0, $2 - 1) g
    JOIN convs c ON c.n = g % $3
    JOIN texts x ON x.n = g % cardinality($1::text[])
    ORDER BY g
    RETURNING id, tenant_id, conversation_id
)
INSERT INTO agent_tasks (tenant_id, conversation_id, message_id, kind)
SELECT tenant_id, conversation_id, id, 'process_message' FROM m ORDER BY id
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def classification_latency(texts: list[str], rounds: int = 5) -> tuple[float, float, float]:
    classifier = LocalClassifier()
    classifier.classify_sync("warm up")
    samples = []
    for _ in range(rounds):
        for text in texts:
            started = time.perf_counter()
            classifier.classify_sync(text)
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), percentile(samples, 0.99), len(samples)


async def pipeline_throughput(dsn: str, n_messages: int, n_users: int, texts: list[str]) -> dict[str, float]:
    settings = settings_mod.Settings(DATABASE_URL=dsn, PARLEY_API_KEY="bench", PARLEY_DB_POOL_SIZE=12)
    await runtime_mod.apply_migrations(dsn)
    pool = await db_pool.create(dsn, settings.db_pool_size)
    try:
        await tenants.bootstrap_default(pool, settings)
        async with pool.acquire() as conn:
            await conn.execute(SEED, n_users)
            await conn.execute(MESSAGES, texts, n_messages, n_users)
            await conn.execute("ANALYZE")
        worker = service.worker(settings, pool, dsn, worker_id="bench")
        stop = asyncio.Event()
        started = time.perf_counter()
        running = asyncio.create_task(worker.run(stop))
        async with pool.acquire() as conn:
            while await conn.fetchval("SELECT count(*) FROM agent_tasks WHERE status IN ('pending', 'running')"):
                await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        stop.set()
        await running
        async with pool.acquire() as conn:
            logged = await conn.fetchval("SELECT count(*) FROM agent_actions_log WHERE agent = 'intent'")
            leads = await conn.fetchval("SELECT count(*) FROM lead_memory")
        return {
            "messages": n_messages,
            "seconds": elapsed,
            "per_second": n_messages / elapsed,
            "intent_log_rows": logged,
            "leads": leads,
        }
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rows = train.load_examples(train.EVAL_PATH)
    texts = [r.text for r in rows]
    report = train.evaluate(LocalClassifier(), rows)
    p50, p99, samples = classification_latency(texts)

    external = os.environ.get("DATABASE_URL")
    tmp = None
    server = None
    if external:
        dsn = external
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
        tmp = tempfile.mkdtemp(prefix="parley-bench-agents-")
        server = pgserver.get_server(tmp, cleanup_mode="delete")
        dsn = server.get_uri()
    try:
        pipeline = asyncio.run(pipeline_throughput(dsn, args.messages, args.users, texts))
    finally:
        if server is not None:
            server.cleanup()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    figures = {
        "pipeline_messages_per_s": round(pipeline["per_second"], 1),
        "pipeline_messages": pipeline["messages"],
        "pipeline_seconds": round(pipeline["seconds"], 2),
        "intent_log_rows": pipeline["intent_log_rows"],
        "classify_p50_ms": round(p50, 4),
        "classify_p99_ms": round(p99, 4),
        "classify_samples": samples,
        "eval_rows": report.total,
        "eval_accuracy": round(report.accuracy, 4),
        "eval_macro_f1": round(report.macro_f1, 4),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"pipeline, one worker process: {figures['pipeline_messages_per_s']:>9.1f} messages/s "
        f"({pipeline['messages']} messages over {args.users} conversations in {pipeline['seconds']:.2f} s; "
        f"{pipeline['intent_log_rows']} decisions logged)   target >= 1000"
    )
    print(f"local classification:         p50 {p50:.3f} ms  p99 {p99:.3f} ms ({samples} calls)   target p50 <= 1 ms")
    print(
        f"held-out evaluation set:      macro-F1 {report.macro_f1:.3f}  accuracy {report.accuracy:.3f} "
        f"({report.total} rows)   target macro-F1 >= 0.9"
    )
    for intent, s in report.per_intent.items():
        print(
            f"    {intent.value:<15} F1 {s.f1:.3f}  (precision {s.precision:.3f}, recall {s.recall:.3f}, "
            f"support {s.support})"
        )


if __name__ == "__main__":
    main()
