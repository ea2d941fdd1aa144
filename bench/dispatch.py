"""Outbound dispatch throughput of ONE `parley dispatcher` process, from `queued` to accepted by the
provider simulator through every gate, next to the ceiling of this machine: a bare aiohttp client
posting the same requests to the same simulator with the same concurrency, in the same run.

    .venv/bin/python bench/dispatch.py [--users 5000] [--messages 10000] [--rounds 5] [--redis]
                                       [--callbacks] [--json [PATH]] [--profile PATH]

One run starts a fresh PostgreSQL (pgserver), `parley simulate` (Twilio's Messages API and the
WhatsApp Cloud send endpoint), one `parley dispatcher` (and `parley serve` for the simulator's status
callbacks with --callbacks; a redis-server with --redis). Each round seeds its own users with bulk
COPY (SMS and WhatsApp, in zones where it is day and where it is night, some opted out, some already
at their hourly budget, most of them active in their conversation) and --messages queue rows (replies,
transactional, marketing, compliance confirmations; WhatsApp proactive rows with a template), all due
at one instant T0. The dispatcher drains them; the round's figure is the messages the simulator
accepted by the time nothing was due any more, over the time since T0. Then the round waits for the
rows the spacing gate deferred (30 s by default) to go out, which measures how late a deferred message
leaves after its window opens, and the ceiling client posts the requests the dispatcher sent, with the
same concurrency (PARLEY_DISPATCH_CONCURRENCY).

The checks read the simulator's record (every accepted message, with Parley's queue id): duplicates by
queue id, sends over budget per user and local hour/day (the hour's pre-seeded count included), sends
closer than the spacing, sends to opted-out users, in quiet hours, or after expiry. It prints figures
and never asserts timings; it exits 3 when a check fails, 2 when a process does not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import ingest  # noqa: E402  (bench/ingest.py: processes, percentiles, CPU accounting, py-spy summary)

FORM = "application/x-www-form-urlencoded"
GRAPH_VERSION = "v23.0"
# Zones to draw recipients from; each run sorts them into day and night by the quiet-hours window.
ZONES = (
    "UTC", "Europe/London", "Europe/Berlin", "Europe/Athens", "Africa/Lagos", "Asia/Dubai", "Asia/Kolkata",
    "Asia/Bangkok", "Asia/Singapore", "Asia/Tokyo", "Australia/Sydney", "Pacific/Auckland", "Pacific/Honolulu",
    "America/Anchorage", "America/Los_Angeles", "America/Denver", "America/Chicago", "America/New_York",
    "America/Sao_Paulo", "Atlantic/Azores",
)
TEXTS = (
    "Your order #{n} has shipped and arrives tomorrow.",
    "Thanks for your message! A colleague will call you back within the hour.",
    "Your booking for {n}:30 is confirmed. Reply C to cancel.",
    "Flash sale: 20% off everything until Sunday. Reply STOP to opt out.",
    "Your verification code is {n}.",
    "We have moved your appointment to Thursday. See you then!",
    "Got it, I have updated your delivery address.",
    "Hola 👋 tu pedido #{n} está listo para recoger.",  # UCS-2: two segments' worth of cost
)
CLASS_MIX = (("reply", 0.50), ("transactional", 0.20), ("marketing", 0.25), ("compliance", 0.05))
PROACTIVE = ("transactional", "marketing")
TEMPLATE = ("order_update", "en")


def log(msg: str) -> None:
    print(f"[dispatch {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


# ---------------------------------------------------------------------------------------------
# Traffic


def in_window(local: datetime, window: str) -> bool:
    """Whether a local time is inside an "HH:MM-HH:MM" window (one that may wrap midnight)."""
    if not window:
        return False
    start, end = ((int(p[:2]) * 60 + int(p[3:])) for p in window.split("-"))
    minute = local.hour * 60 + local.minute
    return start <= minute < end if start < end else minute >= start or minute < end


def sort_zones(now: datetime, window: str, margin_min: float = 20) -> tuple[list[str], list[str]]:
    """Zones where it is day and where it is night (quiet hours) now and `margin_min` from now."""
    day, night = [], []
    for name in ZONES:
        zone = ZoneInfo(name)
        states = {in_window((now + timedelta(minutes=m)).astimezone(zone), window) for m in (0, margin_min)}
        if states == {True}:
            night.append(name)
        elif states == {False}:
            day.append(name)
    return day, night


@dataclass
class Person:
    index: int
    phone: str
    whatsapp: bool
    zone: str
    night: bool
    opted_out: bool  # opts out after its rows were queued: the claim's consent re-check suppresses them
    over_budget: bool  # already at the hourly limit in this local hour when the round starts
    last_inbound_at: datetime | None
    channel_id: int = 0
    user_id: int = 0
    conversation_id: int = 0


@dataclass
class Row:
    person: Person
    klass: str
    reason: str
    body: str | None
    template: tuple[str, str] | None
    expires_at: datetime | None
    priority: int


@dataclass
class Round:
    number: int
    people: list[Person]
    rows: list[Row]
    t0: datetime
    seeded_at: datetime
    visible_at: datetime | None = None  # when the rows committed: T0, unless seeding overran it
    lo: int = 0  # queue ids of this round: lo..hi
    hi: int = 0
    results: dict[str, Any] = field(default_factory=dict)


def make_round(number: int, a: argparse.Namespace, now: datetime, day: list[str], night: list[str],
               rng: random.Random) -> tuple[list[Person], list[Row]]:
    """A round's users (its own, so budgets do not carry over from the last round) and its queue rows."""
    people: list[Person] = []
    for i in range(a.users):
        is_night = bool(night) and rng.random() < a.night_share
        recent = rng.random()
        last_inbound = (now - timedelta(seconds=rng.uniform(10, 300)) if recent < 0.6
                        else now - timedelta(hours=rng.uniform(1, 20)) if recent < 0.9 else None)
        people.append(Person(
            index=i, phone=f"+1{number + 2:03d}{5550000 + i:07d}"[:12], whatsapp=rng.random() < a.whatsapp_share,
            zone=rng.choice(night if is_night else day), night=is_night, opted_out=rng.random() < a.opt_out_share,
            over_budget=rng.random() < a.over_budget_share, last_inbound_at=last_inbound))
    rows: list[Row] = []
    classes = [k for k, _ in CLASS_MIX]
    weights = [w for _, w in CLASS_MIX]
    for n in range(a.messages):
        p = rng.choice(people)
        klass = rng.choices(classes, weights)[0]
        reason = {"reply": "agent_reply", "transactional": "operator", "marketing": "broadcast",
                  "compliance": "opt_out_confirmation" if p.opted_out else "opt_in_confirmation"}[klass]
        body = rng.choice(TEXTS).format(n=1000 + n % 9000)
        template = TEMPLATE if p.whatsapp and klass in PROACTIVE else None
        expires = now - timedelta(minutes=5) if rng.random() < a.expired_share else None
        priority = {"compliance": 10, "reply": 5, "transactional": 3, "marketing": 0}[klass]
        rows.append(Row(p, klass, reason, body, template, expires, priority))
    return people, rows


# ---------------------------------------------------------------------------------------------
# The run


class Run:
    def __init__(self, a: argparse.Namespace, tmp: Path) -> None:
        self.a, self.tmp = a, tmp
        self.procs = ingest.Procs()
        self.dsn = ""
        self.postmaster = 0
        self.pids: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        self.env: dict[str, str] = {}
        self.sim_url = ""
        self.public = ""
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.phone_number_id = str(100000000000000 + secrets.randbelow(10**14))
        self.access_token = "EAAG" + secrets.token_hex(16)
        self.app_secret = secrets.token_hex(16)
        self.tenant_id = 0
        self.sms_channels: list[tuple[int, str]] = []
        self.wa_channel = 0
        self.settings: Any = None
        self.rounds: list[Round] = []
        self.sim_seq = 0
        self.accepted: list[dict[str, Any]] = []  # the simulator's record: every message, in order
        self.profile: subprocess.Popen[bytes] | None = None


def wait_log(name: str, proc: subprocess.Popen[bytes], path: Path, needle: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}:\n{path.read_text(errors='replace')[-3000:]}")
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise SystemExit(f"{name} did not log {needle!r} within {timeout_s:.0f}s (log: {path})")


def wait_http(name: str, proc: subprocess.Popen[bytes], url: str, path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}:\n{path.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.2)
    raise SystemExit(f"{name} not answering {url} after {timeout_s:.0f}s (log: {path})")


def start(run: Run) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset, harmless
        import pgserver

    a = run.a
    log("starting PostgreSQL (pgserver) in a fresh directory")
    pg = pgserver.get_server(run.tmp / "pg", cleanup_mode="delete")
    run.procs.pg = pg
    run.dsn = pg.get_uri()
    run.postmaster = int((run.tmp / "pg" / "postmaster.pid").read_text().split()[0])
    run.ports = {"sim": ingest.free_port(), "parley": ingest.free_port()}
    run.sim_url = f"http://127.0.0.1:{run.ports['sim']}"
    run.public = f"http://127.0.0.1:{run.ports['parley']}"
    env = {
        "DATABASE_URL": run.dsn, "PARLEY_HOME": str(run.tmp / "home"), "PUBLIC_BASE_URL": run.public,
        "TWILIO_ACCOUNT_SID": run.account_sid, "TWILIO_AUTH_TOKEN": run.auth_token,
        "TWILIO_API_BASE_URL": run.sim_url, "WHATSAPP_GRAPH_BASE_URL": run.sim_url,
        "WHATSAPP_GRAPH_VERSION": GRAPH_VERSION, "WHATSAPP_PHONE_NUMBER_ID": run.phone_number_id,
        "WHATSAPP_ACCESS_TOKEN": run.access_token, "WHATSAPP_APP_SECRET": run.app_secret,
        "WHATSAPP_VERIFY_TOKEN": secrets.token_hex(8), "PARLEY_API_KEY": secrets.token_urlsafe(24),
        "PARLEY_LOG_LEVEL": a.log_level,
        **dict(kv.split("=", 1) for kv in a.parley_env),
    }
    if a.redis:
        run.ports["redis"] = ingest.free_port()
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("--redis needs redis-server (apt-get install redis-server)")
        (run.tmp / "redis").mkdir()
        proc = run.procs.start([binary, "--port", str(run.ports["redis"]), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(run.tmp / "redis")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run.pids["redis"] = proc.pid
        env["REDIS_URL"] = f"redis://127.0.0.1:{run.ports['redis']}/0"
    run.env = env
    full_env = {**os.environ, **env}
    parley = shutil.which("parley", path=str(Path(sys.executable).parent)) or "parley"
    log("migrating")
    subprocess.run([parley, "migrate"], env=full_env, check=True, stdout=subprocess.DEVNULL)
    run.settings = asyncio.run(seed_world(run))

    sim_cmd = [parley, "simulate", "--port", str(run.ports["sim"]), "--parley-url", run.public]
    if not a.callbacks:
        sim_cmd.append("--no-callbacks")
    if a.latency_ms:
        sim_cmd += ["--latency-ms", str(a.latency_ms)]
    starts: list[tuple[str, list[str]]] = [("simulator", sim_cmd)]
    if a.callbacks:
        # Only the status callbacks' receiver: no dispatcher (the one measured is on its own) and no agents.
        starts.append(("serve", [parley, "serve", "--host", "127.0.0.1", "--port", str(run.ports["parley"])]))
    for name, cmd in starts:
        path = run.tmp / f"{name}.log"
        extra = {"PARLEY_DISPATCHERS": "0", "PARLEY_WORKERS": "0"} if name == "serve" else {}
        with path.open("wb") as fh:
            proc = run.procs.start(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**full_env, **extra})
        run.pids[name] = proc.pid
        url = f"{run.sim_url}/sim/stats" if name == "simulator" else f"{run.public}/readyz"
        wait_http(name, proc, url, path)
        log(f"{name} ready (log {path})")
    path = run.tmp / "dispatcher.log"
    with path.open("wb") as fh:
        proc = run.procs.start([parley, "dispatcher"], stdout=fh, stderr=subprocess.STDOUT, env=full_env)
    run.pids["dispatcher"] = proc.pid
    wait_log("dispatcher", proc, path, "dispatchers started")
    log(f"dispatcher ready (pid {proc.pid}, log {path})")
    if a.profile:
        run.profile = subprocess.Popen(
            [a.py_spy, "record", "--pid", str(proc.pid), "--rate", "100", "--format", "raw", "--output",
             a.profile, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)


async def seed_world(run: Run) -> Any:
    """The default tenant (as `parley serve` would make it from these settings) and its senders: a few
    SMS numbers and the WhatsApp Cloud number, each with a send rate of --send-rate segments/s."""
    from db import pool as db_pool
    from services import settings as settings_mod
    from services import tenants

    settings = settings_mod.load(**run.env)
    pool = await db_pool.create(run.dsn, 2)
    try:
        run.tenant_id = await tenants.bootstrap_default(pool, settings)
        async with pool.acquire() as conn:
            for i in range(run.a.sms_numbers):
                number = f"+1415555{1000 + i:04d}"
                cid = await conn.fetchval(
                    "INSERT INTO channels (tenant_id, kind, address, account_sid, credentials, send_rate, "
                    "send_burst) VALUES ($1, 'twilio_sms', $2, $3, $4, $5, $5) RETURNING id",
                    run.tenant_id, number, run.account_sid, {"auth_token": run.auth_token},
                    run.a.send_rate)
                run.sms_channels.append((cid, number))
            run.wa_channel = await conn.fetchval(
                "UPDATE channels SET send_rate = $2, send_burst = $2 WHERE tenant_id = $1 AND kind = "
                "'whatsapp_cloud' RETURNING id", run.tenant_id, run.a.send_rate)
    finally:
        await pool.close()
    return settings


async def seed_round(run: Run, rnd: Round) -> None:
    """Users, conversations, budget rows and queue rows of one round, by COPY; then the opted-out
    users opt out (after their rows were queued, as a STOP racing the queue would), and a NOTIFY."""
    import asyncpg

    from services.orchestrator import budget

    conn = await asyncpg.connect(run.dsn)
    try:
        now = rnd.seeded_at
        async with conn.transaction():
            await conn.copy_records_to_table(
                "users", columns=["tenant_id", "phone", "consent_state", "consent_updated_at", "time_zone"],
                records=[(run.tenant_id, p.phone, "opted_in", now, p.zone) for p in rnd.people])
            ids = await conn.fetch("SELECT id, phone FROM users WHERE tenant_id = $1 AND phone = ANY($2::text[])",
                                   run.tenant_id, [p.phone for p in rnd.people])
            by_phone = {r["phone"]: r["id"] for r in ids}
            for p in rnd.people:
                p.user_id = by_phone[p.phone]
                p.channel_id = run.wa_channel if p.whatsapp else run.sms_channels[p.index % len(run.sms_channels)][0]
            await conn.copy_records_to_table(
                "conversations", columns=["tenant_id", "user_id", "channel_id", "last_inbound_at", "last_message_at"],
                records=[(run.tenant_id, p.user_id, p.channel_id, p.last_inbound_at, p.last_inbound_at or now)
                         for p in rnd.people])
            convs = await conn.fetch("SELECT id, user_id FROM conversations WHERE user_id = ANY($1::bigint[])",
                                     [p.user_id for p in rnd.people])
            by_user = {r["user_id"]: r["id"] for r in convs}
            for p in rnd.people:
                p.conversation_id = by_user[p.user_id]
            hourly = run.settings.budget_hourly
            await conn.copy_records_to_table(
                "user_message_budget",
                columns=["user_id", "tenant_id", "hour_start", "hour_count", "day_start", "day_count",
                         "last_proactive_at"],
                records=[(p.user_id, run.tenant_id, budget.hour_start(now, ZoneInfo(p.zone)), hourly,
                          budget.day_start(now, ZoneInfo(p.zone)), hourly, now - timedelta(minutes=20))
                         for p in rnd.people if p.over_budget])
            first = await conn.fetchval("SELECT coalesce(max(id), 0) FROM message_queue")
            await conn.copy_records_to_table(
                "message_queue",
                columns=["tenant_id", "conversation_id", "user_id", "channel_id", "body", "priority", "reason",
                         "class", "template_name", "template_language", "scheduled_for", "next_attempt_at",
                         "expires_at"],
                records=[(run.tenant_id, r.person.conversation_id, r.person.user_id, r.person.channel_id, r.body,
                          r.priority, r.reason, r.klass, r.template[0] if r.template else None,
                          r.template[1] if r.template else None, rnd.t0, rnd.t0, r.expires_at)
                         for r in rnd.rows])
            rnd.lo, rnd.hi = first + 1, await conn.fetchval("SELECT max(id) FROM message_queue")
            await conn.execute("UPDATE users SET consent_state = 'opted_out', consent_updated_at = now() "
                               "WHERE id = ANY($1::bigint[])", [p.user_id for p in rnd.people if p.opted_out])
        rnd.visible_at = datetime.now(UTC)
        await conn.execute("ANALYZE message_queue; ANALYZE users; ANALYZE conversations; ANALYZE user_message_budget")
        await conn.execute("SELECT pg_notify('parley_queue', '')")
    finally:
        await conn.close()


async def sim_get(path: str, base: str) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(base + path) as resp:
        resp.raise_for_status()
        return await resp.json()


def fetch_accepted(run: Run) -> list[dict[str, Any]]:
    """Everything the simulator accepted since the last call."""
    async def go() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = await sim_get(f"/sim/messages?after={run.sim_seq}", run.sim_url)
            if not page["messages"]:
                return found
            found += page["messages"]
            run.sim_seq = page["last"]

    new = asyncio.run(go())
    run.accepted += new
    return new


def queue_state(run: Run, rnd: Round) -> dict[str, Any]:
    return ingest.sql(run.dsn, """
        SELECT count(*) FILTER (WHERE status = 'sending') AS sending,
               count(*) FILTER (WHERE status IN ('queued', 'deferred') AND next_attempt_at <= now()) AS due,
               min(next_attempt_at) FILTER (WHERE status = 'deferred' AND next_attempt_at > now()
                                                AND next_attempt_at < now() + interval '5 minutes') AS next_release,
               max(next_attempt_at) FILTER (WHERE status = 'deferred' AND next_attempt_at > now()
                                                AND next_attempt_at < now() + interval '5 minutes') AS last_release
        FROM message_queue WHERE id BETWEEN $1 AND $2""", rnd.lo, rnd.hi)[0]


def cpu_snapshot(run: Run) -> dict[str, float]:
    out = {name: ingest.sched_s(ingest.process_tree(pid))[0] for name, pid in run.pids.items()}
    out["postgres"] = ingest.sched_s(ingest.postgres_pids(run.postmaster))[0]
    out["machine"] = ingest.machine_cpu_s()[0]
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    d = {k: (after[k] - before.get(k, 0.0)) / wall for k in after}
    d["other"] = d.pop("machine") - sum(d.values())
    return d


def drive_parley(run: Run, rnd: Round) -> None:
    """Wait for T0, then until nothing of the round is due or in flight."""
    cpu0 = cpu_snapshot(run)
    # From T0, or from the rows' commit when seeding on a busy machine took longer than --lead-s.
    t0 = max(rnd.t0.timestamp(), rnd.visible_at.timestamp() if rnd.visible_at else 0.0)
    time.sleep(max(0.0, t0 - time.time()))
    while True:
        time.sleep(0.1)
        state = queue_state(run, rnd)
        if state["sending"] == 0 and state["due"] == 0:
            break
    done = time.time()
    cpu = cpu_delta(cpu0, cpu_snapshot(run), max(done - t0, 1e-3))
    new = [m for m in fetch_accepted(run) if m["queue_id"] is not None and rnd.lo <= m["queue_id"] <= rnd.hi]
    accepted = [(datetime.fromisoformat(m["created_at"]).timestamp() - t0) for m in new]
    last = max(accepted) if accepted else 0.0
    rnd.results["parley"] = {
        "sent": len(new), "drain_s": last, "messages_per_s": len(new) / last if last > 0 else None,
        "latency_ms": {k: v * 1e3 for k, v in ingest.percentiles(accepted).items()},
        "cpu_cores": cpu, "waited_s": done - t0,
    }


def wait_releases(run: Run, rnd: Round) -> dict[str, Any]:
    """Wait for the round's deferrals that end within a few minutes (spacing) to be released and sent."""
    started = time.time()
    while True:
        state = queue_state(run, rnd)
        if state["last_release"] is None and state["due"] == 0 and state["sending"] == 0:
            break
        if state["last_release"] is not None:
            time.sleep(min(5.0, max(0.2, state["last_release"].timestamp() - time.time() + 0.5)))
        else:
            time.sleep(0.2)
        if time.time() - started > 400:
            log("gave up waiting for deferred rows to be released")
            break
    fetch_accepted(run)
    return {"waited_s": time.time() - started}


def ceiling_requests(run: Run, rnd: Round) -> list[tuple[str, dict[str, str], str]]:
    """What the dispatcher sent in this round, request by request (same sender, recipient, body or
    template, callback URL of the same length), with callback ids the simulator does not read as
    Parley's queue ids, so that the ceiling never counts as a duplicate send."""
    import base64
    import urllib.parse

    rows = ingest.sql(run.dsn, """
        SELECT q.id, q.body, q.sends_template, q.template_name, q.template_language, q.template_variables,
               u.phone, ch.kind, ch.address
        FROM message_queue q JOIN users u ON u.id = q.user_id JOIN channels ch ON ch.id = q.channel_id
        WHERE q.id BETWEEN $1 AND $2 AND q.status IN ('sent', 'delivered', 'read', 'undelivered')
        ORDER BY q.id""", rnd.lo, rnd.hi)
    basic = "Basic " + base64.b64encode(f"{run.account_sid}:{run.auth_token}".encode()).decode()
    twilio_url = f"{run.sim_url}/2010-04-01/Accounts/{run.account_sid}/Messages.json"
    meta_url = f"{run.sim_url}/{GRAPH_VERSION}/{run.phone_number_id}/messages"
    out: list[tuple[str, dict[str, str], str]] = []
    for r in rows:
        if r["kind"] == "whatsapp_cloud":
            message: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual",
                                       "to": r["phone"], "biz_opaque_callback_data": f"c:{r['id']}"}
            if r["sends_template"]:
                message.update(type="template", template={"name": r["template_name"],
                                                          "language": {"code": r["template_language"]}})
            else:
                message.update(type="text", text={"preview_url": False, "body": r["body"]})
            out.append((meta_url, {"Authorization": f"Bearer {run.access_token}",
                                   "Content-Type": "application/json"}, json.dumps(message)))
        else:
            form = {"To": r["phone"], "From": r["address"], "Body": r["body"],
                    "StatusCallback": f"{run.public}/webhooks/twilio/status?q=c{r['id']}"}
            out.append((twilio_url, {"Authorization": basic, "Content-Type": FORM}, urllib.parse.urlencode(form)))
    return out


def drive_ceiling(run: Run, rnd: Round) -> None:
    requests = ceiling_requests(run, rnd)
    spec = run.tmp / f"ceiling-{rnd.number}.json"
    spec.write_text(json.dumps({"requests": requests, "concurrency": run.a.concurrency}))
    cpu0 = cpu_snapshot(run)
    children0 = ingest.rusage_s(ingest.resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = run.procs.start([sys.executable, str(Path(__file__).resolve()), "_ceiling", str(spec)],
                           stdout=subprocess.PIPE)
    run.pids["ceiling_client"] = proc.pid
    out, _ = proc.communicate()
    wall = time.time() - started
    run.pids.pop("ceiling_client", None)
    cpu = cpu_delta(cpu0, cpu_snapshot(run), wall)
    # The client has exited: its CPU is in this process's children's rusage, not in /proc.
    cpu["ceiling_client"] = (ingest.rusage_s(ingest.resource.RUSAGE_CHILDREN) - children0) / wall
    cpu["other"] -= cpu["ceiling_client"]
    result = json.loads(out)
    result["cpu_cores"], result["waited_s"] = cpu, wall
    rnd.results["ceiling"] = result
    fetch_accepted(run)


async def _ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: `concurrency` workers post the requests as fast as the simulator answers them."""
    import aiohttp

    requests = spec["requests"]
    concurrency = spec["concurrency"]
    latency: list[float] = []
    statuses: Counter[int] = Counter()
    it = iter(requests)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()

        async def worker() -> None:
            for url, headers, body in it:
                async with session.post(url, data=body.encode(), headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
                latency.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {"sent": ok, "requests": len(requests), "statuses": dict(statuses), "drain_s": elapsed,
            "messages_per_s": ok / elapsed if elapsed > 0 else None,
            "latency_ms": {k: v * 1e3 for k, v in ingest.percentiles(latency).items()}}


# ---------------------------------------------------------------------------------------------
# Checks, from the simulator's record


def verify(run: Run) -> dict[str, Any]:
    from services.orchestrator import budget

    s = run.settings
    ours = [m for m in run.accepted if m["queue_id"] is not None]
    per_queue = Counter(m["queue_id"] for m in ours)
    duplicates = {q: n for q, n in per_queue.items() if n > 1}
    rows = {r["id"]: r for r in ingest.sql(run.dsn, """
        SELECT q.id, q.user_id, q.class, q.reason, q.expires_at, u.time_zone, u.consent_state,
               c.last_inbound_at
        FROM message_queue q JOIN users u ON u.id = q.user_id JOIN conversations c ON c.id = q.conversation_id""")}
    # Users seeded at their hourly limit: that count is in the hour (and day) of their round's seeding.
    seeded = {p.user_id: rnd.seeded_at for rnd in run.rounds for p in rnd.people if p.over_budget}
    zones = {r["user_id"]: ZoneInfo(r["time_zone"]) for r in rows.values()}
    first: dict[int, datetime] = {}
    for m in ours:
        first.setdefault(m["queue_id"], datetime.fromisoformat(m["created_at"]))
    hours: dict[tuple[int, datetime], list[datetime]] = defaultdict(list)
    days: dict[tuple[int, datetime], list[datetime]] = defaultdict(list)
    reply_hours: dict[tuple[int, datetime], list[datetime]] = defaultdict(list)
    proactive: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
    opted_out_sent, quiet_sent, expired_sent = [], [], []
    for qid, at in first.items():
        r = rows[qid]
        zone = ZoneInfo(r["time_zone"])
        if r["consent_state"] == "opted_out" and r["reason"] != "opt_out_confirmation":
            opted_out_sent.append(qid)
        if r["expires_at"] is not None and r["expires_at"] <= at:
            expired_sent.append(qid)
        active = r["last_inbound_at"] is not None and at - r["last_inbound_at"] <= timedelta(
            minutes=s.active_user_minutes)
        if (r["class"] != "compliance" and not (r["class"] == "reply" and active)
                and in_window(at.astimezone(zone), s.quiet_hours)):
            quiet_sent.append(qid)
        if r["class"] in PROACTIVE:
            hours[(r["user_id"], budget.hour_start(at, zone))].append(at)
            days[(r["user_id"], budget.day_start(at, zone))].append(at)
            proactive[r["user_id"]].append((at, qid))
        elif r["class"] == "reply":
            reply_hours[(r["user_id"], budget.hour_start(at, zone))].append(at)

    def seeded_in(user_id: int, zone: ZoneInfo, window: datetime, hour: bool) -> int:
        at = seeded.get(user_id)
        if at is None:
            return 0
        return s.budget_hourly if (budget.hour_start if hour else budget.day_start)(at, zone) == window else 0

    over: list[dict[str, Any]] = []
    for (user_id, window), sends in hours.items():
        used = len(sends) + seeded_in(user_id, zones[user_id], window, True)
        if used > s.budget_hourly:
            over.append({"user_id": user_id, "window": "hour", "start": window.isoformat(), "used": used})
    for (user_id, window), sends in days.items():
        used = len(sends) + seeded_in(user_id, zones[user_id], window, False)
        if used > s.budget_daily:
            over.append({"user_id": user_id, "window": "day", "start": window.isoformat(), "used": used})
    for (user_id, window), sends in reply_hours.items():
        if len(sends) > s.reply_limit_hourly:
            over.append({"user_id": user_id, "window": "reply hour", "start": window.isoformat(),
                         "used": len(sends)})
    # The dispatcher spaces by its claim times; accepted times differ from those by the send's own
    # latency, so a gap short of the spacing by more than a second is what counts.
    claimed = {r["id"]: r["send_started_at"] for r in ingest.sql(
        run.dsn, "SELECT id, send_started_at FROM message_queue WHERE send_started_at IS NOT NULL")}
    too_close: list[dict[str, Any]] = []
    for spaced in proactive.values():
        spaced.sort()
        for (x, qx), (y, qy) in zip(spaced, spaced[1:], strict=False):
            if (y - x).total_seconds() < s.min_spacing_s - 1:
                cx, cy = claimed.get(qx), claimed.get(qy)
                too_close.append({
                    "queue_ids": [qx, qy], "accepted_gap_s": round((y - x).total_seconds(), 2),
                    "claimed_gap_s": round((cy - cx).total_seconds(), 2) if cx and cy else None,
                    "first_claim_to_accept_s": round((x - cx).total_seconds(), 2) if cx else None})
    releases = release_lags(run, first)
    # Spacing is the dispatcher's promise by its own clock (claim to claim); a pair claimed a full
    # spacing apart but accepted closer (the first send took longer) is reported, not failed.
    spacing_broken = any((v["claimed_gap_s"] or 0) < s.min_spacing_s for v in too_close)
    failed = bool(duplicates or over or spacing_broken or opted_out_sent or quiet_sent or expired_sent)
    return {
        "accepted": len(ours), "distinct_queue_ids": len(per_queue), "duplicates": len(duplicates),
        "duplicate_examples": list(duplicates.items())[:5], "over_budget": len(over), "over_budget_examples": over[:5],
        "spacing_violations": len(too_close), "spacing_examples": too_close[:3],
        "spacing_claimed_ok": all((v["claimed_gap_s"] or 0) >= s.min_spacing_s for v in too_close),
        "opted_out_sent": len(opted_out_sent), "quiet_hours_sent": len(quiet_sent),
        "expired_sent": len(expired_sent), "release": releases, "failed": failed,
    }


def release_lags(run: Run, first: dict[int, datetime]) -> dict[str, Any]:
    """For each row that was deferred and then sent: how long after its last deferral ended it was
    accepted, under the gate of that deferral (a row spaced, then held by its budget, counts once, as
    the budget's)."""
    rows = ingest.sql(run.dsn, """
        SELECT DISTINCT ON (queue_id) queue_id, gate, until FROM message_queue_verdicts
        WHERE verdict = 'defer' AND until IS NOT NULL ORDER BY queue_id, id DESC""")
    lags: dict[str, list[float]] = defaultdict(list)
    waiting: Counter[str] = Counter()
    for r in rows:
        at = first.get(r["queue_id"])
        if at is None:
            waiting[r["gate"]] += 1
            continue
        lags[r["gate"]].append((at - r["until"]).total_seconds())
    return {gate: {"sent": len(v), **{k: x * 1e3 for k, x in ingest.percentiles(v).items()}}
            for gate, v in lags.items()} | {"still_deferred": dict(waiting)}


def outcomes(run: Run) -> dict[str, Any]:
    status = {r["status"]: r["n"] for r in ingest.sql(
        run.dsn, "SELECT status, count(*) AS n FROM message_queue GROUP BY status ORDER BY n DESC")}
    verdicts = {f"{r['gate']}:{r['verdict']}": r["n"] for r in ingest.sql(
        run.dsn, "SELECT gate, verdict, count(*) AS n FROM message_queue_verdicts GROUP BY gate, verdict "
                 "ORDER BY n DESC")}
    return {"status": status, "verdicts": verdicts}


# ---------------------------------------------------------------------------------------------
# Report


def summarize(run: Run) -> dict[str, Any]:
    def series(target: str) -> list[float]:
        return [r.results[target]["messages_per_s"] or 0.0 for r in run.rounds if target in r.results]

    parley, ceiling = series("parley"), series("ceiling")
    ratios = [p / c for p, c in zip(parley, ceiling, strict=False) if c]
    return {
        "parley_per_s": _spread(parley), "ceiling_per_s": _spread(ceiling), "ratio": _spread(ratios),
    }


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(run: Run, meta: dict[str, Any], check: dict[str, Any], outcome: dict[str, Any],
           summary: dict[str, Any]) -> str:
    a = run.a
    lines = [
        "=" * 100,
        f"bench/dispatch.py  tree {meta['source']}",
        f"machine {meta['machine']}; load before {meta['load_before']}; {meta['postgres']}",
        f"{a.rounds} rounds x {a.messages} queue rows over {a.users} users of their own; one `parley dispatcher` "
        f"(batch {meta['batch']}, concurrency {a.concurrency}); throughput bucket "
        f"{'Redis' if a.redis else 'in-process'}; status callbacks {'to parley serve' if a.callbacks else 'off'}",
        f"zones at night now (quiet hours {run.settings.quiet_hours}): {', '.join(meta['night_zones']) or 'none'}",
        "=" * 100,
        "",
        f"{'round':>5s} {'sent':>7s} {'drain s':>8s} {'parley/s':>9s} {'ceiling/s':>10s} {'ratio':>7s} "
        f"{'p50 ms':>8s} {'p99 ms':>8s} {'ceil p50':>9s} {'ceil p99':>9s}   "
        "CPU cores (dispatcher, simulator, postgres, other)",
    ]
    for r in run.rounds:
        p, c = r.results.get("parley", {}), r.results.get("ceiling", {})
        pl, cl = p.get("latency_ms", {}), c.get("latency_ms", {})
        ratio = (p.get("messages_per_s") or 0) / c["messages_per_s"] if c.get("messages_per_s") else None
        cpu = p.get("cpu_cores", {})
        lines.append(
            f"{r.number:>5d} {p.get('sent', 0):>7d} {fmt(p.get('drain_s'), '.2f'):>8s} "
            f"{fmt(p.get('messages_per_s'), '.0f'):>9s} {fmt(c.get('messages_per_s'), '.0f'):>10s} "
            f"{fmt(ratio * 100 if ratio is not None else None, '.1f'):>6s}% "
            f"{fmt(pl.get('p50'), '.0f'):>8s} {fmt(pl.get('p99'), '.0f'):>8s} "
            f"{fmt(cl.get('p50'), '.0f'):>9s} {fmt(cl.get('p99'), '.0f'):>9s}   "
            + ", ".join(fmt(cpu.get(k), ".2f") for k in ("dispatcher", "simulator", "postgres", "other")))
    for r in run.rounds:
        c = r.results.get("ceiling", {})
        if c and c.get("sent") != c.get("requests"):
            lines.append(f"  round {r.number}: the ceiling's statuses {c.get('statuses')}")
    lines.append("")
    lines.append("CPU per message sent, ms (cores x drain / sent), median over rounds; 'other' is not this run:")
    for target, names in (("parley", ("dispatcher", "simulator", "postgres", "serve", "redis", "other")),
                          ("ceiling", ("ceiling_client", "simulator", "postgres", "serve", "other"))):
        per: dict[str, list[float]] = defaultdict(list)
        for r in run.rounds:
            res = r.results.get(target, {})
            wall = res.get("waited_s") or res.get("drain_s") or 0
            if res.get("sent"):
                for k, v in res.get("cpu_cores", {}).items():
                    per[k].append(v * wall / res["sent"] * 1e3)
        lines.append(f"  {target:8s} " + ", ".join(
            f"{k} {statistics.median(per[k]):.2f}" for k in names if per.get(k)))
    sp, sc, sr = summary["parley_per_s"], summary["ceiling_per_s"], summary["ratio"]
    ratio_ok = (sr["median"] or 0) >= 0.40
    rate_ok = (sp["median"] or 0) >= 2000
    lines += [
        "",
        f"messages/s, queued -> accepted: median {fmt(sp['median'], '.0f')} (min {fmt(sp['min'], '.0f')}, max "
        f"{fmt(sp['max'], '.0f')})   target >= 2,000: {'met' if rate_ok else 'NOT MET'}",
        f"ceiling (bare aiohttp, same requests): median {fmt(sc['median'], '.0f')} (min {fmt(sc['min'], '.0f')}, "
        f"max {fmt(sc['max'], '.0f')})",
        f"ratio: median {fmt((sr['median'] or 0) * 100, '.1f')}% (min {fmt((sr['min'] or 0) * 100, '.1f')}%, max "
        f"{fmt((sr['max'] or 0) * 100, '.1f')}%)   target >= 40%: {'met' if ratio_ok else 'NOT MET'}",
        "  (latency: from T0, when the whole round became due, so p50 is about half the drain: a backlog's)",
        "",
        "Deferred, then released and sent (lag = accepted - the deferral's end), per gate that deferred:",
    ]
    rel = check["release"]
    for gate, v in rel.items():
        if gate == "still_deferred":
            continue
        lines.append(f"  {gate:12s} {v['sent']:>6d} sent; lag p50 {fmt(v.get('p50'), '.0f')} ms, p99 "
                     f"{fmt(v.get('p99'), '.0f')} ms, max {fmt(v.get('max'), '.0f')} ms   target <= 2 s: "
                     f"{'met' if (v.get('max') or 0) <= 2000 else 'NOT MET'}")
    lines.append(f"  still deferred at the end (later windows: next hour, next day, morning): "
                 f"{rel.get('still_deferred') or 'none'}")
    lines += [
        "",
        "Outcomes (all rounds): " + ", ".join(f"{k} {v}" for k, v in outcome["status"].items()),
        "Verdicts: " + ", ".join(f"{k} {v}" for k, v in outcome["verdicts"].items()),
        "",
        "Checks, from the simulator's record:",
        f"  accepted with a queue id {check['accepted']}, distinct {check['distinct_queue_ids']}; "
        f"duplicates {check['duplicates']} {check['duplicate_examples'] or ''}",
        f"  sends over budget (per user, local hour/day, replies' hourly guard) {check['over_budget']} "
        f"{check['over_budget_examples'] or ''}",
        f"  proactive sends accepted closer than the spacing (by > 1 s) {check['spacing_violations']}"
        + (f" {check['spacing_examples']}; all {'were' if check['spacing_claimed_ok'] else 'were NOT'} claimed "
           "a full spacing apart" if check["spacing_violations"] else ""),
        f"  sends to opted-out users {check['opted_out_sent']}; in quiet hours {check['quiet_hours_sent']}; "
        f"after expiry {check['expired_sent']}",
        "  " + ("!!! A CHECK FAILED" if check["failed"] else "all OK"),
    ]
    if meta.get("profile"):
        lines += ["", f"py-spy profile of the dispatcher over the whole run ({meta['profile']}):"]
        lines += ingest.profile_summary(meta["profile"], 100 * meta["profile_wall_s"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_ceiling"]:
        with contextlib.suppress(ImportError):
            import uvloop  # the dispatcher runs on uvloop too (services/cli.py)

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        print(json.dumps(asyncio.run(_ceiling(json.loads(Path(argv[1]).read_text())))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=5000, help="users per round, each round its own (default 5000)")
    parser.add_argument("--messages", type=int, default=10000, help="queue rows per round (default 10000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--redis", action="store_true", help="throughput buckets in Redis (a redis-server of its own)")
    parser.add_argument("--callbacks", action="store_true",
                        help="the simulator posts status callbacks to a running parley serve")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="PARLEY_DISPATCH_CONCURRENCY, and the ceiling's (default: the setting's default)")
    parser.add_argument("--sms-numbers", type=int, default=4, help="SMS sender numbers (default 4)")
    parser.add_argument("--send-rate", type=float, default=5000,
                        help="each sender's throughput, segments/s (default 5000: the gate runs but holds nothing)")
    parser.add_argument("--whatsapp-share", type=float, default=0.3)
    parser.add_argument("--night-share", type=float, default=0.15, help="users in zones in quiet hours now")
    parser.add_argument("--opt-out-share", type=float, default=0.03)
    parser.add_argument("--over-budget-share", type=float, default=0.05,
                        help="users already at their hourly limit when the round starts")
    parser.add_argument("--expired-share", type=float, default=0.01)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the simulator's answer latency")
    parser.add_argument("--lead-s", type=float, default=5.0, help="seconds from seeding to T0 (default 5)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--log-level", default="INFO", help="PARLEY_LOG_LEVEL of the processes (default INFO)")
    parser.add_argument("--parley-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the dispatcher (e.g. PARLEY_DISPATCH_BATCH=200)")
    parser.add_argument("--profile", metavar="PATH", help="py-spy raw profile of the dispatcher (pip install py-spy)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write results as JSON to PATH ('-': stdout, the table to stderr)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    a = parser.parse_args(argv)
    from services import settings as settings_mod

    defaults = settings_mod.load()
    if a.concurrency is None:
        a.concurrency = defaults.dispatch_concurrency
    a.parley_env = [f"PARLEY_DISPATCH_CONCURRENCY={a.concurrency}", *a.parley_env]
    a.py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if a.profile and not a.py_spy:
        parser.error("--profile needs py-spy (.venv/bin/pip install py-spy)")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="parley-dispatch-"))
    run = Run(a, tmp)
    status = 0
    try:
        root = ingest.parley_root()
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        start(run)
        started = time.time()
        version = ingest.sql(run.dsn, "SELECT current_setting('server_version') AS v, "
                                      "current_setting('synchronous_commit') AS sc")[0]
        now = datetime.now(UTC)
        day, night = sort_zones(now, run.settings.quiet_hours)
        rng = random.Random(a.seed)
        meta: dict[str, Any] = {
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
            "source": f"{ingest.source_fingerprint(root)} ({root})", "load_before": " ".join(load_before),
            "postgres": f"PostgreSQL {version['v']}, synchronous_commit={version['sc']}",
            "batch": dict(kv.split("=", 1) for kv in a.parley_env).get(
                "PARLEY_DISPATCH_BATCH", str(defaults.dispatch_batch)),
            "night_zones": night, "day_zones": day,
        }
        for number in range(1, a.rounds + 1):
            now = datetime.now(UTC)
            people, rows = make_round(number, a, now, day, night, rng)
            rnd = Round(number, people, rows, now + timedelta(seconds=a.lead_s), now)
            run.rounds.append(rnd)
            asyncio.run(seed_round(run, rnd))
            if datetime.now(UTC) >= rnd.t0:
                log(f"round {number}: seeding overran --lead-s: measured from the rows' commit, not T0")
            drive_parley(run, rnd)
            p = rnd.results["parley"]
            log(f"round {number}: {p['sent']} sent in {p['drain_s']:.2f}s = {fmt(p['messages_per_s'], '.0f')}/s")
            rnd.results["releases"] = wait_releases(run, rnd)
            drive_ceiling(run, rnd)
            c = rnd.results["ceiling"]
            log(f"round {number}: ceiling {c['sent']} in {c['drain_s']:.2f}s = {fmt(c['messages_per_s'], '.0f')}/s")
        if run.profile is not None:
            run.profile.send_signal(signal.SIGINT)
            run.profile.wait(30)
            meta["profile"], meta["profile_wall_s"] = a.profile, time.time() - started
        check = verify(run)
        outcome = outcomes(run)
        summary = summarize(run)
        meta["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        text = report(run, meta, check, outcome, summary)
        print(text, file=sys.stderr if a.json == "-" else sys.stdout, flush=True)
        if a.json:
            doc = json.dumps({"meta": meta, "args": vars(a), "summary": summary, "checks": check,
                              "outcomes": outcome,
                              "rounds": [{"round": r.number, "lo": r.lo, "hi": r.hi, **r.results} for r in run.rounds]},
                             indent=2, default=str)
            if a.json == "-":
                print(doc)
            else:
                Path(a.json).write_text(doc)
        if check["failed"]:
            status = 3
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        status = 130
    except SystemExit as exc:
        log(str(exc))
        status = 2
    finally:
        if run.profile is not None and run.profile.poll() is None:
            run.profile.kill()
        run.procs.stop_all()
        if run.procs.pg is not None:
            with contextlib.suppress(Exception):
                run.procs.pg.cleanup()
        if a.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
