"""`parley chat` against a sandbox `parley serve`: piped lines go in as signed inbound messages, and each
message Parley sends to the phone is printed, exactly the ones it should send: the HELP text for a HELP,
one confirmation for a STOP and nothing after it, an operator's message as it is sent."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp

from services import settings as settings_mod
from tests.integration.test_processes import _free_port
from tests.integration.test_sandbox import Server, clean_env, serving

PHONE = "+15551230000"
HELP_TEXT = settings_mod.Settings.model_fields["help_text"].default
FINAL = {"sent", "delivered", "read", "failed", "undelivered", "expired", "canceled", "suppressed", "superseded"}


async def chat(server: Server | None, script: str, *args: str, url: str | None = None,
               **env: str) -> tuple[int, str, str]:
    """`parley chat` with `script` piped in: its exit status, stdout and stderr."""
    command = [sys.executable, "-m", "services.cli", "chat", "--phone", PHONE,
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


async def test_a_help_gets_the_help_text(database_url, tmp_path):
    async with serving(database_url, tmp_path / "home") as server:
        code, out, err = await chat(server, "HELP\n")
        assert code == 0, err
        assert out == f"> HELP\n< {HELP_TEXT}\n", err
        assert [m["body"] for m in await sent_to(server)] == [HELP_TEXT]
        # Another chat from the same phone starts where the last one ended: nothing printed twice.
        code, out, err = await chat(server, "INFO\n")
        assert code == 0 and out == f"> INFO\n< {HELP_TEXT}\n", err


async def test_a_help_over_whatsapp_gets_the_help_text(database_url, tmp_path):
    async with serving(database_url, tmp_path / "home") as server:
        code, out, err = await chat(server, "help\n", "--whatsapp")
        assert code == 0, err
        assert out == f"> help\n< {HELP_TEXT}\n", err


async def test_a_stop_gets_exactly_one_confirmation_and_nothing_after_it(database_url, db, tmp_path):
    async with serving(database_url, tmp_path / "home") as server:
        code, out, err = await chat(server, "HELP\nSTOP\nHELP\nare you still there?\n")
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
                json={"to": PHONE, "channel": "sms", "body": "We miss you", "class": "marketing"}) as resp:
            assert resp.status in (202, 409), await resp.text()  # refused, or queued and suppressed
        # Not a wait for silence: every row for the phone is final, and what the simulator has is all.
        await _all_final(db)
        assert [m["body"] for m in await sent_to(server)] == [HELP_TEXT, confirmation]
        reasons = [r["reason"] for r in await db.fetch(
            "SELECT reason FROM message_queue WHERE status IN ('sent', 'delivered', 'read') ORDER BY id")]
        assert reasons == ["help", "opt_out_confirmation"]


async def _all_final(db: Any, timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        statuses = {r["status"] for r in await db.fetch("SELECT status FROM message_queue")}
        tasks = await db.fetchval("SELECT count(*) FROM agent_tasks WHERE status IN ('pending', 'running')")
        if statuses <= FINAL and not tasks:
            return
        assert loop.time() < deadline, (statuses, tasks)
        await asyncio.sleep(0.1)


async def test_an_operator_message_to_the_phone_appears_in_the_chat(database_url, tmp_path):
    async with serving(database_url, tmp_path / "home") as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "chat", "--phone", PHONE, "--url", server.base,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=server.env())
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(b"HELP\n")
            await proc.stdin.drain()
            assert await _line(proc.stdout) == "> HELP"
            assert await _line(proc.stdout) == f"< {HELP_TEXT}"
            # The chat is now following: an operator's message arrives while nothing is typed.
            async with aiohttp.ClientSession() as session, session.post(
                    server.base + "/api/messages", headers=server.auth(),
                    json={"to": PHONE, "channel": "sms", "body": "Your table is ready", "class": "transactional",
                          "idempotency_key": "table-ready-1"}) as resp:
                assert resp.status == 202, await resp.text()
            assert await _line(proc.stdout) == "< Your table is ready"
        finally:
            proc.stdin.close()
        rest, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert rest == b""
        sent = await sent_to(server)
        assert [m["body"] for m in sent] == [HELP_TEXT, "Your table is ready"]
        assert sent[1]["from"] == sent[0]["from"]  # from the number the phone wrote to


async def test_a_first_operator_message_to_a_phone_that_never_wrote_goes_from_the_sandbox_number(
        database_url, tmp_path):
    stranger = "+15551239999"
    async with serving(database_url, tmp_path / "home") as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "chat", "--phone", stranger, "--url", server.base,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=server.env())
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            banner = await _line(proc.stderr)  # from here on the chat prints every message sent
            assert stranger in banner, banner
            async with aiohttp.ClientSession() as session:
                async with session.get(server.base + "/sandbox/info", headers=server.auth()) as resp:
                    number = (await resp.json())["sms_number"]
                async with session.post(server.base + "/api/messages", headers=server.auth(),
                                        json={"to": stranger, "channel": "sms", "body": "Welcome to the sandbox",
                                              "class": "transactional"}) as resp:
                    assert resp.status == 202, await resp.text()
            assert await _line(proc.stdout) == "< Welcome to the sandbox"
        finally:
            proc.stdin.close()
        rest, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert rest == b""
        [sent] = await sent_to(server, stranger)
        assert sent["from"] == number


async def _line(stream: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(stream.readline(), 60)).decode().rstrip("\n")


async def test_the_chat_says_so_when_no_server_is_running(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "api-key").write_text("some-key\n")
    code, out, err = await chat(None, "HELP\n", url=f"http://127.0.0.1:{_free_port()}", PARLEY_HOME=str(home))
    assert code == 1 and out == ""
    assert "no Parley server at" in err and "make serve" in err, err


async def test_the_chat_says_so_when_its_key_is_refused(database_url, tmp_path):
    async with serving(database_url, tmp_path / "home") as server:
        code, out, err = await chat(server, "HELP\n", PARLEY_API_KEY="not-the-servers-key")
        assert code == 1 and out == ""
        assert "refused the operator key" in err, err
