"""Inbound webhook throughput and latency of `parley serve` on realistic traffic, next to the HTTP
ceiling of this machine, for Twilio SMS and WhatsApp Cloud.

    .venv/bin/python bench/ingest.py [--provider both] [--duration 30] [--rate 1000] [--json [PATH]]
    .venv/bin/python bench/ingest.py --provider twilio --users 500 --new-share 0 --keyword-every 0 \\
        --duration 10        # the traffic of the issue-2 figures: 500 repeat senders, no keywords

One run starts a fresh PostgreSQL (pgserver, synchronous_commit on), `parley serve` against it (its
agent worker included, as deployed), and bench/ceiling_app.py (aiohttp that only parses the form or
the JSON). For each provider it pre-signs the traffic: a pool of known senders, each sending one
message in the warm-up, then measured phases where a quarter of the messages come from first-time
senders and one in 200 is a keyword (STOPs from distinct users). Both servers get the same requests,
from processes of their own: a closed loop with C connections (wrk + bench/wrk_signed.lua, or the
Python client below when wrk is missing), then an open loop at R requests/s whose latency counts
from each request's scheduled send time, so a server that falls behind shows its queue (no
coordinated omission). It records how far behind parley's agents are when each phase stops, checks
that every message parley answered 200 is stored, that the first-time senders became users and the
keywords were stored as such, and prints a table. It reads parley's tables, never its code.

The load generator shares the machine's cores with the servers and PostgreSQL, so the absolute
figures say as much about this machine as about parley: the ratio to the ceiling, measured the same
way in the same run, is the figure to compare. It prints figures and never asserts timings; it exits
non-zero only when the commit check fails or a process does not start.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import gc
import hashlib
import hmac
import json
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
FORM = "application/x-www-form-urlencoded"
TARGETS = ("ceiling", "parley")
# Message ids = prefix + run nonce (8 hex) + phase (2 hex) + index (22 hex): each phase is SQL-countable.
PHASES = {"warmup": 1, "closed": 2, "open": 3}
TEXTS = (
    "Hi, is my order #{n} on its way?",
    "What time do you open tomorrow?",
    "Can I move my booking to {n}pm?",
    "Thanks! That worked.",
    "My code is {n}, it says invalid",
    "Do you deliver to 94{n} ?",
    "ok",
    "Could someone call me back please",
    "Where is the nearest store?",
    "Price for {n} units?",
)
# Keyword messages cycle through these four: two opt-outs from users who never opted out before, a
# HELP, and a START from the oldest opted-out user, so opt-outs accumulate slowly (one user in 800
# messages), as they do in real traffic, instead of piling up on a few users or never happening.
KEYWORD_CYCLE = ("stop", "help", "stop", "start")
KEYWORD_WORDS = {"stop": ("STOP", "Stop", "unsubscribe"), "help": ("HELP", "info"), "start": ("START", "unstop")}
NAMES = ("Amara Okafor", "Sheena Nelson", "Li Wei", "Jonas Berg", "Maria Garcia", "Priya Shah")


@dataclass(frozen=True)
class Provider:
    name: str
    label: str
    path: str
    header: str  # the signature header
    content_type: str
    db_name: str  # messages.provider
    id_prefix: str  # of the provider's message ids
    known_prefix: str  # sender numbers: the pool warmed up before the measured phases ...
    new_prefix: str  # ... and the first-time senders, each used once (disjoint across providers)


PROVIDERS = {
    "twilio": Provider("twilio", "Twilio SMS", "/webhooks/twilio", "X-Twilio-Signature", FORM, "twilio", "SM",
                       "+1415", "+1628"),
    "whatsapp": Provider("whatsapp", "WhatsApp Cloud", "/webhooks/whatsapp", "X-Hub-Signature-256",
                         "application/json", "meta", "wamid.", "1650", "1747"),
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Traffic and signed payloads


def twilio_signature(token: bytes, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature: HMAC-SHA1 of the URL followed by every name+value, sorted by name."""
    data = url + "".join(k + v for k, v in sorted(params))
    return base64.b64encode(hmac.new(token, data.encode(), hashlib.sha1).digest()).decode()


def meta_signature(secret: bytes, body: bytes) -> str:
    """Meta's X-Hub-Signature-256: HMAC-SHA256 of the raw body with the app secret."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


_quote = functools.lru_cache(maxsize=65536)(urllib.parse.quote_plus)


@dataclass(frozen=True, slots=True)
class Line:
    """What one pre-signed request says, kept to check what parley stored."""

    sender: str
    new: bool  # the sender's first message in the run
    keyword: str | None  # "stop", "help", "start"


@dataclass
class Traffic:
    """Who sends what, decided before anything is sent: a pool of `users` known senders (each sends
    one message in the warm-up, so parley has seen them all before the measured phases), first-time
    senders (a `new_share` of each measured phase's messages, each sender used once in the whole
    run), and one keyword in `keyword_every` messages (0: none). Seeded: every run sends the same."""

    provider: Provider
    users: int
    new_share: float
    keyword_every: int
    next_new: int = 0
    keywords: int = 0
    stop_order: list[int] = field(default_factory=list)
    stopped: deque[int] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.stop_order = list(range(self.users))
        random.Random(f"{self.provider.name}/stop").shuffle(self.stop_order)

    def known(self, i: int) -> str:
        return f"{self.provider.known_prefix}{2000000 + i:07d}"

    def plan(self, phase: str, count: int) -> list[Line]:
        if phase == "warmup":  # every known sender once (then round again), plain messages only
            return [Line(self.known(i % self.users), i < self.users, None) for i in range(count)]
        rng = random.Random(f"{self.provider.name}/{phase}")
        lines = []
        for i in range(count):
            if self.keyword_every and i % self.keyword_every == 0:
                kind = KEYWORD_CYCLE[self.keywords % len(KEYWORD_CYCLE)]
                self.keywords += 1
                if kind == "stop":  # never twice from the same user, until the pool is used up
                    user = self.stop_order[(self.keywords // 2) % self.users]
                    self.stopped.append(user)
                elif kind == "start" and self.stopped:
                    user = self.stopped.popleft()
                else:
                    user = rng.randrange(self.users)
                lines.append(Line(self.known(user), False, kind))
            elif int((i + 1) * self.new_share) > int(i * self.new_share):
                self.next_new += 1
                lines.append(Line(f"{self.provider.new_prefix}{2000000 + self.next_new:07d}", True, None))
            else:
                lines.append(Line(self.known(rng.randrange(self.users)), False, None))
        return lines


@dataclass
class Payloads:
    provider: Provider
    url: str  # what parley is reached at (Twilio signs it)
    secret: str  # Twilio's auth token or Meta's app secret
    account_sid: str
    phone_number_id: str
    traffic: Traffic
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))
    plans: dict[str, list[Line]] = field(default_factory=dict)

    def sid(self, phase: str, i: int) -> str:
        return f"{self.provider.id_prefix}{self.nonce}{PHASES[phase]:02x}{i:022x}"

    def phase_prefix(self, phase: str) -> str:
        return f"{self.provider.id_prefix}{self.nonce}{PHASES[phase]:02x}"

    def write(self, phase: str, count: int, paths: list[Path]) -> None:
        """`count` requests, "<signature>\\t<body>" a line, dealt round-robin over `paths`."""
        self.plans[phase] = lines = self.traffic.plan(phase, count)
        sign = self._twilio if self.provider.name == "twilio" else self._whatsapp
        files = [p.open("w") for p in paths]
        try:
            for i, line in enumerate(lines):
                text = KEYWORD_WORDS[line.keyword][i % len(KEYWORD_WORDS[line.keyword])] if line.keyword else (
                    TEXTS[i % len(TEXTS)].format(n=i % 997))
                signature, body = sign(self.sid(phase, i), line.sender, text, i)
                files[i % len(files)].write(f"{signature}\t{body}\n")
        finally:
            for f in files:
                f.close()

    def _twilio(self, sid: str, sender: str, text: str, i: int) -> tuple[str, str]:
        params = [
            ("ToCountry", "US"),
            ("ToState", "CA"),
            ("SmsMessageSid", sid),
            ("NumMedia", "0"),
            ("ToCity", "SAN FRANCISCO"),
            ("FromZip", "94105"),
            ("SmsSid", sid),
            ("FromState", "CA"),
            ("SmsStatus", "received"),
            ("FromCity", "SAN FRANCISCO"),
            ("Body", text),
            ("FromCountry", "US"),
            ("To", "+14155238886"),
            ("ToZip", "94105"),
            ("NumSegments", "1"),
            ("MessageSid", sid),
            ("AccountSid", self.account_sid),
            ("From", sender),
            ("ApiVersion", "2010-04-01"),
        ]
        if i == 0:
            self._check_against_twilio(params)
        body = "&".join(f"{k}={_quote(v)}" for k, v in params)
        return twilio_signature(self.secret.encode(), self.url, params), body

    def _whatsapp(self, wamid: str, sender: str, text: str, i: int) -> tuple[str, str]:
        # The shape of tests/testdata/whatsapp_cloud/text.json: one message per delivery, compact as
        # Meta sends it, ASCII only (non-ASCII is \\u-escaped) so a line's length is its byte count.
        payload = {
            "object": "whatsapp_business_account",
            "entry": [{"id": "310987654321098", "changes": [{"value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550109876", "phone_number_id": self.phone_number_id},
                "contacts": [{"profile": {"name": NAMES[i % len(NAMES)]}, "wa_id": sender}],
                "messages": [{"from": sender, "id": wamid, "timestamp": str(1776329412 + i), "type": "text",
                              "text": {"body": text}}],
            }, "field": "messages"}]}],
        }
        body = json.dumps(payload, separators=(",", ":"))
        return meta_signature(self.secret.encode(), body.encode()), body

    def _check_against_twilio(self, params: list[tuple[str, str]]) -> None:
        from twilio.request_validator import RequestValidator

        expected = RequestValidator(self.secret).compute_signature(self.url, dict(params))
        if expected != twilio_signature(self.secret.encode(), self.url, params):
            raise SystemExit("bench bug: our signature differs from twilio.RequestValidator's")


def signature_cost_us() -> dict[str, float]:
    """What verifying one request's signature costs here (µs), for the README's ceiling argument."""
    import timeit

    body = b"x" * 700
    n = 20000
    sha1 = timeit.timeit(lambda: hmac.new(b"k" * 32, body, hashlib.sha1).digest(), number=n) / n
    sha256 = timeit.timeit(lambda: hmac.new(b"k" * 32, body, hashlib.sha256).digest(), number=n) / n
    return {"hmac_sha1_700B": sha1 * 1e6, "hmac_sha256_700B": sha256 * 1e6}


# ---------------------------------------------------------------------------------------------
# Python load client (run as `ingest.py _client SPEC.json`, in its own process)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def at(q: float) -> float:
        return s[min(len(s) - 1, max(0, int(q * len(s) + 0.5) - 1))]

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999), "max": s[-1], "mean": sum(s) / len(s)}


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time. Hand-rolled: aiohttp's client would
    cost several times the CPU per request, which this machine's servers would lose."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[: end + 4 + length]
        if not self.waiter.done():
            self.waiter.set_result(int(head[0].split(" ", 2)[1]))

    async def call(self, request: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        return await self.waiter


def load_requests(spec: dict[str, Any]) -> list[bytes]:
    requests = []
    with open(spec["requests"]) as fh:
        for line in fh:
            sig, body = line.rstrip("\n").split("\t", 1)
            requests.append(
                (
                    f"POST {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
                    f"Content-Type: {spec['content_type']}\r\n{spec['header']}: {sig}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n{body}"
                ).encode()
            )
    return requests


async def _client(spec: dict[str, Any], requests: list[bytes]) -> dict[str, Any]:
    host, port = spec["host"], spec["port"]
    loop = asyncio.get_running_loop()
    n = len(requests)
    status = [0] * n  # 0: never sent, -2: sent and never answered, -1: connection error
    latency: list[float] = []
    lag: list[float] = []
    idle: deque[_Conn] = deque()
    opened = 0

    async def connect() -> _Conn:
        nonlocal opened
        opened += 1
        _, conn = await loop.create_connection(_Conn, host, port)
        return conn

    async def send(conn: _Conn | None, i: int, scheduled: float) -> _Conn | None:
        try:
            conn = conn or await connect()
            lag.append(time.perf_counter() - scheduled)
            status[i] = -2
            status[i] = await conn.call(requests[i])
            latency.append(time.perf_counter() - scheduled)
            return None if conn.closed else conn
        except (OSError, ConnectionError):
            status[i] = -1
            return None

    gc.collect()
    gc.freeze()
    gc.disable()
    started = time.perf_counter()
    if spec["mode"] == "closed":  # C workers, each sends its next request when the last is answered
        deadline = started + spec["duration"] if spec.get("duration") else None
        next_i = 0

        async def worker() -> None:
            nonlocal next_i
            conn = None
            while next_i < n and (deadline is None or time.perf_counter() < deadline):
                i, next_i = next_i, next_i + 1
                conn = await send(conn, i, time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(spec["connections"])))
        sent = next_i
    else:  # open loop: request i is due at started + i/rate, whatever happened to the others
        rate, pending = spec["rate"], deque[tuple[int, float]]()
        tasks: set[asyncio.Task[None]] = set()
        busy = 0

        async def run(i: int, scheduled: float) -> None:
            nonlocal busy
            conn = idle.pop() if idle else None
            while True:
                conn = await send(conn, i, scheduled)
                if not pending:
                    break
                i, scheduled = pending.popleft()
            busy -= 1
            if conn is not None:
                idle.append(conn)

        for i in range(n):
            scheduled = started + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if busy >= spec["max_connections"]:
                pending.append((i, scheduled))  # still timed from `scheduled`: the queue is counted
                continue
            busy += 1
            task = loop.create_task(run(i, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent = n
        if tasks:
            # A server far below the rate has a long queue: stop waiting for it at some point.
            await asyncio.wait(set(tasks), timeout=spec["drain_s"])
    elapsed = time.perf_counter() - started
    answered = [s for s in status[:sent] if s > 0]
    return {
        "mode": spec["mode"],
        "sent": sent,
        "responses": len(answered),
        "ok": answered.count(200),
        "statuses": dict(Counter(answered)),
        "connection_errors": status[:sent].count(-1),
        "unanswered": status[:sent].count(-2),
        "never_sent": status[:sent].count(0),  # still queued in the client when it stopped waiting
        "elapsed_s": elapsed,
        "connections_opened": opened,
        "latency_ms": {k: v * 1e3 for k, v in percentiles(latency).items()},
        "send_lag_ms": {k: v * 1e3 for k, v in percentiles(lag).items()},
        "not_ok": [i for i in range(sent) if status[i] != 200],
    }


# ---------------------------------------------------------------------------------------------
# Processes


class Procs:
    """Every process this run starts, each in its own session, so Ctrl-C reaches only the bench and
    cleanup stops each group in reverse order."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pg: Any = None  # pgserver's handle: cleaned up (server stopped, data deleted) last

    def start(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 15) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def parley_root() -> Path:
    """The tree whose code `parley serve` runs: the one `services` imports from (PYTHONPATH first)."""
    import importlib.util

    spec = importlib.util.find_spec("services")
    if spec is None or spec.origin is None:
        return BENCH.parent
    return Path(spec.origin).resolve().parent.parent


def source_fingerprint(root: Path) -> str:
    """A short hash of parley's code (services/, db/, agents/: .py and .sql), to tell runs apart."""
    digest = hashlib.sha256()
    for top in ("services", "db", "agents"):
        for path in sorted((root / top).rglob("*")):
            if path.suffix in (".py", ".sql") and path.is_file():
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(name: str, proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise SystemExit(f"{name} exited with {proc.returncode} before it was ready:\n{tail}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.2)
    raise SystemExit(f"{name} not ready after {timeout_s:.0f}s (log: {log_path})")


def sched_s(pids: list[int]) -> tuple[float, float]:
    """Seconds these processes (every thread) ran on a CPU, and spent runnable but waiting for one,
    so far (/proc/PID/task/TID/schedstat; processes that exited are skipped)."""
    ran = waited = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    on_cpu, runq, _ = (task / "schedstat").read_text().split()
                    ran, waited = ran + int(on_cpu), waited + int(runq)
    return ran / 1e9, waited / 1e9


def rusage_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def machine_cpu_s() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy, and stolen by the hypervisor, so far."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / hz, v[7] / hz


def wait_quiet(timeout_s: float, threshold: float = 0.2) -> float:
    """Wait until the machine's other work uses under `threshold` cores for 3 s in a row (or time
    runs out); return what it used in the last second."""
    started = time.monotonic()
    quiet, busy, said = 0, 0.0, -30.0
    while True:
        before = machine_cpu_s()[0]
        time.sleep(1)
        busy = machine_cpu_s()[0] - before
        quiet = quiet + 1 if busy < threshold else 0
        waited = time.monotonic() - started
        if quiet >= 3 or waited >= timeout_s:
            return busy
        if quiet == 0 and waited - said >= 30:
            said = waited
            log(f"machine busy ({busy:.2f} cores used by other processes): waiting for it to quieten")


def process_tree(root: int) -> list[int]:
    """`root` and every process under it: PostgreSQL's backends, or the webhook processes of
    `parley serve --processes N`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def postgres_pids(postmaster: int) -> list[int]:
    return process_tree(postmaster)


# ---------------------------------------------------------------------------------------------
# PostgreSQL: counts and observations


def sql(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    import asyncpg

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


PG_COUNTERS = """
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS xact_commit,
       wal_records, wal_fpi, wal_bytes::bigint, wal_write, wal_sync, wal_sync_time
FROM pg_stat_wal"""


TABLE_COUNTERS = """
SELECT relname, seq_scan, seq_tup_read, idx_scan, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"""


def _query_head(query: str) -> str:
    """The first SQL words of a statement, past our `-- $1 = ...` comment lines."""
    code = " ".join(line for line in query.splitlines() if not line.lstrip().startswith("--"))
    return " ".join(code.split())[:90]


class WaitSampler(threading.Thread):
    """Samples what parley's PostgreSQL backends are doing, every 50 ms, while a phase runs."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop_flag, self.samples = dsn, threading.Event(), 0
        self.counts, self.active_queries, self.lock_waits = Counter[str](), Counter[str](), Counter[str]()

    def run(self) -> None:
        import asyncpg

        async def loop() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                while not self.stop_flag.is_set():  # a failure elsewhere may stop PostgreSQL under us
                    rows = await conn.fetch(
                        "SELECT state, wait_event_type, wait_event, left(query, 3000) AS query FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                    )
                    locks = await conn.fetch(
                        "SELECT locktype, classid::regclass::text AS class, objid, mode FROM pg_locks WHERE NOT granted"
                    )
                    self.samples += 1
                    for r in rows:
                        what = f"{r['wait_event_type']}:{r['wait_event']}" if r["wait_event"] else "on CPU"
                        self.counts[f"{r['state']} / {what}"] += 1
                        if r["state"] == "active":
                            self.active_queries[_query_head(r["query"])] += 1
                    for r in locks:
                        self.lock_waits[f"{r['locktype']} {r['class'] or ''} {r['objid'] or ''} {r['mode']}"] += 1
                    await asyncio.sleep(0.05)
            finally:
                await conn.close()

        with contextlib.suppress(Exception):
            asyncio.run(loop())


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    args: argparse.Namespace
    tmp: Path
    procs: Procs
    dsn: str = ""
    postmaster: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    # provider -> target -> phase -> figures
    results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    payloads: dict[str, Payloads] = field(default_factory=dict)

    def client(self, provider: Provider, target: str, spec: dict[str, Any]) -> dict[str, Any]:
        spec = {
            **spec,
            "host": "127.0.0.1",
            "port": self.ports[target],
            "path": provider.path,
            "header": provider.header,
            "content_type": provider.content_type,
        }
        spec_path = self.tmp / f"spec-{provider.name}-{target}-{spec['mode']}.json"
        spec_path.write_text(json.dumps(spec))
        proc = self.procs.start([sys.executable, __file__, "_client", str(spec_path)], stdout=subprocess.PIPE)
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"load client failed ({proc.returncode})")
        return json.loads(out)

    def wrk(self, provider: Provider, target: str, prefix: Path) -> dict[str, Any]:
        a = self.args
        cmd = [
            "wrk",
            "-t",
            str(a.wrk_threads),
            "-c",
            str(a.connections),
            "-d",
            f"{a.duration}s",
            "--timeout",
            "10s",
            "-s",
            str(BENCH / "wrk_signed.lua"),
            f"http://127.0.0.1:{self.ports[target]}{provider.path}",
            "--",
            str(prefix),
            provider.header,
            provider.content_type,
        ]
        proc = self.procs.start(cmd, stdout=subprocess.PIPE)
        out, _ = proc.communicate()
        line = next((ln for ln in out.decode().splitlines() if ln.startswith("WRK_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"wrk failed ({proc.returncode}):\n{out.decode()[-2000:]}")
        w = json.loads(line.removeprefix("WRK_JSON "))
        lat = {k: v / 1e3 for k, v in w["latency_us"].items()}
        return {
            "mode": "closed",
            "tool": "wrk",
            "sent": w["sent"],
            "responses": w["responses"],
            "ok": w["ok"],
            "elapsed_s": w["duration_us"] / 1e6,
            "latency_ms": lat,
            "wrapped": w["wrapped"],
            "errors": w["errors"],
            "statuses": {"4xx": w["s4xx"], "5xx": w["s5xx"], "other": w["sother"]},
            "in_flight_at_stop": w["sent"] - w["responses"] - w["errors"]["connect"],
        }

    def phase(
        self, name: str, provider: Provider, target: str, drive: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """Run one load phase against one target, with CPU use per process and (for parley) what
        PostgreSQL did meanwhile."""
        parley = target == "parley"
        watched = {"server": process_tree(self.pids[target]),
                   **({"postgres": postgres_pids(self.postmaster)} if parley else {})}
        before = {k: sched_s(v) for k, v in watched.items()}
        gen_before, self_before, machine_before = (
            rusage_s(resource.RUSAGE_CHILDREN),
            rusage_s(resource.RUSAGE_SELF),
            machine_cpu_s(),
        )
        pg_before = sql(self.dsn, PG_COUNTERS)[0] if parley else None
        tables_before = {r["relname"]: r for r in sql(self.dsn, TABLE_COUNTERS)} if parley else None
        sampler = WaitSampler(self.dsn) if parley and name != "warmup" else None
        profiler = None
        if sampler:
            sampler.start()
        agents_before = agent_state(self.dsn) if parley else None
        if parley and name == "closed" and self.args.profile:
            profiler = self.procs.start(
                [
                    self.args.py_spy,
                    "record",
                    "--pid",
                    str(self.pids["parley"]),
                    "--duration",
                    str(int(self.args.duration)),
                    "--rate",
                    "100",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "-o",
                    profile_path(self.args, provider),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        wall = time.monotonic()
        result = drive()
        wall = time.monotonic() - wall
        if agents_before is not None:
            # How far behind the agents are when the load stops: they ran beside it all phase.
            after_agents = agent_state(self.dsn)
            result["agents"] = {
                "backlog_at_end": after_agents.get("backlog"),
                "oldest_unfinished_s": after_agents.get("oldest_s"),
                "done_during_phase": _delta(after_agents, agents_before, "done"),
                "dead_during_phase": _delta(after_agents, agents_before, "dead"),
                "wall_s": wall,
            }
        if profiler:
            profiler.wait(30)
        if sampler:
            sampler.stop_flag.set()
            sampler.join()
        after = {k: sched_s(v) for k, v in watched.items()}
        cpu = {k: (after[k][0] - before[k][0]) / wall for k in watched}
        cpu["load generator"] = (rusage_s(resource.RUSAGE_CHILDREN) - gen_before) / wall  # incl. py-spy
        cpu["bench"] = (rusage_s(resource.RUSAGE_SELF) - self_before) / wall
        busy, steal = (b - a for a, b in zip(machine_before, machine_cpu_s(), strict=True))
        # Anything else on the machine (another engineer's job, say) skews both targets' figures.
        cpu["other processes"] = max(0.0, busy / wall - sum(cpu.values()))
        cpu["stolen"] = steal / wall
        result["cpu_cores"] = cpu
        # Runnable but not running: a server starved of CPU shows it here, not in its CPU use.
        result["server_cpu_wait_per_s"] = (after["server"][1] - before["server"][1]) / wall
        if pg_before:
            pg_after = sql(self.dsn, PG_COUNTERS)[0]
            result["postgres"] = {k: (pg_after[k] or 0) - (pg_before[k] or 0) for k in pg_after}
            result["postgres"]["wall_s"] = wall
        if sampler:
            result["pg_backend_samples"] = {
                "samples": sampler.samples,
                "counts": dict(sampler.counts.most_common()),
                "active_queries": dict(sampler.active_queries.most_common(8)),
                "lock_waits": dict(sampler.lock_waits.most_common(5)),
            }
        if tables_before is not None:
            tables = {r["relname"]: r for r in sql(self.dsn, TABLE_COUNTERS)}
            result["pg_tables"] = {
                name: {k: v - tables_before[name][k] for k, v in row.items() if k != "relname" and v is not None}
                for name, row in tables.items()
                if name in tables_before
            }
        log(
            f"{provider.name:8s} {target:7s} {name:6s} ok={result['ok']} of sent={result['sent']} "
            f"rps={result['ok'] / result['elapsed_s']:.0f} p50={result['latency_ms'].get('p50', 0):.1f}ms "
            f"p99={result['latency_ms'].get('p99', 0):.1f}ms"
        )
        return result

    def stored(self, provider: Provider, phase: str) -> set[str]:
        rows = sql(
            self.dsn,
            "SELECT provider_message_id AS sid FROM messages WHERE provider = $1 AND provider_message_id LIKE $2",
            provider.db_name,
            self.payloads[provider.name].phase_prefix(phase) + "%",
        )
        return {r["sid"] for r in rows}


# Only tables and their plain columns, each read on its own: a query the code under test has made
# obsolete shows as "-" in the report instead of stopping the run.
AGENT_STATE = {
    "backlog": "SELECT count(*) FROM agent_tasks WHERE status IN ('pending', 'running')",
    "oldest_s": "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM agent_tasks "
    "WHERE status IN ('pending', 'running')",
    "done": "SELECT count(*) FROM agent_tasks WHERE status = 'done'",
    "dead": "SELECT count(*) FROM agent_tasks WHERE status = 'dead'",
    "messages": "SELECT count(*) FROM messages",
    "users": "SELECT count(*) FROM users",
    "opted_out": "SELECT count(*) FROM users WHERE consent_state = 'opted_out'",
    "consent_changes": "SELECT count(*) FROM consent_changes",
    "queued": "SELECT count(*) FROM message_queue",
}


def agent_state(dsn: str, names: tuple[str, ...] = tuple(AGENT_STATE)) -> dict[str, Any]:
    import asyncpg

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        conn = await asyncpg.connect(dsn)
        try:
            for name in names:
                try:
                    out[name] = await conn.fetchval(AGENT_STATE[name])
                except asyncpg.PostgresError:
                    out[name] = None
        finally:
            await conn.close()
        return out

    return asyncio.run(run())


def _delta(after: dict[str, Any], before: dict[str, Any], key: str) -> int | None:
    return None if after.get(key) is None or before.get(key) is None else after[key] - before[key]


def profile_path(a: argparse.Namespace, provider: Provider) -> str:
    if len(a.providers) == 1:
        return str(a.profile)
    path = Path(a.profile)
    return str(path.with_name(f"{path.stem}-{provider.name}{path.suffix}"))


def start(run: Run) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset, harmless
        import pgserver

    a = run.args
    log("starting PostgreSQL (pgserver) in a fresh directory")
    pg = pgserver.get_server(run.tmp / "pg", cleanup_mode="delete")
    run.procs.pg = pg
    run.dsn = pg.get_uri()
    run.postmaster = int((run.tmp / "pg" / "postmaster.pid").read_text().split()[0])
    # Times WAL writes and fsyncs for the report; durability settings stay as they are.
    sql(run.dsn, "ALTER SYSTEM SET track_wal_io_timing = on")
    sql(run.dsn, "SELECT pg_reload_conf()")

    run.ports = {t: free_port() for t in TARGETS}
    token, app_secret = secrets.token_hex(16), secrets.token_hex(16)
    account_sid = "AC" + secrets.token_hex(16)
    phone_number_id = str(100000000000000 + secrets.randbelow(10**14))
    public = f"http://127.0.0.1:{run.ports['parley']}"
    for name in a.providers:
        provider = PROVIDERS[name]
        traffic = Traffic(provider, a.users, a.new_share, a.keyword_every)
        secret = token if name == "twilio" else app_secret
        run.payloads[name] = Payloads(provider, public + provider.path, secret, account_sid, phone_number_id, traffic)
    env = {
        **os.environ,
        "DATABASE_URL": run.dsn,
        "PARLEY_HOME": str(run.tmp / "home"),
        "PUBLIC_BASE_URL": public,
        "TWILIO_ACCOUNT_SID": account_sid,
        "TWILIO_AUTH_TOKEN": token,
        "WHATSAPP_APP_SECRET": app_secret,
        "WHATSAPP_VERIFY_TOKEN": secrets.token_hex(8),
        "WHATSAPP_ACCESS_TOKEN": "EAAG" + secrets.token_hex(16),
        "WHATSAPP_PHONE_NUMBER_ID": phone_number_id,
        "PARLEY_API_KEY": secrets.token_urlsafe(24),
        "PARLEY_LOG_LEVEL": a.log_level,
        **dict(kv.split("=", 1) for kv in a.parley_env),
    }
    parley_bin = shutil.which("parley", path=str(Path(sys.executable).parent)) or "parley"
    logs = {t: run.tmp / f"{t}.log" for t in TARGETS}
    cmds = {
        "parley": [parley_bin, "serve", "--host", "127.0.0.1", "--port", str(run.ports["parley"])],
        "ceiling": [sys.executable, str(BENCH / "ceiling_app.py"), "--port", str(run.ports["ceiling"])],
    }
    for t in TARGETS:
        log(f"starting {t} on port {run.ports[t]} (log: {logs[t]})")
        with logs[t].open("wb") as fh:
            proc = run.procs.start(cmds[t], stdout=fh, stderr=subprocess.STDOUT, env=env if t == "parley" else None)
        run.pids[t] = proc.pid
        wait_ready(t, proc, run.ports[t], logs[t])


def drive_all(run: Run, use_wrk: bool) -> None:
    a = run.args
    for name in a.providers:
        drive_provider(run, PROVIDERS[name], use_wrk)


def drive_provider(run: Run, provider: Provider, use_wrk: bool) -> None:
    a = run.args
    p = run.payloads[provider.name]
    t0 = time.monotonic()
    tmp = run.tmp / provider.name
    tmp.mkdir()
    files = {
        "warmup": [tmp / "warmup"],
        "open": [tmp / "open"],
        "closed": [tmp / f"closed.{i}" for i in range(a.wrk_threads if use_wrk else 1)],
    }
    # The warm-up sends one message from every known sender, so parley has seen them all before the
    # measured phases; the first-time senders of those phases have never written.
    warmup = max(a.warmup, a.users)
    p.write("warmup", warmup, files["warmup"])
    p.write("closed", int(a.max_rps * a.duration), files["closed"])
    p.write("open", int(a.rate * a.duration), files["open"])
    log(
        f"{provider.name}: signed {warmup + int(a.rate * a.duration) + int(a.max_rps * a.duration)} requests "
        f"in {time.monotonic() - t0:.1f}s"
    )

    # The ceiling first: parley's agent worker goes on with its backlog after a phase, and must not
    # run beside the ceiling's measurement.
    results = run.results.setdefault(provider.name, {})
    for t in TARGETS:
        res = results.setdefault(t, {})
        warm = {"mode": "closed", "requests": str(files["warmup"][0]), "connections": min(16, a.connections)}
        res["warmup"] = run.phase("warmup", provider, t, functools.partial(run.client, provider, t, warm))
        if res["warmup"]["ok"] == 0:
            tail = (run.tmp / f"{t}.log").read_text(errors="replace")[-3000:]
            raise SystemExit(
                f"{t} answered no {provider.label} warm-up request with 200: {res['warmup']['statuses']}; "
                f"its log ends:\n{tail}"
            )
        settle(run, t, res["warmup"])
        if t == "parley":
            # A fresh database has no statistics, and autovacuum would not get to it within this run;
            # in production it has. Without this the plans cached on parley's connections stay the
            # ones made for empty tables (sequential scans).
            sql(run.dsn, "ANALYZE")
        if use_wrk:
            drive = functools.partial(run.wrk, provider, t, tmp / "closed")
        else:
            closed = {"mode": "closed", "requests": str(files["closed"][0]), "connections": a.connections}
            drive = functools.partial(run.client, provider, t, {**closed, "duration": a.duration})
        res["closed"] = run.phase("closed", provider, t, drive)
        res["closed"]["tool"] = "wrk" if use_wrk else "python"
        settle(run, t, res["closed"])
        steady = {
            "mode": "open",
            "requests": str(files["open"][0]),
            "rate": a.rate,
            "max_connections": a.open_connections,
            "drain_s": max(10, a.duration),
        }
        res["open"] = run.phase("open", provider, t, functools.partial(run.client, provider, t, steady))
        settle(run, t, res["open"])


def settle(run: Run, target: str, result: dict[str, Any]) -> None:
    """Before the next phase: wait until parley has committed what was still in flight and its agent
    worker has caught up with the tasks the phase queued (at most --settle seconds), so phases do
    not overlap. Records the wait, the backlog left, if any, and the tables' counts after it."""
    if target != "parley":
        time.sleep(0.5)
        return
    started, last, stable_since = time.monotonic(), None, time.monotonic()
    while time.monotonic() - started < run.args.settle:
        row = agent_state(run.dsn, ("messages", "backlog"))
        if (row["messages"], row["backlog"]) != last:
            last, stable_since = (row["messages"], row["backlog"]), time.monotonic()
        # Done when the backlog is gone, or, with no agent worker in parley (PARLEY_WORKERS=0), when
        # nothing moves any more. (A backlog that holds still for seconds is no sign the worker is
        # idle: on a busy machine one batch of agent work can take that long.)
        if time.monotonic() - stable_since >= 1 and (not row["backlog"] or agents_off(run.args)):
            break
        time.sleep(0.25)
    result["settle_s"] = time.monotonic() - started
    result["agent_backlog_after_settle"] = last[1] if last else None
    result["state_after_settle"] = agent_state(run.dsn)
    log(f"parley settled in {result['settle_s']:.1f}s, agent backlog {result['agent_backlog_after_settle']}")


def agents_off(a: argparse.Namespace) -> bool:
    return any(kv.replace(" ", "") == "PARLEY_WORKERS=0" for kv in a.parley_env)


def verify(run: Run) -> dict[str, Any]:
    """Every message parley answered 200 is stored: exact by message id where the client knows every
    answer (warm-up and open loop), a count within wrk's abandoned in-flight requests otherwise. And
    what the traffic was meant to be, it was: the first-time senders made new users, the keywords
    were stored as keywords."""
    # Requests abandoned when wrk stopped may still be committing.
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 1.5:
        n = agent_state(run.dsn, ("messages",))["messages"]
        if n != last:
            last, stable_since = n, time.monotonic()
        time.sleep(0.25)
    out: dict[str, Any] = {}
    users_before = 0
    for name in run.args.providers:
        provider, payloads = PROVIDERS[name], run.payloads[name]
        checks: dict[str, Any] = {}
        seen: set[str] = set()
        for phase in PHASES:
            r = run.results[name]["parley"][phase]
            plan = payloads.plans[phase]
            stored = run.stored(provider, phase)
            row: dict[str, Any] = {"answered_200": r["ok"], "stored": len(stored), "sent": r["sent"]}
            if r.get("tool") == "wrk":
                slack = r["in_flight_at_stop"]
                row["in_flight_at_stop"] = slack
                row["ok"] = r["ok"] <= len(stored) <= r["ok"] + slack and not r.get("wrapped")
                row["how"] = "count; wrk abandons its in-flight requests when its clock stops"
            else:
                not_ok = set(r["not_ok"])
                answered = {payloads.sid(phase, i) for i in range(r["sent"]) if i not in not_ok}
                row["answered_not_stored"] = len(answered - stored)
                row["stored_not_answered"] = len(stored - answered)
                row["ok"] = answered == stored
                row["how"] = "exact, by message id"
            # What the stored messages were meant to do, they did: their senders never seen before
            # are new users, their keywords are stored as keywords. (The message id ends with the
            # line's index.)
            lines = {sid: plan[int(sid[-22:], 16)] for sid in stored}
            users_after = r.get("state_after_settle", {}).get("users")
            senders = {ln.sender for ln in lines.values()}
            row["new_users"] = None if users_after is None else users_after - users_before
            # (The open-loop client's requests never sent, still queued when it gave up, are its last.)
            row["first_time_sent"] = sum(ln.new for ln in plan[: r["sent"] - r.get("never_sent", 0)])
            keyworded = stored_keywords(run, provider, payloads.phase_prefix(phase))
            row["keywords_stored"] = None if keyworded is None else len(keyworded)
            if r.get("wrapped"):  # repeated ids: which line a stored message came from is unknown
                row["new_users_expected"] = row["keywords_expected"] = None
                row["senders_ok"] = row["keywords_ok"] = True
            else:
                expected = {sid for sid, ln in lines.items() if ln.keyword}
                row["new_users_expected"] = len(senders - seen)
                row["keywords_expected"] = len(expected)
                row["senders_ok"] = row["new_users"] in (None, row["new_users_expected"])
                row["keywords_ok"] = keyworded is None or keyworded == expected
                if keyworded is not None and keyworded != expected:
                    missed = sorted(f"{sid} {lines[sid].keyword}" for sid in expected - keyworded)
                    row["keyword_misses"] = {
                        "stored_without_keyword": missed[:5],
                        "stored_as_keyword_unexpectedly": sorted(keyworded - expected)[:5],
                    }
            seen |= senders
            users_before = users_after if users_after is not None else users_before
            checks[phase] = row
        lost = sum(
            row.get("answered_not_stored", max(0, row["answered_200"] - row["stored"])) for row in checks.values()
        )
        checks["total"] = {
            "answered_200": sum(run.results[name]["parley"][ph]["ok"] for ph in PHASES),
            "lost": lost,
            "distinct_senders": len(seen),
        }
        out[name] = checks
    out["tables"] = agent_state(run.dsn)
    out["lost"] = sum(out[name]["total"]["lost"] for name in run.args.providers)
    return out


def stored_keywords(run: Run, provider: Provider, prefix: str) -> set[str] | None:
    """The ids of a phase's messages stored with a keyword (None: the column is gone)."""
    import asyncpg

    try:
        rows = sql(
            run.dsn,
            "SELECT provider_message_id AS sid FROM messages WHERE provider = $1 AND provider_message_id LIKE $2 "
            "AND keyword IS NOT NULL",
            provider.db_name,
            prefix + "%",
        )
    except asyncpg.PostgresError:
        return None
    return {r["sid"] for r in rows}


# ---------------------------------------------------------------------------------------------
# Report


def _frame_package(frame: str) -> str:
    path = frame[frame.rfind("(") + 1 :].rstrip(")").rsplit(":", 1)[0]
    path = path.split("site-packages/", 1)[-1]  # py-spy shortens paths; these are for full ones
    for top in ("services/", "db/", "agents/"):
        if path.startswith(top) or f"/{top}" in path:
            return top + path.split(top, 1)[1].split("/", 1)[0].removesuffix(".py")
    return path.split("/", 1)[0].removesuffix(".py") if "/" in path else Path(path).stem


def profile_summary(path: str, expected_samples: float, top: int = 12) -> list[str]:
    """The py-spy raw (collapsed) profile as text: where parley's busy samples were, by the package of
    the innermost frame (self time), and by the project's functions on the stack (inclusive)."""
    own, incl, leaf = Counter[str](), Counter[str](), Counter[str]()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f for f in stack.split(";")]
        own[_frame_package(frames[-1])] += n
        leaf[frames[-1]] += n
        for f in set(frames):
            if _frame_package(f).startswith(("services/", "db/", "agents/")):
                incl[f] += n
    if not total:
        return ["  (py-spy recorded no samples)"]
    out = [
        f"  {total} busy samples of ~{expected_samples:.0f} possible (100 Hz, idle excluded): the event loop "
        f"thread was busy {total / expected_samples:.0%} of the time"
    ]
    out.append("  self time by package: " + ", ".join(f"{k} {v / total:.0%}" for k, v in own.most_common(top)))
    out.append("  inclusive, project functions:")
    out += [f"    {v / total:6.1%}  {k}" for k, v in incl.most_common(top)]
    out.append("  self time, top functions:")
    out += [f"    {v / total:6.1%}  {k}" for k, v in leaf.most_common(top)]
    return out


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def ratio_of(res: dict[str, dict[str, Any]]) -> tuple[dict[str, float], float]:
    rps = {t: res[t]["closed"]["ok"] / res[t]["closed"]["elapsed_s"] for t in TARGETS}
    return rps, (rps["parley"] / rps["ceiling"] if rps["ceiling"] else 0.0)


def summary(run: Run, check: dict[str, Any]) -> list[str]:
    """The figures the issue sets targets for, one column per provider."""
    a, names = run.args, run.args.providers
    cols = "".join(f"{PROVIDERS[n].label:>20s}" for n in names)
    lines = [f"{'':38s}{cols}   target"]

    def row(label: str, values: list[str], target: str = "") -> None:
        lines.append(f"{label:38s}" + "".join(f"{v:>20s}" for v in values) + (f"   {target}" if target else ""))

    ratios = [ratio_of(run.results[n])[1] for n in names]
    rps = [ratio_of(run.results[n])[0] for n in names]
    row("closed loop: ingest / ceiling", [f"{r:.1%}" for r in ratios],
        ">= 40% of ceiling each: " + ("met" if all(r >= 0.40 for r in ratios) else "NOT MET"))
    row("  requests/s, parley / ceiling", [f"{r['parley']:.0f} / {r['ceiling']:.0f}" for r in rps])
    for key in ("p50", "p99"):
        row(f"  {key} ms, parley / ceiling", [
            f"{fmt(run.results[n]['parley']['closed']['latency_ms'].get(key))} / "
            f"{fmt(run.results[n]['ceiling']['closed']['latency_ms'].get(key))}" for n in names])
    p99 = [run.results[n]["parley"]["open"]["latency_ms"].get("p99") for n in names]
    row(f"open loop at {a.rate:g}/s: p99 ms", [fmt(v) for v in p99],
        f"<= 50 ms at {a.rate:g}/s: " + ("met" if all(v is not None and v <= 50 for v in p99) else "NOT MET"))
    row("  p50 ms", [fmt(run.results[n]["parley"]["open"]["latency_ms"].get("p50")) for n in names])
    row("every answered message committed",
        ["OK" if not check[n]["total"]["lost"] and all(check[n][ph]["ok"] for ph in PHASES) else
         ("LOST " + str(check[n]["total"]["lost"]) if check[n]["total"]["lost"] else "COUNTS DIFFER") for n in names])
    row("first-time senders were new users",
        ["OK" if all(check[n][ph]["senders_ok"] for ph in PHASES) else "MISMATCH" for n in names])
    row("keywords stored as keywords",
        ["OK" if all(check[n][ph]["keywords_ok"] for ph in PHASES) else "MISMATCH" for n in names])
    row("agents behind when closed loop ends",
        [_behind(run.results[n]["parley"]["closed"]) for n in names])
    row("agents behind when open loop ends",
        [_behind(run.results[n]["parley"]["open"]) for n in names])
    row("  caught up after closed / open", [
        f"{fmt(run.results[n]['parley']['closed'].get('settle_s'), '.0f')}s / "
        f"{fmt(run.results[n]['parley']['open'].get('settle_s'), '.0f')}s" for n in names])
    row("measured phases disturbed", [f"{len(noisy_phases(run.results[n]))} of 4" for n in names],
        "other processes took > 0.15 cores: see the CPU lines")
    return lines


def noisy_phases(res: dict[str, dict[str, Any]]) -> list[str]:
    """The measured phases during which something outside the run took CPU: unreliable figures."""
    return [
        f"{t} {ph}"
        for t in TARGETS
        for ph in ("closed", "open")
        if res[t][ph]["cpu_cores"]["other processes"] > 0.15 or res[t][ph]["cpu_cores"]["stolen"] > 0.15
    ]


def _behind(r: dict[str, Any]) -> str:
    ag = r.get("agents", {})
    if ag.get("backlog_at_end") is None:
        return "-"
    return f"{ag['backlog_at_end']} tasks, {fmt(ag.get('oldest_unfinished_s'), '.0f')}s old"


def report(run: Run, check: dict[str, Any], meta: dict[str, Any]) -> str:
    a = run.args
    first = run.results[a.providers[0]]["parley"]["closed"]
    lines = [
        f"Parley inbound webhook benchmark   {meta['machine']}, parley source {meta['source']}",
        f"closed loop: {a.duration:g}s, {a.connections} connections ({first['tool']}); open loop: "
        f"{a.rate:g} req/s for {a.duration:g}s (python client, latency from scheduled send); "
        f"PARLEY_LOG_LEVEL={a.log_level}" + (f"; {' '.join(a.parley_env)}" if a.parley_env else ""),
        f"traffic per provider: {a.users} known senders (each one message in the warm-up), "
        f"{a.new_share:.0%} of measured messages from first-time senders, "
        + (f"a keyword in 1 of {a.keyword_every} ({'/'.join(KEYWORD_CYCLE).upper()}, each STOP from its own user)"
           if a.keyword_every else "no keywords"),
        f"PostgreSQL {meta['postgres']}",
        f"signature checks on this machine: HMAC-SHA1 {meta['signature_us']['hmac_sha1_700B']:.1f} us, "
        f"HMAC-SHA256 {meta['signature_us']['hmac_sha256_700B']:.1f} us per 700-byte request "
        "(the ceilings verify none)",
        "",
        *summary(run, check),
    ]
    for name in a.providers:
        lines += ["", "=" * 100, f"{PROVIDERS[name].label}  (POST {PROVIDERS[name].path})", "=" * 100]
        lines += provider_report(run, name, check[name])
    tables = check["tables"]
    lines += [
        "",
        f"tables at the end: messages {tables.get('messages')}, users {tables.get('users')} "
        f"({tables.get('opted_out')} opted out), consent changes {tables.get('consent_changes')}, "
        f"queued replies {tables.get('queued')}, agent tasks done {tables.get('done')}, dead {tables.get('dead')}",
    ]
    if check["lost"]:
        lines += ["", "!" * 78, f"!!! COMMIT CHECK FAILED: {check['lost']} message(s) answered 200 but NOT stored"]
        lines += ["!" * 78]
    return "\n".join(line.rstrip() for line in lines)


def provider_report(run: Run, name: str, check: dict[str, Any]) -> list[str]:
    a, res = run.args, run.results[name]
    P, C = res["parley"], res["ceiling"]
    rps, ratio = ratio_of(res)
    open_p99 = P["open"]["latency_ms"].get("p99")
    lines = [
        f"{'':28s}{'parley':>10s}{'ceiling':>10s}{'ratio':>9s}   target",
        f"{'closed  requests/s (200)':28s}{rps['parley']:>10.0f}{rps['ceiling']:>10.0f}{ratio:>8.1%}"
        f"    >= 40% of ceiling: {'met' if ratio >= 0.40 else 'NOT MET'}",
    ]
    for key in ("p50", "p99"):
        lines.append(
            f"{'closed  ' + key + ' ms':28s}{fmt(P['closed']['latency_ms'].get(key)):>10s}"
            f"{fmt(C['closed']['latency_ms'].get(key)):>10s}"
        )
    err = {
        t: res[t]["closed"]["sent"] - res[t]["closed"]["ok"] - res[t]["closed"].get("in_flight_at_stop", 0)
        for t in TARGETS
    }
    lines.append(f"{'closed  non-200 / errors':28s}{err['parley']:>10d}{err['ceiling']:>10d}")
    ach = {t: res[t]["open"]["ok"] / res[t]["open"]["elapsed_s"] for t in TARGETS}
    lines.append(f"{'open    achieved req/s':28s}{ach['parley']:>10.0f}{ach['ceiling']:>10.0f}")
    for key in ("p50", "p99", "max"):
        target = (
            f"   <= 50 ms at {a.rate:g} req/s: {'met' if (open_p99 or 1e9) <= 50 else 'NOT MET'}"
            if key == "p99"
            else ""
        )
        lines.append(
            f"{'open    ' + key + ' ms':28s}{fmt(P['open']['latency_ms'].get(key)):>10s}"
            f"{fmt(C['open']['latency_ms'].get(key)):>10s}{'':9s}{target}"
        )
    lines.append(
        f"{'open    client send lag p99':28s}{fmt(P['open']['send_lag_ms'].get('p99')):>10s}"
        f"{fmt(C['open']['send_lag_ms'].get('p99')):>10s}   (ms behind schedule; part of the latencies above)"
    )
    bad = {t: res[t]["open"]["responses"] - res[t]["open"]["ok"] + res[t]["open"]["connection_errors"] for t in TARGETS}
    lines.append(f"{'open    non-200 / errors':28s}{bad['parley']:>10d}{bad['ceiling']:>10d}")
    late = {t: res[t]["open"]["unanswered"] + res[t]["open"]["never_sent"] for t in TARGETS}
    if any(late.values()):
        lines.append(
            f"{'open    gave up waiting':28s}{late['parley']:>10d}{late['ceiling']:>10d}"
            f"   (after a {max(10, a.duration)}s drain; parley: {P['open']['never_sent']} never sent, still queued)"
        )
    lines += ["", f"CPU, in cores (of {os.cpu_count()}), during each phase:"]
    for t in TARGETS:
        for ph in ("closed", "open"):
            cpu = res[t][ph]["cpu_cores"]
            lines.append(
                f"  {t:8s}{ph:7s}"
                + ", ".join(f"{k} {fmt(v, '.2f')}" for k, v in cpu.items())
                + f"; server waited for a CPU {res[t][ph]['server_cpu_wait_per_s']:.2f} s/s"
            )
    noisy = noisy_phases(res)
    if noisy:
        lines.append(
            f"  !!! other processes or the hypervisor took CPU during: {', '.join(noisy)}; "
            "those figures are unreliable: rerun on a quiet machine"
        )
    pg = P["closed"].get("postgres")
    if pg:
        stored = check["closed"]["stored"]
        lines += [
            "",
            "PostgreSQL during parley's closed loop:",
            f"  commits {pg['xact_commit']} (incl. read-only), WAL fsyncs {pg['wal_sync']} "
            f"({pg['wal_sync'] / max(stored, 1):.2f} per stored message), "
            f"fsync time {pg['wal_sync_time'] / 1e3:.2f}s = {pg['wal_sync_time'] / 1e3 / pg['wall_s']:.0%} "
            f"of wall, mean {pg['wal_sync_time'] / max(pg['wal_sync'], 1):.2f} ms; WAL "
            f"{pg['wal_bytes'] / 1e6:.1f} MB, {pg['wal_bytes'] / max(stored, 1) / 1e3:.1f} kB per message",
        ]
        s = P["closed"]["pg_backend_samples"]
        total = sum(s["counts"].values()) or 1
        lines.append(
            f"  backend states ({s['samples']} samples of pg_stat_activity): "
            + ", ".join(f"{k} {v / total:.0%}" for k, v in list(s["counts"].items())[:6])
        )
        lines.append("  lock waits seen: " + (", ".join(f"{k} x{v}" for k, v in s["lock_waits"].items()) or "none"))
        act = sum(s["active_queries"].values()) or 1
        lines.append("  what active backends were running (share of active samples):")
        lines += [f"    {v / act:5.0%}  {k}" for k, v in list(s["active_queries"].items())[:6]]
        tables = sorted(P["closed"]["pg_tables"].items(), key=lambda kv: -kv[1].get("seq_tup_read", 0))
        lines.append(
            "  rows read by sequential scans: "
            + ", ".join(
                f"{n} {t['seq_tup_read']} ({t['seq_scan']} scans)" for n, t in tables[:4] if t.get("seq_tup_read")
            )
        )
    profile = profile_path(a, PROVIDERS[name]) if a.profile else None
    if profile and Path(profile).exists():
        lines += ["", f"py-spy profile of parley during its closed loop ({profile}):"]
        lines += profile_summary(profile, 100 * a.duration)
    lines += ["", "Agents (inside parley serve) while each phase ran, and when its load stopped:"]
    for ph in PHASES:
        ag, r = P[ph].get("agents", {}), P[ph]
        done = ag.get("done_during_phase")
        lines.append(
            f"  {ph:7s} tasks done {fmt(done, 'd') if done is not None else '-':>7s} "
            f"({fmt(done / ag['wall_s'] if done is not None else None, '.0f')}/s against "
            f"{r['ok'] / r['elapsed_s']:.0f} messages/s in), behind at the end: {_behind(r)} "
            f"(tasks left, the oldest's age), caught up after {fmt(r.get('settle_s'))}s"
            + (f", {b} left" if (b := r.get("agent_backlog_after_settle")) else "")
            + (f"; {ag['dead_during_phase']} dead" if ag.get("dead_during_phase") else "")
        )
    lines += ["", "Every answered message committed (parley), and the traffic was what it says:"]
    for ph in PHASES:
        c = check[ph]
        extra = (
            f", in flight when wrk stopped {c['in_flight_at_stop']}"
            if "in_flight_at_stop" in c
            else f", answered-not-stored {c['answered_not_stored']}, stored-not-answered {c['stored_not_answered']}"
        )
        lines.append(
            f"  {ph:7s} answered 200: {c['answered_200']:>7d}   stored: {c['stored']:>7d}   "
            f"({c['how']}{extra})  {'OK' if c['ok'] else '<<< MISMATCH'}"
        )
        lines.append(
            f"  {'':7s} new users {fmt(c['new_users'], 'd') if c['new_users'] is not None else '-'}"
            f" (expected {c['new_users_expected']}; first-time senders sent {c['first_time_sent']})  "
            f"{'OK' if c['senders_ok'] else '<<< MISMATCH'};  keywords stored "
            f"{fmt(c['keywords_stored'], 'd') if c['keywords_stored'] is not None else '-'}"
            f" (expected {c['keywords_expected']})  {'OK' if c['keywords_ok'] else '<<< MISMATCH'}"
        )
        if "keyword_misses" in c:
            lines.append(f"  {'':7s} keyword mismatches (first 5): {c['keyword_misses']}")
    tot = check["total"]
    lines.append(
        f"  total   answered 200: {tot['answered_200']:>7d}   distinct senders sent: {tot['distinct_senders']}"
    )
    if tot["lost"]:
        lines += ["!!! COMMIT CHECK FAILED: {tot['lost']} message(s) answered 200 but NOT stored"]
    elif not all(check[ph]["ok"] for ph in PHASES):
        lines += [
            "!!! COUNTS DIFFER: parley stored messages it never answered 200 to the client, which gave up waiting",
            "!!! (open loop: after the drain timeout; closed loop: beyond wrk's in-flight bound). Nothing answered",
            "!!! 200 was lost, but a server this far behind its load is not measured by these latencies.",
        ]
    if P["closed"].get("wrapped"):
        lines.append("!!! wrk ran out of pre-signed bodies for parley and repeated message ids: raise --max-rps")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_client"]:
        spec = json.loads(Path(argv[1]).read_text())
        print(json.dumps(asyncio.run(_client(spec, load_requests(spec)))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=30, help="seconds per measured phase (default 30)")
    parser.add_argument("--rate", type=float, default=1000, help="open-loop requests/s (default 1000)")
    parser.add_argument("--connections", type=int, default=50, help="closed-loop connections (default 50)")
    parser.add_argument(
        "--provider",
        choices=("twilio", "whatsapp", "both"),
        default="both",
        help="which webhook to measure, each against its own ceiling (default both)",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=5000,
        help="known senders per provider, each warmed up before the measured phases (default 5000)",
    )
    parser.add_argument(
        "--new-share",
        type=float,
        default=0.25,
        help="share of measured messages from first-time senders, each used once (default 0.25)",
    )
    parser.add_argument(
        "--keyword-every",
        type=int,
        default=200,
        metavar="N",
        help="one message in N is a keyword, STOP/HELP/STOP/START in turn (default 200; 0: none)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1000,
        help="warm-up requests per target, at least --users (default 1000)",
    )
    parser.add_argument("--log-level", default="INFO", help="PARLEY_LOG_LEVEL (default INFO)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--no-wrk", action="store_true", help="closed loop with the Python client, not wrk")
    parser.add_argument(
        "--max-rps",
        type=float,
        default=10000,
        help="closed-loop bodies signed per second of --duration (default 10000; a faster ceiling "
        "replays them, which costs it the same)",
    )
    parser.add_argument("--open-connections", type=int, default=512, help="open-loop connection cap (default 512)")
    parser.add_argument(
        "--parley-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for parley serve, e.g. PARLEY_WORKERS=0 (repeatable)",
    )
    parser.add_argument("--profile", metavar="PATH", help="py-spy raw profile of parley during its closed loop")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write results as JSON to PATH ('-' or no value: stdout, table to stderr)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=300,
        metavar="S",
        help="after each parley phase, wait up to S seconds for its agent backlog to drain (default 300: "
        "30 s of closed loop can queue minutes of agent work)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="first wait up to S seconds for other processes to leave the CPU idle",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    a = parser.parse_args(argv)
    a.providers = ["twilio", "whatsapp"] if a.provider == "both" else [a.provider]
    if not 0 <= a.new_share < 1:
        parser.error("--new-share must be in [0, 1)")
    if a.users < 1 or a.users > 7_000_000:
        parser.error("--users must be in 1..7000000")
    use_wrk = not a.no_wrk and shutil.which("wrk") is not None
    if not use_wrk and not a.no_wrk:
        log("wrk not found (apt-get install -y wrk): closed loop uses the Python client")
    a.py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if a.profile and not a.py_spy:
        parser.error("--profile needs py-spy (.venv/bin/pip install py-spy)")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    procs = Procs()
    run = Run(a, tmp, procs)
    status = 0
    try:
        if a.wait_quiet:
            log(f"other processes use {wait_quiet(a.wait_quiet):.2f} cores")
        root = parley_root()
        fingerprint = source_fingerprint(root)  # the tree may be edited while this runs: which code was measured
        start(run)
        version = sql(
            run.dsn,
            "SELECT current_setting('server_version') AS v, current_setting('synchronous_commit') "
            "AS sc, current_setting('fsync') AS f, current_setting('wal_sync_method') AS m",
        )[0]
        meta = {
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
            "source": f"{fingerprint} ({root})",
            "postgres": f"{version['v']}: synchronous_commit={version['sc']}, fsync={version['f']}, "
            f"wal_sync_method={version['m']}",
            "signature_us": signature_cost_us(),
        }
        drive_all(run, use_wrk)
        check = verify(run)
        text = report(run, check, meta)
        print(text, file=sys.stderr if a.json == "-" else sys.stdout, flush=True)
        if a.json:
            for targets in run.results.values():  # indices of the requests not answered 200: a count will do
                for phases in targets.values():
                    for r in phases.values():
                        if "not_ok" in r:
                            r["not_ok"] = len(r["not_ok"])
            doc = json.dumps(
                {"meta": meta, "args": vars(a), "results": run.results, "commit_check": check}, indent=2, default=str
            )
            if a.json == "-":
                print(doc)
            else:
                Path(a.json).write_text(doc)
        if check["lost"]:
            status = 3
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        status = 130
    finally:
        procs.stop_all()
        if procs.pg is not None:
            with contextlib.suppress(Exception):
                procs.pg.cleanup()
        if a.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
