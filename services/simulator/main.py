"""`parley simulate`: the simulator as a process, knowing Parley's own credentials from the settings."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from services import badinput
from services.settings import Settings
from services.simulator import app as app_mod
from services.simulator.config import MetaNumber, SimConfig, parse_rate

log = logging.getLogger("parley.simulator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--parley-url", default="http://127.0.0.1:8080",
                        help="where Parley listens: inbound webhooks and WhatsApp statuses go there")
    parser.add_argument("--parley-public-url", default=None,
                        help="the public URL Parley signs against (PUBLIC_BASE_URL), if not --parley-url")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", action="append", default=[], metavar="CODE=P",
                        help="answer sends with this error at this rate (21610=0.1, meta:131047=0.5, timeout=0.01)")
    parser.add_argument("--failure-rate", action="append", default=[], metavar="CODE=P",
                        help="accept a send, then fail it in its status callback (30006=0.05)")
    parser.add_argument("--throughput", action="append", default=[], metavar="SENDER=RATE",
                        help="messages per second from one sender (+15551230000, MG..., a phone_number_id)")
    parser.add_argument("--default-throughput", type=float, default=None, help="per sender not named")
    parser.add_argument("--no-callbacks", action="store_true", help="send no status callbacks")
    parser.add_argument("--twilio-account", action="append", default=[], metavar="AC...:TOKEN")
    parser.add_argument("--twilio-api-key", action="append", default=[], metavar="SK...:AC...:SECRET")
    parser.add_argument("--twilio-number", action="append", default=[], metavar="+1...[:AC...]")
    parser.add_argument("--meta-number", action="append", default=[], metavar="PHONE_NUMBER_ID:TOKEN:APP_SECRET")
    parser.add_argument("--seed", type=int, default=None, help="for reproducible error draws")


def config_from(settings: Settings, args: argparse.Namespace) -> SimConfig:
    """Parley's own credentials (so that `parley serve` with the same settings can use it at once),
    plus those given on the command line."""
    config = SimConfig(parley_url=args.parley_url, parley_public_url=args.parley_public_url or
                       (settings.public_base if settings.public_base else None), seed=args.seed)
    if settings.twilio_account_sid and settings.twilio_auth_token:
        config.twilio_accounts[settings.twilio_account_sid] = settings.twilio_auth_token.get_secret_value()
        if settings.twilio_api_key_sid and settings.twilio_api_key_secret:
            config.twilio_api_keys[settings.twilio_api_key_sid] = (
                settings.twilio_account_sid, settings.twilio_api_key_secret.get_secret_value())
        if settings.twilio_from_number:
            config.twilio_numbers[settings.twilio_from_number] = settings.twilio_account_sid
    if settings.whatsapp_phone_number_id and settings.whatsapp_access_token and settings.whatsapp_app_secret:
        config.meta_numbers[settings.whatsapp_phone_number_id] = MetaNumber(
            settings.whatsapp_phone_number_id, settings.whatsapp_access_token.get_secret_value(),
            settings.whatsapp_app_secret.get_secret_value())
    for text in args.twilio_account:
        sid, token = _split(text, 2, "--twilio-account")
        config.twilio_accounts[sid] = token
    for text in args.twilio_api_key:
        key, account, secret = _split(text, 3, "--twilio-api-key")
        config.twilio_api_keys[key] = (account, secret)
    for text in args.twilio_number:
        number, _, account = text.partition(":")
        owner = account or next(iter(config.twilio_accounts), None)
        if owner is None:
            raise badinput.BadInput("--twilio-number", "needs an account (+1...:AC...) or a --twilio-account")
        config.twilio_numbers[number] = owner
    for text in args.meta_number:
        number_id, token, secret = _split(text, 3, "--meta-number")
        config.meta_numbers[number_id] = MetaNumber(number_id, token, secret)
    knobs = config.knobs
    knobs.latency_ms, knobs.latency_jitter_ms = args.latency_ms, args.latency_jitter_ms
    knobs.default_throughput, knobs.callbacks = args.default_throughput, not args.no_callbacks
    for text in args.error_rate:
        knobs.error_rates.update(parse_rate(text))
    for text in args.failure_rate:
        knobs.failure_rates.update(parse_rate(text))
    for text in args.throughput:
        sender, _, rate = text.rpartition("=")
        try:
            knobs.throughput[sender] = float(rate)
        except ValueError:
            raise badinput.BadInput("--throughput", f"{text!r} is not SENDER=RATE") from None
    return config


def _split(text: str, parts: int, name: str) -> list[str]:
    values = text.split(":", parts - 1)
    if len(values) != parts or not all(values):
        raise badinput.BadInput(name, f"{text!r} does not have {parts} ':'-separated parts")
    return values


def run(settings: Settings, args: argparse.Namespace) -> None:
    config = config_from(settings, args)
    app = app_mod.create_app(config)

    async def announce(_: web.Application) -> None:
        log.info("simulating", extra={
            "url": f"http://{args.host}:{args.port}", "parley_url": config.parley_url,
            "twilio_accounts": sorted(config.twilio_accounts), "meta_numbers": sorted(config.meta_numbers)})

    app.on_startup.append(announce)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)
