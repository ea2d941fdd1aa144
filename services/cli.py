"""`parley serve | worker | dispatcher | migrate | classify | simulate | chat`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from services import logs
from services import settings as settings_mod


def _secrets(s: settings_mod.Settings) -> list[str]:
    values = [s.parley_api_key, s.twilio_auth_token, s.twilio_api_key_secret, s.whatsapp_app_secret,
              s.whatsapp_verify_token, s.whatsapp_access_token, s.openai_api_key]
    found = [v.get_secret_value() for v in values if v is not None]
    if s.database_url and "@" in s.database_url:
        userinfo = s.database_url.split("://", 1)[-1].split("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    return found


def _fast_event_loop() -> None:
    """uvloop when available: the webhook and claim loops spend much of their time in the event loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional on platforms without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _settle_heap(agents: bool = True) -> None:
    """Load the classifier's model now rather than on the first message, then move everything alive
    at start-up out of the garbage collector's sight: its full collections would otherwise walk the
    model's tables again and again, stalling webhooks for tens of milliseconds."""
    import gc

    if agents:
        from agents.intent.local import LocalClassifier

        LocalClassifier().classify_sync("warm up")
    gc.collect()
    gc.freeze()


def _load() -> settings_mod.Settings:
    try:
        s = settings_mod.load()
    except settings_mod.SettingsError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.configure(s.log_level, _secrets(s))
    _fast_event_loop()
    return s


def _check_operator_key(s: settings_mod.Settings) -> None:
    """Stop with one line on an unusable operator key now, before the database starts."""
    from services import runtime as runtime_mod

    try:
        runtime_mod.operator_api_key(s)
    except settings_mod.SettingsError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from services import processes, retention, sandbox
    from services import web as web_mod

    s = _load()
    _check_operator_key(s)
    if args.processes is not None:
        s = s.model_copy(update={"processes": args.processes})
    sock = processes.inherited_socket()  # set when this is a helper of `--processes N`
    real_credentials = bool(s.twilio_account_sid or s.whatsapp_phone_number_id)
    if sock is None:
        sock = processes.listening_socket(args.host, args.port)
        s = sandbox.resolve(s, sandbox.local_url(sock))
        if s.sandbox:
            logs.configure(s.log_level, _secrets(s))  # the sandbox's tokens are scrubbed like real ones
        background = web_mod.default_background(s)
        if s.processes > 1:
            background += (processes.supervise(s.processes - 1, sock),)
        background += (retention.background(s),)  # the first process only: helpers would repeat it
    else:
        background = web_mod.default_background(s) + (processes.orphan_watch(),)
    app = web_mod.create_app(s, background=background)

    async def announce(_: web.Application) -> None:
        _settle_heap(agents=s.workers > 0)
        logging.getLogger("parley").info("serving", extra={"url": f"http://{args.host}:{args.port}",
                                                            "embedded_database": s.database_url is None,
                                                            "sandbox": s.sandbox is True,
                                                            "pid": os.getpid()})
        if s.sandbox:
            sandbox.announce(s, sandbox.local_url(sock), real_credentials)

    app.on_startup.append(announce)
    web.run_app(app, sock=sock, access_log=None, print=None, shutdown_timeout=30)


def migrate(args: argparse.Namespace) -> None:
    from services import runtime as runtime_mod

    s = _load()

    async def run() -> None:
        async with runtime_mod.database(s) as dsn:
            applied = await runtime_mod.apply_migrations(dsn)
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))

    asyncio.run(run())


def worker(args: argparse.Namespace) -> None:
    import signal

    from agents import service
    from services import retention
    from services import runtime as runtime_mod

    s = _load()
    _check_operator_key(s)
    if args.workers is not None:
        s = s.model_copy(update={"workers": args.workers})

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGTERM/SIGINT: stop claiming, finish in-flight tasks, exit.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with runtime_mod.open_runtime(s) as rt:
            _settle_heap()
            await asyncio.gather(service.run_workers(s, rt.pool, rt.dsn, stop),
                                 retention.run(rt.pool, s.retention_days, s.retention_interval_s, stop))

    asyncio.run(run())


def dispatcher(args: argparse.Namespace) -> None:
    import signal

    from services import runtime as runtime_mod
    from services.orchestrator import service

    s = _load()
    _check_operator_key(s)
    from services import sandbox

    if sandbox.wanted(s):
        # The sandbox's simulator and credentials live inside `parley serve`; a dispatcher of its own
        # would send to the real providers with made-up credentials and fail every row as a config error.
        print("parley: the sandbox is on (no provider credentials, or PARLEY_SANDBOX=1): its dispatchers run "
              "inside `parley serve`; set provider credentials (or PARLEY_SANDBOX=0) to run `parley dispatcher`",
              file=sys.stderr)
        raise SystemExit(2)
    count = args.dispatchers if args.dispatchers is not None else max(1, s.dispatchers)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGTERM/SIGINT: stop claiming, finish the provider calls in flight, record them, exit.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with runtime_mod.open_runtime(s) as rt:
            _settle_heap(agents=False)
            logging.getLogger("parley").info("dispatching", extra={"dispatchers": count, "pid": os.getpid()})
            await service.run_dispatchers(s, rt.pool, rt.dsn, rt.redis, stop, count=count)

    asyncio.run(run())


def classify(args: argparse.Namespace) -> None:
    import json

    from agents.intent import select

    s = _load()
    classifier = select.from_settings(s)

    async def run() -> None:
        for line in sys.stdin:
            text = line.rstrip("\n")
            if not text.strip():
                continue
            result = await classifier.classify(text)
            out = {"text": text, "intent": result.intent.value, "confidence": round(result.confidence, 4),
                   "language": result.language, "implementation": result.implementation}
            if result.fallback_reason:
                out["fallback_reason"] = result.fallback_reason
            print(json.dumps(out, ensure_ascii=False), flush=True)

    asyncio.run(run())


def simulate(args: argparse.Namespace) -> None:
    from services import badinput
    from services.simulator import main as simulator

    s = _load()
    try:
        simulator.run(s, args)
    except badinput.BadInput as exc:
        print(f"parley: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None


def chat(args: argparse.Namespace) -> None:
    from services import chat as chat_mod

    raise SystemExit(chat_mod.main(_load(), url=args.url, phone_number=args.phone, whatsapp=args.whatsapp,
                                   wait_s=args.wait))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="webhooks, operator API, agents and orchestrator in one process")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8080)
    p_serve.add_argument("--processes", type=int, default=None,
                         help="webhook processes on the one port (PARLEY_PROCESSES, default 1)")
    p_serve.set_defaults(func=serve)
    p_migrate = sub.add_parser("migrate", help="apply database migrations and exit")
    p_migrate.set_defaults(func=migrate)
    p_worker = sub.add_parser("worker", help="agent workers only (run any number of these processes)")
    p_worker.add_argument("--workers", type=int, default=None, help="workers in this process (PARLEY_WORKERS)")
    p_worker.set_defaults(func=worker)
    p_dispatcher = sub.add_parser("dispatcher", help="outbound dispatchers only (run any number of these processes)")
    p_dispatcher.add_argument("--dispatchers", type=int, default=None,
                              help="dispatch loops in this process (PARLEY_DISPATCHERS, at least 1)")
    p_dispatcher.set_defaults(func=dispatcher)
    p_classify = sub.add_parser("classify", help="classify messages read one per line on stdin (JSON lines out)")
    p_classify.set_defaults(func=classify)
    p_simulate = sub.add_parser("simulate", help="a local Twilio and WhatsApp Cloud API stand-in (the simulator)")
    from services.simulator import main as simulator

    simulator.add_arguments(p_simulate)
    p_simulate.set_defaults(func=simulate)
    p_chat = sub.add_parser("chat", help="talk to a sandbox `parley serve` as a phone: lines in, its messages out")
    p_chat.add_argument("--phone", required=True, help="the phone you write from, E.164 (+15551230000)")
    p_chat.add_argument("--whatsapp", action="store_true", help="write over WhatsApp instead of SMS")
    p_chat.add_argument("--url", default="http://127.0.0.1:8080", help="the server (default %(default)s)")
    p_chat.add_argument("--wait", type=float, default=15.0,
                        help="seconds to wait, at most, for the replies to a piped line and at the end")
    p_chat.set_defaults(func=chat)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except settings_mod.SettingsError as exc:  # found at start-up (services/tenants.py): one line
        print(f"parley: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
