"""The sandbox: with no provider credentials, `parley serve` sends to the embedded provider simulator.

With neither TWILIO_ACCOUNT_SID nor WHATSAPP_PHONE_NUMBER_ID set (or with PARLEY_SANDBOX=1 whatever is
set), `resolve` gives the default tenant a sandbox Twilio account and number and a WhatsApp Cloud
number, their credentials generated once under $PARLEY_HOME, and points TWILIO_API_BASE_URL and
WHATSAPP_GRAPH_BASE_URL at the simulator, which `create_app` mounts on the same server at /sandbox.
From there on nothing is special: the channels come from settings like real ones (services/tenants.py),
the dispatcher sends through the real twilio client and the WhatsApp sender, and the simulator posts
signed webhooks back like the providers do. `parley chat` (services/chat.py) is its terminal.

Why a sub-application of the same server and not a port of its own: one address to start, open and
forward (a container publishes one port), nothing to collide with when two sandboxes run side by side
(tests), and the operator API's own key check guards the simulator's control routes. The simulator
keeps what it accepted in memory, so the sandbox runs one process: with `--processes N` each would
hold its own, and the chat's long-poll would land on a process that never saw the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import socket
from pathlib import Path
from typing import Final

from aiohttp import web
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, ValidationError

from db import queries
from services import appkeys, phone, simulator
from services import runtime as runtime_mod
from services.badinput import BadInput
from services.httperrors import json_error
from services.ops import api
from services.settings import Settings, SettingsError

Q = queries.load(__file__, "sandbox.sql")
log = logging.getLogger("parley.sandbox")

PREFIX: Final = "/sandbox"
DEFAULT_URL: Final = "http://127.0.0.1:8080"  # `make serve`'s, and `parley chat --url`'s default
SECRETS_FILE: Final = "sandbox-secrets.json"
# 555-0100 to 555-0199 are set aside for fiction in every North American area code: never a real phone.
SMS_NUMBER: Final = "+12025550100"
WHATSAPP_NUMBER: Final = "+12025550101"
CLOSING = web.AppKey("sandbox_closing", asyncio.Event)  # set when the server starts shutting down
# Messages the chat waits for: what is due within this many seconds (a throughput deferral, a retry).
PENDING_HORIZON_S: Final = 5.0


class Secrets(BaseModel):
    """$PARLEY_HOME/sandbox-secrets.json: the sandbox's provider credentials, made up once and kept, so
    that a restart finds the same channels (and their conversations) again."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    twilio_account_sid: str = Field(pattern=r"^AC[0-9a-f]{32}$")
    twilio_auth_token: str = Field(min_length=16)
    sms_number: str = Field(pattern=r"^\+[1-9][0-9]{6,14}$")
    whatsapp_phone_number_id: str = Field(pattern=r"^[0-9]{1,20}$")
    whatsapp_app_secret: str = Field(min_length=16)
    whatsapp_verify_token: str = Field(min_length=16)
    whatsapp_access_token: str = Field(min_length=16)

    @classmethod
    def generate(cls) -> Secrets:
        return cls(
            twilio_account_sid="AC" + secrets.token_hex(16),
            twilio_auth_token=secrets.token_hex(16),
            sms_number=SMS_NUMBER,
            # Meta's ids are 15-16 digits, never starting with 0.
            whatsapp_phone_number_id=str(secrets.randbelow(9 * 10**14) + 10**14),
            whatsapp_app_secret=secrets.token_hex(16),
            whatsapp_verify_token=secrets.token_urlsafe(24),
            whatsapp_access_token="EAA" + secrets.token_urlsafe(32),
        )


def wanted(settings: Settings) -> bool:
    """PARLEY_SANDBOX when set; otherwise on exactly when no provider credentials are configured."""
    if settings.sandbox is not None:
        return settings.sandbox
    return not (settings.twilio_account_sid or settings.whatsapp_phone_number_id)


def load_secrets(home: Path) -> Secrets:
    """The sandbox's credentials from $PARLEY_HOME, generated (atomically, mode 0600) on first use.

    SettingsError, naming the file, when it exists but does not hold them: start-up stops rather than
    replace credentials that conversations were stored under."""
    path = Path(home) / SECRETS_FILE
    try:
        if not path.exists() and runtime_mod.write_once(path, Secrets.generate().model_dump_json(indent=2) + "\n"):
            log.info("generated sandbox credentials", extra={"path": str(path)})
        return Secrets.model_validate_json(path.read_bytes())
    except (OSError, UnicodeError) as exc:
        raise SettingsError(f"invalid setting PARLEY_SANDBOX: {path} cannot be used ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise SettingsError(f"invalid setting PARLEY_SANDBOX: {path}: {where} {first['msg']}; delete the file "
                            "to have new sandbox credentials generated") from None


def local_url(sock: socket.socket) -> str:
    """How this process reaches itself through its listening socket (a wildcard bind through loopback)."""
    address = sock.getsockname()
    host, port = str(address[0]), int(address[1])
    if sock.family == socket.AF_INET6:
        host = "::1" if host in ("::", "") else host
        return f"http://[{host}]:{port}"
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


def resolve(settings: Settings, url: str) -> Settings:
    """The settings `parley serve` runs with, `sandbox` decided (True or False, never None).

    In the sandbox the default tenant's provider settings are the sandbox's, whatever the environment
    held (PARLEY_SANDBOX=1 next to real credentials sends nothing for real), with both providers' base
    URLs on the simulator mounted at `url` + PREFIX. PUBLIC_BASE_URL, when unset, becomes `url`: the
    simulator posts inbound messages and status callbacks there, and the dispatcher names it in each
    Twilio StatusCallback."""
    if not wanted(settings):
        return settings.model_copy(update={"sandbox": False})
    box = load_secrets(settings.parley_home)
    if settings.processes > 1:
        log.warning("the sandbox runs one process: PARLEY_PROCESSES / --processes ignored",
                    extra={"processes": settings.processes})
    base = AnyHttpUrl(url + PREFIX)
    update: dict[str, object] = {
        "sandbox": True,
        "processes": 1,
        "twilio_account_sid": box.twilio_account_sid,
        "twilio_auth_token": SecretStr(box.twilio_auth_token),
        "twilio_api_key_sid": None,
        "twilio_api_key_secret": None,
        "twilio_messaging_service_sid": None,
        "twilio_from_number": box.sms_number,
        "twilio_api_base_url": base,
        "whatsapp_phone_number_id": box.whatsapp_phone_number_id,
        "whatsapp_app_secret": SecretStr(box.whatsapp_app_secret),
        "whatsapp_verify_token": SecretStr(box.whatsapp_verify_token),
        "whatsapp_access_token": SecretStr(box.whatsapp_access_token),
        "whatsapp_graph_base_url": base,
    }
    if settings.public_base_url is None:
        update["public_base_url"] = AnyHttpUrl(url)
    resolved = settings.model_copy(update=update)
    resolved.__dict__.pop("public_base", None)  # a cached_property of the copied settings: derive it anew
    return resolved


def announce(settings: Settings, url: str, real_credentials: bool) -> None:
    """The start-up line that says, unmissably, that nothing reaches a real phone."""
    where = "" if url == DEFAULT_URL else f" --url {url}"
    log.warning(
        "SANDBOX: no message reaches a real phone; the default tenant's numbers send to the simulator at "
        f"{url}{PREFIX}. Talk to them with: parley chat --phone +15551230000 [--whatsapp]{where}",
        extra={"sandbox": True, "simulator": url + PREFIX, "sms_number": settings.twilio_from_number,
               "whatsapp_phone_number_id": settings.whatsapp_phone_number_id,
               "real_credentials_ignored": real_credentials})


def _provider_path(path: str) -> bool:
    """Whether `path` (under PREFIX) is one of the providers' own APIs, which authenticate with the
    sandbox's provider credentials as the real ones do (Basic auth, a Bearer access token)."""
    first = path.removeprefix(PREFIX).lstrip("/").split("/", 1)[0]
    return first == "2010-04-01" or (first.startswith("v") and first[1:].replace(".", "", 1).isdigit())


@web.middleware
async def _operator_only(request: web.Request, handler: api.Handler) -> web.StreamResponse:
    """Every route of the sandbox but the providers' APIs needs the operator key: the control routes
    read every message sent and post inbound messages as anyone, not for a stranger on a public server."""
    if _provider_path(request.path):
        return await handler(request)
    if request.path == PREFIX + "/sim/messages":
        return await api.auth_middleware(request, functools.partial(_unless_closing, handler=handler))
    return await api.auth_middleware(request, handler)


async def _unless_closing(request: web.Request, handler: api.Handler) -> web.StreamResponse:
    """A long-poll, answered 503 when the server starts shutting down: the server waits for every
    request in flight before it stops, and a chat's poll (or the poll of a chat already gone) would
    otherwise hold a SIGTERM for as long as the poll's `wait`."""
    poll = asyncio.ensure_future(handler(request))
    closing = asyncio.ensure_future(request.app[CLOSING].wait())
    try:
        await asyncio.wait({poll, closing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()
    if poll.done():
        return poll.result()
    poll.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await poll
    response = json_error(503, "the sandbox is shutting down", "wait")
    response.headers["Retry-After"] = "5"
    return response


async def _close(app: web.Application) -> None:
    app[CLOSING].set()


def create_app(settings: Settings) -> web.Application:
    """The sandbox, mounted at PREFIX: the simulator's provider and control routes, and the chat's own.
    `settings` are those `resolve` returned."""
    app = simulator.create_app(simulator_config(settings))
    app.middlewares.insert(0, _operator_only)
    app[CLOSING] = asyncio.Event()
    app.on_shutdown.append(_close)  # before the server waits for the requests in flight
    app.add_routes([web.get("/info", info), web.get("/pending", pending)])
    return app


def simulator_config(settings: Settings) -> simulator.SimConfig:
    """The simulator knows the sandbox's accounts, and reaches Parley where `resolve` pointed the
    providers' base URLs (its own server), signing for PUBLIC_BASE_URL as the real providers would."""
    assert settings.sandbox and settings.twilio_account_sid and settings.twilio_auth_token \
        and settings.whatsapp_phone_number_id and settings.whatsapp_access_token and settings.whatsapp_app_secret \
        and settings.twilio_from_number, "settings not resolved for the sandbox"
    own = str(settings.twilio_api_base_url).rstrip("/").removesuffix(PREFIX)
    config = simulator.SimConfig(parley_url=own, parley_public_url=settings.public_base)
    config.twilio_accounts[settings.twilio_account_sid] = settings.twilio_auth_token.get_secret_value()
    config.twilio_numbers[settings.twilio_from_number] = settings.twilio_account_sid
    config.meta_numbers[settings.whatsapp_phone_number_id] = simulator.MetaNumber(
        settings.whatsapp_phone_number_id, settings.whatsapp_access_token.get_secret_value(),
        settings.whatsapp_app_secret.get_secret_value(), display_phone_number=WHATSAPP_NUMBER.lstrip("+"))
    return config


async def info(request: web.Request) -> web.Response:
    """GET /sandbox/info: the numbers a chat writes to."""
    settings = request.config_dict[appkeys.RUNTIME].settings
    return web.json_response({"sandbox": True, "sms_number": settings.twilio_from_number,
                              "whatsapp_phone_number_id": settings.whatsapp_phone_number_id})


async def pending(request: web.Request) -> web.Response:
    """GET /sandbox/pending?phone=: what Parley still has to do for that user soon (agent tasks, sends),
    so that a scripted chat sends its next line only once the last one has been answered."""
    raw = request.query.get("phone", "")
    e164 = phone.to_e164(raw)
    if e164 is None:
        raise BadInput("phone", "is required: an E.164 number, e.g. +15551230000")
    runtime = request.config_dict[appkeys.RUNTIME]
    async with runtime.pool.acquire() as conn:
        row = await conn.fetchrow(Q.pending, runtime.default_tenant_id, e164, PENDING_HORIZON_S)
    return web.json_response({"tasks": row["tasks"], "messages": row["messages"],
                              "pending": row["tasks"] + row["messages"]})

