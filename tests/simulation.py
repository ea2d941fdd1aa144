"""The provider simulator in-process on a free port, for tests that send through the real clients.

    @pytest.fixture
    async def simulation() -> AsyncIterator[Simulation]:
        async with running(sim_config(parley_url=...)) as sim:
            yield sim

    async def test_something(simulation: Simulation) -> None:
        settings = simulation.settings()          # TWILIO_API_BASE_URL etc. pointing at it
        ...
        sent = await simulation.messages(wait=5)  # what the simulator accepted

`Simulation.config` holds the credentials it knows (the constants below); `parley_url` may point the
simulator's webhooks at a Parley app under test (or at a `Receiver`).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from services import settings as settings_mod
from services.channels.base import ChannelKind
from services.channels.outbound import SenderChannel
from services.simulator import MetaNumber, SimConfig, keys, serving
from services.simulator.state import Store

ACCOUNT_SID = "AC" + "a1" * 16
AUTH_TOKEN = "b2" * 16
API_KEY_SID = "SK" + "c3" * 16
API_KEY_SECRET = "d4" * 16
SMS_NUMBER = "+14155550100"
WHATSAPP_NUMBER = "+14155238886"
SERVICE_SID = "MG" + "e5" * 16
PHONE_NUMBER_ID = "106540352242922"
ACCESS_TOKEN = "EAAG" + "f6" * 20
APP_SECRET = "a7" * 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sim_config(parley_url: str | None = None) -> SimConfig:
    return SimConfig(
        twilio_accounts={ACCOUNT_SID: AUTH_TOKEN},
        twilio_api_keys={API_KEY_SID: (ACCOUNT_SID, API_KEY_SECRET)},
        twilio_numbers={SMS_NUMBER: ACCOUNT_SID},
        meta_numbers={PHONE_NUMBER_ID: MetaNumber(PHONE_NUMBER_ID, ACCESS_TOKEN, APP_SECRET)},
        parley_url=parley_url, seed=11)


@dataclass
class Simulation:
    base_url: str
    config: SimConfig
    app: web.Application
    session: aiohttp.ClientSession

    @property
    def store(self) -> Store:
        return self.app[keys.STORE]

    def settings(self, **overrides: object) -> settings_mod.Settings:
        """Settings whose provider URLs and credentials point at this simulator."""
        values: dict[str, object] = {
            "TWILIO_API_BASE_URL": self.base_url, "WHATSAPP_GRAPH_BASE_URL": self.base_url,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID, "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
            "WHATSAPP_APP_SECRET": APP_SECRET, "WHATSAPP_VERIFY_TOKEN": "verify", "PARLEY_SEND_TIMEOUT_S": 5,
        }
        values.update(overrides)
        return settings_mod.load(**values)

    async def control(self, method: str, path: str, json: Any = None) -> Any:
        async with self.session.request(method, self.base_url + path, json=json) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def configure(self, **knobs: Any) -> Any:
        return await self.control("POST", "/sim/config", knobs)

    async def messages(self, *, after: int = 0, to: str | None = None, wait: float = 0) -> list[dict[str, Any]]:
        query = f"?after={after}&wait={wait}" + (f"&to={to.replace('+', '%2B')}" if to else "")
        return list((await self.control("GET", "/sim/messages" + query))["messages"])


@asynccontextmanager
async def running(config: SimConfig) -> AsyncIterator[Simulation]:
    async with serving(config, shutdown_timeout=0.5) as (base_url, app), aiohttp.ClientSession() as session:
        yield Simulation(base_url, config, app, session)


def sms_channel(**overrides: Any) -> SenderChannel:
    values: dict[str, Any] = {"id": 1, "tenant_id": 1, "kind": ChannelKind.TWILIO_SMS, "address": SMS_NUMBER,
                              "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN}
    values.update(overrides)
    return SenderChannel(**values)


def twilio_whatsapp_channel(**overrides: Any) -> SenderChannel:
    return sms_channel(**{"kind": ChannelKind.TWILIO_WHATSAPP, "address": WHATSAPP_NUMBER, **overrides})


def cloud_channel(**overrides: Any) -> SenderChannel:
    values: dict[str, Any] = {"id": 3, "tenant_id": 1, "kind": ChannelKind.WHATSAPP_CLOUD,
                              "address": PHONE_NUMBER_ID, "access_token": ACCESS_TOKEN}
    values.update(overrides)
    return SenderChannel(**values)


@dataclass
class Received:
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A stand-in for Parley's webhook endpoints that keeps what it was sent and answers 200."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    status: int = 200


@asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()

    async def keep(request: web.Request) -> web.Response:
        receiver.received.append(Received(request.path_qs, dict(request.headers), await request.read()))
        return web.Response(status=receiver.status, text="ok")

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", keep)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
