"""`parley serve` with no provider credentials runs the sandbox: the default tenant's numbers send to the
embedded simulator, /readyz and the start-up log say so, and the simulator's control routes need the
operator key. With credentials it is off unless PARLEY_SANDBOX=1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services import sandbox
from services import web as web_mod
from services.channels import outbound, twilio_send
from services.channels.base import ChannelKind
from services.simulator import keys as simulator_keys
from tests import support
from tests.integration.test_processes import _free_port

START_TIMEOUT_S = 90


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    home: Path
    log: Path
    database_url: str

    @property
    def api_key(self) -> str:
        return (self.home / "api-key").read_text().strip()

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a `parley` command run beside this server (the chat), with its PARLEY_HOME."""
        return {**clean_env(), "PARLEY_HOME": str(self.home), **extra}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PARLEY_", "OPENAI_", "TWILIO_", "WHATSAPP_", "PUBLIC_BASE_URL", "DATABASE_URL"))}


def start(database_url: str, home: Path, **extra: str) -> Server:
    """A real `parley serve` on a free port, once it is ready."""
    port = _free_port()
    env = clean_env()
    # Quiet hours off: what a test sends must not depend on the hour it runs at.
    env.update(DATABASE_URL=database_url, PARLEY_HOME=str(home), PARLEY_QUIET_HOURS="",
               PARLEY_POLL_INTERVAL_S="0.2", PARLEY_DB_POOL_SIZE="6", **extra)
    home.mkdir(parents=True, exist_ok=True)
    # A file, not a pipe: nobody reads a pipe while the test runs, and a full one would stall the server.
    log = home.parent / f"serve-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", home, log, database_url)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(server)
            pytest.fail(f"parley serve did not become ready: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.base + "/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return server
        except (OSError, ValueError):
            pass
        time.sleep(0.1)


def stop(server: Server) -> None:
    """SIGTERM, and the exit status must be 0 (SIGKILL after a minute, and a failure)."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    assert code == 0, server.log.read_text()[-3000:]


@asynccontextmanager
async def serving(database_url: str, home: Path, **extra: str) -> AsyncIterator[Server]:
    server = await asyncio.to_thread(start, database_url, home, **extra)
    try:
        yield server
    finally:
        await asyncio.to_thread(stop, server)


async def get(server: Server, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(server.base + path, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_without_provider_credentials_serve_runs_the_sandbox_and_says_so(database_url, db, tmp_path):
    async with serving(database_url, tmp_path / "home") as server:
        status, ready = await get(server, "/readyz")
        assert status == 200 and ready["sandbox"] is True, ready
        [line] = [line for line in server.log_lines() if line.get("logger") == "parley.sandbox"
                  and line["level"] == "warning"]
        assert "SANDBOX" in line["msg"] and "parley chat" in line["msg"]
        assert line["real_credentials_ignored"] is False
        [serving_line] = [line for line in server.log_lines() if line["msg"] == "serving"]
        assert serving_line["sandbox"] is True

        secrets_file = server.home / sandbox.SECRETS_FILE
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        box = sandbox.Secrets.model_validate_json(secrets_file.read_bytes())
        channels = {(r["kind"], r["address"]): r for r in await db.fetch(
            "SELECT kind, address, account_sid, credentials, active FROM channels c "
            "JOIN tenants t ON t.id = c.tenant_id WHERE t.slug = 'default'")}
        assert channels[("twilio_sms", "*")]["account_sid"] == box.twilio_account_sid
        assert channels[("twilio_sms", "*")]["credentials"]["auth_token"] == box.twilio_auth_token
        assert channels[("whatsapp_cloud", box.whatsapp_phone_number_id)]["active"]
        # No token reaches the log.
        text = server.log.read_text()
        assert box.twilio_auth_token not in text and box.whatsapp_access_token not in text

    # A restart keeps the sandbox's credentials, so its channels and their conversations stay.
    async with serving(database_url, tmp_path / "home") as server:
        assert sandbox.Secrets.model_validate_json((server.home / sandbox.SECRETS_FILE).read_bytes()) == box


async def test_with_provider_credentials_the_sandbox_is_off_and_the_chat_says_so(database_url, tmp_path):
    credentials = {"TWILIO_ACCOUNT_SID": support.ACCOUNT_SID, "TWILIO_AUTH_TOKEN": support.AUTH_TOKEN}
    async with serving(database_url, tmp_path / "home", **credentials) as server:
        status, ready = await get(server, "/readyz")
        assert status == 200 and ready["sandbox"] is False, ready
        status, _ = await get(server, "/sandbox/info", headers=server.auth())
        assert status == 404
        assert not (server.home / sandbox.SECRETS_FILE).exists()
        chat = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.cli", "chat", "--phone", "+15551230000",
                             "--url", server.base], input="HELP\n", capture_output=True, text=True,
            env=server.env(), timeout=60)
        assert chat.returncode == 1
        assert "not in sandbox mode" in chat.stderr and chat.stdout == ""


async def test_sandbox_on_top_of_real_credentials_when_asked(database_url, tmp_path):
    credentials = {"TWILIO_ACCOUNT_SID": support.ACCOUNT_SID, "TWILIO_AUTH_TOKEN": support.AUTH_TOKEN,
                   "PARLEY_SANDBOX": "1"}
    async with serving(database_url, tmp_path / "home", **credentials) as server:
        status, ready = await get(server, "/readyz")
        assert ready["sandbox"] is True
        [line] = [line for line in server.log_lines() if line.get("logger") == "parley.sandbox"
                  and line["level"] == "warning"]
        assert line["real_credentials_ignored"] is True


CONTROL_ROUTES = [
    ("GET", "/sandbox/sim/messages?to=%2B15551230000"),
    ("POST", "/sandbox/sim/inbound"),
    ("POST", "/sandbox/sim/reset"),
    ("POST", "/sandbox/sim/config"),
    ("GET", "/sandbox/sim/stats"),
    ("GET", "/sandbox/sim/no-such-route"),
    ("GET", "/sandbox/info"),
    ("GET", "/sandbox/pending?phone=%2B15551230000"),
]


async def test_the_simulators_control_routes_refuse_a_request_without_the_operator_key(database_url, tmp_path):
    async with serving(database_url, tmp_path / "home") as server, aiohttp.ClientSession() as session:
        for method, path in CONTROL_ROUTES:
            for headers in ({}, {"Authorization": "Bearer not-the-key"}, {"Authorization": server.api_key}):
                async with session.request(method, server.base + path, headers=headers, json={}) as resp:
                    assert resp.status == 401, (method, path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with session.get(server.base + "/sandbox/info", headers=server.auth()) as resp:
            assert resp.status == 200
            info = await resp.json()
        async with session.get(server.base + "/sandbox/sim/messages?to=%2B15551230000&wait=0",
                               headers=server.auth()) as resp:
            assert resp.status == 200

        # The providers' own APIs are not behind the operator key but behind the sandbox's provider
        # credentials, as the real ones are: without them refused, with them (the real twilio client) sent.
        box = sandbox.Secrets.model_validate_json((server.home / sandbox.SECRETS_FILE).read_bytes())
        base = server.base + sandbox.PREFIX
        async with session.post(f"{base}/2010-04-01/Accounts/{box.twilio_account_sid}/Messages.json",
                                data={"To": "+15551230000", "From": info["sms_number"], "Body": "x"}) as resp:
            assert resp.status == 401
        async with session.post(f"{base}/v23.0/{box.whatsapp_phone_number_id}/messages",
                                json={"messaging_product": "whatsapp", "to": "15551230000", "type": "text",
                                      "text": {"body": "x"}}) as resp:
            assert resp.status in (400, 401)
        async with session.get(f"{base}/sim/messages?to=%2B15551230000&wait=0", headers=server.auth()) as resp:
            assert (await resp.json())["messages"] == []

        sender = twilio_send.TwilioSender(timeout_s=10, api_base_url=base)
        try:
            result = await sender.send(outbound.OutboundRequest(
                queue_id=1, to="+15551230000", body="straight through the simulator",
                channel=outbound.SenderChannel(id=1, tenant_id=1, kind=ChannelKind.TWILIO_SMS,
                                               address=info["sms_number"], account_sid=box.twilio_account_sid,
                                               auth_token=box.twilio_auth_token)))
        finally:
            await sender.close()
        async with session.get(f"{base}/sim/messages?to=%2B15551230000&wait=0", headers=server.auth()) as resp:
            [seen] = (await resp.json())["messages"]
        assert seen["body"] == "straight through the simulator" and seen["sid"] == result.provider_message_id




async def test_shutting_down_answers_a_long_poll_in_flight_instead_of_waiting_it_out(aiohttp_client, database_url,
                                                                                      tmp_path):
    port = _free_port()
    settings = sandbox.resolve(support.make_settings(database_url, PARLEY_SANDBOX="1", PARLEY_HOME=str(tmp_path)),
                               f"http://127.0.0.1:{port}")
    app = web_mod.create_app(settings)
    client = await aiohttp_client(app, server_kwargs={"port": port})
    [sub] = [r.get_info()["app"] for r in app.router.resources() if r.get_info().get("prefix") == sandbox.PREFIX]
    store = sub[simulator_keys.STORE]
    poll = asyncio.create_task(client.get("/sandbox/sim/messages", params={"to": "+15551230000", "wait": "60"},
                                          headers={"Authorization": f"Bearer {support.API_KEY}"}))
    while not store._changed._waiters:  # type: ignore[attr-defined]  # the poll is waiting in the simulator
        assert not poll.done(), await poll
        await asyncio.sleep(0.01)
    closing = asyncio.create_task(client.server.close())
    resp = await poll
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert (await resp.json())["error"] == "the sandbox is shutting down"
    await closing


# Values nobody thought of, for the sandbox's own routes (with the key): each is a 2xx or a 4xx
# naming the problem, never a 500 or a hang.
ODD_VALUES = ["", " ", "+", "%2B", "+1", "+15551230000" * 20, "%00", "%FF%FE", "null", "[]", "{}",
              "+1555123000%00", "-1", "9" * 40, "%E2%80%AE+15551230000", "whatsapp:+15551230000", "%25"]


async def test_the_sandbox_routes_answer_odd_input_with_a_4xx_never_a_500(database_url, tmp_path):
    async with serving(database_url, tmp_path / "home") as server, aiohttp.ClientSession() as session:
        for value in ODD_VALUES:
            for path in (f"/sandbox/pending?phone={value}", f"/sandbox/sim/messages?to={value}&after={value}",
                         f"/sandbox/sim/messages?wait={value}", f"/sandbox/info?x={value}"):
                async with session.get(server.base + path, headers=server.auth(),
                                       timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    assert resp.status < 500, (path, resp.status, await resp.text())
            for body in ({"channel": value, "from": value, "body": value}, {"from": value}, [value], value):
                async with session.post(server.base + "/sandbox/sim/inbound", headers=server.auth(), json=body,
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    assert resp.status < 500, (body, resp.status, await resp.text())
