"""`parley chat` against a sandbox `parley serve`: piped lines go in as signed inbound messages, and each
message Parley sends to the phone is printed, exactly the ones it should send: the HELP text for a HELP,
one confirmation for a STOP and nothing after it, an operator's message as it is sent."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from db import pool as db_pool
from services import settings as settings_mod
from tests.conftest import _admin, _with_database
from tests.integration.test_processes import _free_port
from tests.integration.test_sandbox import Server, clean_env, get, start, stop

PHONE = "+15551230000"
HELP_TEXT = settings_mod.Settings.model_fields["help_text"].default
@pytest.fixture(scope="module")
def server(pg_admin_dsn: str, pg_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One sandbox server for the module (its start is most of a test's time): each test has a phone of
    its own, so none sees another's conversation."""
    name = f"parley_chat_{os.getpid()}"
    asyncio.run(_admin(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
                       f"CREATE DATABASE {name} TEMPLATE {pg_template}"))
    running = start(_with_database(pg_admin_dsn, name), tmp_path_factory.mktemp("chat") / "home")
    try:
        yield running
    finally:
        try:
            stop(running)
        finally:
            asyncio.run(_admin(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def sandbox_db(server: Server) -> AsyncIterator[asyncpg.Connection]:
    conn = await db_pool.connect(server.database_url)
    yield conn
    await conn.close()


FINAL = {"sent", "delivered", "read", "failed", "undelivered", "expired", "canceled", "suppressed", "superseded"}


async def chat(server: Server | None, script: str, *args: str, url: str | None = None, phone: str = PHONE,
               **env: str) -> tuple[int, str, str]:
    """`parley chat` with `script` piped in: its exit status, stdout and stderr."""
    command = [sys.executable, "-m", "services.cli", "chat", "--phone", phone,
               "--url", url or (server.base if server else ""), *args]
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=server.env(**env) if server else {**clean_env(), **env})
    out, err = await asyncio.wait_for(proc.communicate(script.encode()), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def sent_to(server: Server, phone: str = PHONE) -> list[dict[str, Any]]:
    """Everything the simulator accepted for `phone`, in order."""
    async with aiohttp.ClientSession() as session, session.get(
            server.base + "/sandbox/sim/messages", params={"to": phone, "wait": "0"}, headers=server.auth()) as resp:
        assert resp.status == 200
        return list((await resp.json())["messages"])


async def test_a_help_gets_the_help_text(server):
    code, out, err = await chat(server, "HELP\n")
    assert code == 0, err
    assert out == f"> HELP\n< {HELP_TEXT}\n", err
    assert [m["body"] for m in await sent_to(server)] == [HELP_TEXT]
    # Another chat from the same phone starts where the last one ended: nothing printed twice.
    code, out, err = await chat(server, "INFO\n")
    assert code == 0 and out == f"> INFO\n< {HELP_TEXT}\n", err


async def test_a_help_over_whatsapp_gets_the_help_text(server):
    code, out, err = await chat(server, "help\n", "--whatsapp", phone="+15551230010")
    assert code == 0, err
    assert out == f"> help\n< {HELP_TEXT}\n", err
    [sent] = await sent_to(server, "+15551230010")
    assert sent["provider"] == "meta"


async def test_a_stop_gets_exactly_one_confirmation_and_nothing_after_it(server, sandbox_db):
    phone = "+15551230020"
    code, out, err = await chat(server, "HELP\nSTOP\nHELP\nare you still there?\n", phone=phone)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:2] == ["> HELP", f"< {HELP_TEXT}"], out
    assert lines[2] == "> STOP" and lines[3].startswith("< "), out
    assert lines[4:] == ["> HELP", "> are you still there?"], out
    confirmation = lines[3].removeprefix("< ")
    assert confirmation != HELP_TEXT

    # An operator's message after the STOP does not go either.
    async with aiohttp.ClientSession() as session, session.post(
            server.base + "/api/messages", headers=server.auth(),
            json={"to": phone, "channel": "sms", "body": "We miss you", "class": "marketing"}) as resp:
        assert resp.status in (202, 409), await resp.text()  # refused, or queued and suppressed
    # Not a wait for silence: every row for the phone is final, and what the simulator has is all.
    await _all_final(sandbox_db, phone)
    assert [m["body"] for m in await sent_to(server, phone)] == [HELP_TEXT, confirmation]
    reasons = [r["reason"] for r in await sandbox_db.fetch(
        "SELECT q.reason FROM message_queue q JOIN users u ON u.id = q.user_id "
        "WHERE u.phone = $1 AND q.status IN ('sent', 'delivered', 'read') ORDER BY q.id", phone)]
    assert reasons == ["help", "opt_out_confirmation"]


async def _all_final(db: asyncpg.Connection, phone: str, timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        statuses = {r["status"] for r in await db.fetch(
            "SELECT q.status FROM message_queue q JOIN users u ON u.id = q.user_id WHERE u.phone = $1", phone)}
        tasks = await db.fetchval(
            "SELECT count(*) FROM agent_tasks t JOIN conversations c ON c.id = t.conversation_id "
            "JOIN users u ON u.id = c.user_id WHERE u.phone = $1 AND t.status IN ('pending', 'running')", phone)
        if statuses <= FINAL and not tasks:
            return
        assert loop.time() < deadline, (statuses, tasks)
        await asyncio.sleep(0.1)


async def _following(server: Server, phone: str) -> asyncio.subprocess.Process:
    """A chat with stdin held open, once it has said it follows the phone's messages."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "chat", "--phone", phone, "--url", server.base,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=server.env())
    assert proc.stderr is not None
    banner = await _line(proc.stderr)  # from here on the chat prints every message sent
    assert phone in banner, banner
    return proc


async def _operator_send(server: Server, phone: str, body: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            server.base + "/api/messages", headers=server.auth(),
            json={"to": phone, "channel": "sms", "body": body, "class": "transactional"}) as resp:
        assert resp.status == 202, await resp.text()


async def _finish(proc: asyncio.subprocess.Process) -> None:
    """End of input: the chat exits 0 having printed nothing more."""
    assert proc.stdin is not None
    proc.stdin.close()
    rest, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert rest == b""


async def test_an_operator_message_to_the_phone_appears_in_the_chat(server):
    phone = "+15551230030"
    proc = await _following(server, phone)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"HELP\n")
        await proc.stdin.drain()
        assert await _line(proc.stdout) == "> HELP"
        assert await _line(proc.stdout) == f"< {HELP_TEXT}"
        # An operator's message arrives while nothing is typed.
        await _operator_send(server, phone, "Your table is ready")
        assert await _line(proc.stdout) == "< Your table is ready"
    finally:
        await _finish(proc)
    sent = await sent_to(server, phone)
    assert [m["body"] for m in sent] == [HELP_TEXT, "Your table is ready"]
    assert sent[1]["from"] == sent[0]["from"]  # from the number the phone wrote to


async def test_a_first_operator_message_to_a_phone_that_never_wrote_goes_from_the_sandbox_number(server):
    phone = "+15551230040"
    proc = await _following(server, phone)
    assert proc.stdout is not None
    try:
        await _operator_send(server, phone, "Welcome to the sandbox")
        assert await _line(proc.stdout) == "< Welcome to the sandbox"
    finally:
        await _finish(proc)
    [sent] = await sent_to(server, phone)
    status, info = await get(server, "/sandbox/info", headers=server.auth())
    assert sent["from"] == info["sms_number"]


async def _line(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    return (await asyncio.wait_for(stream.readline(), 60)).decode().rstrip("\n")


@pytest.mark.parametrize("key", ["some-key\n", None])
async def test_the_chat_says_so_when_no_server_is_running(tmp_path, key):
    home = tmp_path / "home"
    home.mkdir()
    if key is not None:
        (home / "api-key").write_text(key)
    # With a key file or none (a server never started here wrote none), the missing server is the news.
    code, out, err = await chat(None, "HELP\n", url=f"http://127.0.0.1:{_free_port()}", PARLEY_HOME=str(home))
    assert code == 1 and out == ""
    assert err.startswith("parley chat: no Parley server at") and "make serve" in err, err
    assert len(err.splitlines()) == 1, err


async def test_the_chat_says_so_when_its_key_is_refused(server):
    code, out, err = await chat(server, "HELP\n", phone="+15551230050", PARLEY_API_KEY="not-the-servers-key")
    assert code == 1 and out == ""
    assert "refused the operator key" in err, err


async def test_the_chat_says_so_when_it_has_no_key(server, tmp_path):
    code, out, err = await chat(server, "HELP\n", phone="+15551230060", PARLEY_HOME=str(tmp_path / "elsewhere"))
    assert code == 1 and out == ""
    assert "no operator key" in err and str(tmp_path / "elsewhere" / "api-key") in err, err
