"""`parley chat`: a terminal conversation with a sandbox `parley serve` (services/sandbox.py).

Each line read goes in as a signed inbound message from `--phone`, through the simulator's
`POST /sandbox/sim/inbound` (the simulator signs it as the provider would, and posts it to Parley's own
webhook); each message Parley sends to that phone is printed as the simulator accepts it, read with
the long-poll `GET /sandbox/sim/messages?to=`.

Typed at a terminal, lines go in as they are typed and replies are printed as they arrive. Piped in,
the chat keeps the pace of a person who reads the answer before writing again: after each line it
waits until Parley has nothing left to do for that phone soon (`GET /sandbox/pending`: no agent task,
no send due), then prints what was sent and goes on. So a script's transcript is the same on every run
(a HELP answered before the STOP that follows it, not suppressed by it), and it ends when the last
reply is out, not after a guessed delay. At the end of input it waits the same way, at most `wait_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import aiohttp

from services import phone
from services.settings import Settings

# A long-poll answers when a message arrives or after this long; the request's own timeout is longer.
POLL_WAIT_S: Final = 20
SETTLE_CHECK_S: Final = 0.2


class ChatError(Exception):
    """Why the chat cannot start or go on, in one line for the terminal."""


@dataclass(frozen=True, slots=True)
class Options:
    url: str
    phone: str  # E.164
    whatsapp: bool
    api_key: str | ChatError  # why there is none, said once the server is known to be there
    wait_s: float  # at most this long for the replies to each line (piped) and at the end


def api_key(settings: Settings) -> str:
    """The operator key, as the server has it: PARLEY_API_KEY, else $PARLEY_HOME/api-key. Never made
    up here: a key the server does not know would only be refused."""
    if settings.parley_api_key is not None:
        return settings.parley_api_key.get_secret_value()
    path = Path(settings.parley_home) / "api-key"
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ChatError(f"no operator key: {path} does not exist (start `parley serve` with the same "
                        "PARLEY_HOME, or set PARLEY_API_KEY)") from None
    except (OSError, UnicodeError) as exc:
        raise ChatError(f"cannot read the operator key from {path}: {exc}") from None
    if not key:
        raise ChatError(f"{path} is empty; set PARLEY_API_KEY or restart `parley serve` to have one generated")
    return key


def e164(raw: str) -> str:
    number = phone.to_e164(raw)
    if number is None:
        raise ChatError(f"--phone {raw!r} is not a phone number in E.164 form (e.g. +15551230000)")
    return number


class Chat:
    def __init__(self, session: aiohttp.ClientSession, options: Options, out: IO[str]) -> None:
        self._session = session
        self._options = options
        self._out = out
        self._base = options.url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {options.api_key}"} if isinstance(options.api_key, str) else {}
        self._seen = 0  # the simulator's sequence number of the last message printed
        self._business: str = ""  # the sandbox number (or WhatsApp phone_number_id) written to

    @property
    def phone(self) -> str:
        return self._options.phone

    @property
    def business(self) -> str:
        """The sandbox number (or WhatsApp phone_number_id) the chat writes to."""
        return self._business

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        url = self._base + path
        try:
            async with self._session.request(method, url, headers=self._auth, **kwargs) as resp:
                if resp.status == 401:
                    raise ChatError(f"the server at {self._options.url} refused the operator key: the chat "
                                    "reads PARLEY_API_KEY or $PARLEY_HOME/api-key, as `parley serve` does")
                if resp.status == 503 and path == "/sandbox/sim/messages":
                    raise ChatError(f"the server at {self._options.url} is shutting down")
                if resp.status == 404 and path.startswith("/sandbox"):
                    raise ChatError(f"the server at {self._options.url} is not in sandbox mode")
                if resp.status >= 400:
                    raise ChatError(f"{method} {path} answered {resp.status}: {(await resp.text())[:300]}")
                return await resp.json()
        except aiohttp.ClientConnectorError:
            raise ChatError(f"no Parley server at {self._options.url}: start one with `make serve` "
                            "(or `parley serve`), or pass --url") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ChatError(f"{method} {url} failed: {type(exc).__name__} {exc}") from None

    async def start(self) -> None:
        """Check that a sandbox server is there, find the number to write to, skip what it sent before."""
        try:
            async with self._session.get(self._base + "/readyz") as resp:
                ready = await resp.json(content_type=None)
        except aiohttp.ClientConnectorError:
            raise ChatError(f"no Parley server at {self._options.url}: start one with `make serve` "
                            "(or `parley serve`), or pass --url") from None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ChatError(f"{self._options.url} does not answer like Parley: {type(exc).__name__}") from None
        if not isinstance(ready, dict) or ready.get("sandbox") is not True:
            raise ChatError(f"the server at {self._options.url} is not in sandbox mode: it sends to real "
                            "phones. Start it without TWILIO_ACCOUNT_SID and WHATSAPP_PHONE_NUMBER_ID, "
                            "or with PARLEY_SANDBOX=1")
        if isinstance(self._options.api_key, ChatError):
            raise self._options.api_key
        info = await self._json("GET", "/sandbox/info")
        self._business = info["whatsapp_phone_number_id" if self._options.whatsapp else "sms_number"]
        self._seen = await self._latest()

    async def _latest(self) -> int:
        batch = await self._json("GET", "/sandbox/sim/messages", params={"to": self._options.phone, "wait": "0"})
        return max([self._seen, *(int(m["seq"]) for m in _messages(batch))])

    async def say(self, text: str) -> None:
        """One line in, as the phone's message to the sandbox number, signed by the simulator."""
        channel = "whatsapp" if self._options.whatsapp else "sms"
        await self._json("POST", "/sandbox/sim/inbound",
                         json={"channel": channel, "from": self._options.phone, "to": self._business, "body": text})

    async def fetch(self, wait_s: float) -> None:
        """Print what Parley sent the phone since the last message printed, waiting up to `wait_s`."""
        batch = await self._json("GET", "/sandbox/sim/messages",
                                 params={"to": self._options.phone, "after": str(self._seen), "wait": f"{wait_s:g}"},
                                 timeout=aiohttp.ClientTimeout(total=wait_s + 30))
        for message in _messages(batch):
            seq = int(message["seq"])
            if seq <= self._seen:
                continue  # the follower and a drain both fetched it
            self._seen = seq
            self._print(message)

    def _print(self, message: dict[str, Any]) -> None:
        body = message.get("body")
        template = message.get("template")
        if not body and isinstance(template, dict):
            # Meta's {"name": ...} or Twilio's {"content_sid": ...}: the rendered text is the provider's.
            body = f"[template {template.get('name') or template.get('content_sid')}]"
        lines = str(body or "").splitlines() or [""]
        self._out.write("< " + "\n  ".join(lines) + "\n")
        self._out.flush()

    async def follow(self) -> None:
        """Print each message as it arrives, until cancelled."""
        while True:
            await self.fetch(POLL_WAIT_S)

    async def settle(self, timeout_s: float) -> bool:
        """Wait until Parley owes the phone nothing soon (no agent task, no send due), at most `timeout_s`;
        then print what it sent. False when it still had something to do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        settled = False
        while True:
            state = await self._json("GET", "/sandbox/pending", params={"phone": self._options.phone})
            if not state["pending"]:
                settled = True
                break
            if loop.time() >= deadline:
                break
            await asyncio.sleep(SETTLE_CHECK_S)
        await self.fetch(0)
        return settled


def _messages(batch: Any) -> list[dict[str, Any]]:
    items = batch.get("messages", []) if isinstance(batch, dict) else batch
    return [m for m in items if isinstance(m, dict)]


def _lines(stream: IO[str]) -> tuple[asyncio.Queue[str | None], threading.Thread]:
    """stdin's lines on a queue (None at the end), read by a daemon thread: a blocking read that works
    for a terminal, a pipe and a file alike, and that never holds up the exit on Ctrl-C."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        try:
            for line in stream:
                loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\r\n"))
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed first: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, None)

    thread = threading.Thread(target=read, name="chat-stdin", daemon=True)
    thread.start()
    return queue, thread


async def run(options: Options, stdin: IO[str], out: IO[str], err: IO[str],
              interactive: bool | None = None) -> int:
    """The conversation; the exit status (0 at the end of input, 1 when the chat cannot go on)."""
    if interactive is None:
        interactive = stdin.isatty()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        chat = Chat(session, options, out)
        try:
            await chat.start()
        except ChatError as exc:
            err.write(f"parley chat: {exc}\n")
            return 1
        via = "WhatsApp" if options.whatsapp else "SMS"
        # On stderr, piped or not: a script's stdout is the conversation alone, and a script (a test) that
        # reads this line knows that every message sent from now on will be printed.
        err.write(f"parley chat: {options.phone} writing to the sandbox's {via} number {chat.business}"
                  + (". Type a message and Enter; Ctrl-D to end.\n" if interactive else "\n"))
        err.flush()
        lines, _ = _lines(stdin)
        follower = asyncio.create_task(chat.follow(), name="chat-follow")
        try:
            return await _converse(chat, lines, out, err, interactive, options.wait_s, follower)
        except ChatError as exc:
            err.write(f"parley chat: {exc}\n")
            return 1
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, ChatError):
                await follower


async def _converse(chat: Chat, lines: asyncio.Queue[str | None], out: IO[str], err: IO[str],
                    interactive: bool, wait_s: float, follower: asyncio.Task[None]) -> int:
    async def next_line() -> str | None:
        # The follower's failure (the server went away) ends the chat instead of waiting on stdin.
        getter = asyncio.ensure_future(lines.get())
        done, _ = await asyncio.wait({getter, follower}, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            follower.result()  # raises the ChatError
            raise ChatError("stopped following the conversation")
        return getter.result()

    async def settle() -> None:
        if not await chat.settle(wait_s):
            err.write(f"parley chat: Parley was still working on {chat.phone} after {wait_s:g} s "
                      "(are its agents and a dispatcher running? PARLEY_WORKERS, PARLEY_DISPATCHERS)\n")

    owed = False  # a line went in that has not been waited for
    while (line := await next_line()) is not None:
        if not line.strip():
            continue
        if not interactive:
            out.write(f"> {line}\n")
            out.flush()
        await chat.say(line)
        owed = True
        if not interactive:
            await settle()
            owed = False
    if owed:
        await settle()
    return 0


def main(settings: Settings, *, url: str, phone_number: str, whatsapp: bool, wait_s: float) -> int:
    key: str | ChatError
    try:
        key = api_key(settings)
    except ChatError as exc:
        key = exc
    try:
        options = Options(url=url, phone=e164(phone_number), whatsapp=whatsapp, api_key=key, wait_s=wait_s)
    except ChatError as exc:
        print(f"parley chat: {exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(run(options, sys.stdin, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        return 130
