"""Twilio webhooks acknowledged while the database is out of reach, kept on local disk until it is back.

Twilio does not redeliver a messaging webhook that failed (unless a fallback URL is configured), so a
503 while PostgreSQL restarts would lose the SMS. A webhook whose signature checked out is instead
appended to this process's spool file under $PARLEY_HOME/spool, fsync'd, and only then answered 200.
A background task replays the spool through the normal ingest path as soon as the database answers
again; a replayed message that was in fact committed (the connection dropped during COMMIT, say)
collapses onto the stored one through (provider, provider_message_id).

Order: while anything is waiting in the spool, new Twilio webhooks join the end of it instead of
going to the database, and the replay never has two messages of one sender in flight at once, so a
sender's messages are stored in the order they arrived.

Files: one per process, named `<pid>-<random>.jsonl`, held under an exclusive flock(2) for the
process's life. The kernel drops the lock when the process dies, so a file nobody can lock belongs to
a live process, and a file we can lock is a dead process's leftover: it is adopted (start-up, then
every ORPHAN_SCAN_S) and replayed before anything newer. A line that cannot be stored (the database
refuses it, not just out of reach) is moved to spool/rejected/ for an operator, never retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pydantic

from db import errors as db_errors
from services.channels.base import InboundMessage
from services.inbound import batcher
from services.inbound.directory import Channel

log = logging.getLogger("parley.inbound.spool")

# Entries replayed at once (each of a different sender); the batcher group-commits them.
REPLAY_CHUNK = 64
# While the database is away the replay retries with a backoff that stays short, so the spool drains
# within about RETRY_MAX_S of the database coming back.
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
ORPHAN_SCAN_S = 30.0
_READ_BYTES = 1 << 20

Replay = Callable[[Channel, InboundMessage], Awaitable[object]]


class Full(db_errors.Unavailable):
    """The spool holds PARLEY_SPOOL_MAX_BYTES already: the webhook is answered 503."""


@dataclass(frozen=True, slots=True)
class Entry:
    channel: Channel
    msg: InboundMessage


_ENTRY = pydantic.TypeAdapter(Entry)


def encode(channel: Channel, msg: InboundMessage) -> bytes:
    """One spool line. The channel's credentials are left out: ingest does not need them, and secrets
    have no business on disk beside message bodies."""
    return _ENTRY.dump_json(Entry(dataclasses.replace(channel, credentials={}), msg)) + b"\n"


def decode(line: bytes) -> Entry:
    return _ENTRY.validate_json(line)


def _sender_key(entry: Entry) -> tuple[object, ...]:
    s = entry.msg.sender
    return (entry.channel.tenant_id, s.phone, s.wa_user_id, s.username)


@dataclass(eq=False)
class _File:
    path: Path
    fd: int
    size: int  # bytes written (ours) or found (an orphan)
    offset: int = 0  # bytes replayed
    synced: int = 0
    sync_task: asyncio.Future[None] | None = None
    own: bool = False

    def close(self, *, unlink: bool) -> None:
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)  # releases the flock


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._files: deque[_File] = deque()  # oldest first; ours, when it exists, is last
        self._own: _File | None = None
        self._wake = asyncio.Event()
        self._syncing = 0  # appends waiting for their fsync: our file may not be removed meanwhile
        self.replayed = 0  # entries stored by the replay, for tests
        self.rejected = 0

    @property
    def pending(self) -> bool:
        """Whether anything is waiting to be replayed: new Twilio webhooks then queue behind it."""
        return bool(self._files)

    @property
    def waiting_bytes(self) -> int:
        return sum(f.size - f.offset for f in self._files)

    # -- appending ---------------------------------------------------------------------------------

    async def append(self, channel: Channel, msg: InboundMessage) -> None:
        """Keep one message durably; returns once it is on disk. Raises Full, or OSError."""
        line = encode(channel, msg)
        if self.waiting_bytes + len(line) > self.max_bytes:
            raise Full("spool full")
        f = self._own or self._open_own()
        # One write of a whole line from the event loop's thread: lines never interleave or tear
        # (short of a crash, which the reader tolerates), and the file's order is arrival order.
        if os.write(f.fd, line) != len(line):  # a full disk: take the partial line back
            os.ftruncate(f.fd, f.size)
            raise OSError("short write to the spool")
        f.size += len(line)
        self._wake.set()
        self._syncing += 1
        try:
            await self._sync(f, f.size)
        finally:
            self._syncing -= 1

    def _open_own(self) -> _File:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        # Created and locked under a name orphan scans ignore, then renamed: another process never
        # sees our file unlocked.
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = self.directory / f"{name}.jsonl"
        os.rename(tmp, path)
        f = self._own = _File(path, fd, 0, own=True)
        self._files.append(f)
        log.warning("spooling inbound webhooks to disk", extra={"path": str(path)})
        return f

    async def _sync(self, f: _File, upto: int) -> None:
        """fsync up to `upto` bytes, sharing one fsync among every append that waits meanwhile."""
        while f.synced < upto:
            if f.sync_task is None:
                f.sync_task = asyncio.ensure_future(self._fsync(f))
            await asyncio.shield(f.sync_task)

    @staticmethod
    async def _fsync(f: _File) -> None:
        target = f.size
        try:
            await asyncio.to_thread(os.fsync, f.fd)
        finally:
            f.sync_task = None
        f.synced = max(f.synced, target)

    # -- dead processes' files ---------------------------------------------------------------------

    def adopt_orphans(self) -> int:
        """Take over the spool files of processes that died; returns how many. They go before our own
        file: everything in them is older than what we spool from now on."""
        if not self.directory.is_dir():
            return 0
        known = {f.path for f in self._files}
        orphans: list[_File] = []
        for path in sorted(self.directory.glob("*.jsonl")):
            if path in known:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Replayed and removed by another process between our open and our lock: what we
                # hold is a deleted file.
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise FileNotFoundError(path)
            except (BlockingIOError, FileNotFoundError):  # a live process's file, or gone
                os.close(fd)
                continue
            orphans.append(_File(path, fd, os.fstat(fd).st_size))
        if orphans:
            own = [self._own] if self._own is not None else []
            self._files = deque([*(f for f in self._files if not f.own), *orphans, *own])
            self._wake.set()
            log.warning("replaying spool files left by stopped processes",
                        extra={"files": [str(f.path) for f in orphans],
                               "bytes": sum(f.size for f in orphans)})
        return len(orphans)

    # -- replaying ---------------------------------------------------------------------------------

    async def run(self, replay: Replay) -> None:
        """Replay what is spooled, oldest first, for as long as the process lives (cancel to stop)."""
        delay = RETRY_MIN_S
        probe = False  # after a failure, try one entry before a whole chunk
        while True:
            if not self._files:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), ORPHAN_SCAN_S)
                except TimeoutError:
                    self.adopt_orphans()
                continue
            f = self._files[0]
            try:
                chunk = self._read_chunk(f, 1 if probe else REPLAY_CHUNK)
                if chunk is None:  # the file is replayed to its end
                    if not self._retire(f):
                        await asyncio.sleep(0.01)  # an append is still waiting for its fsync
                    continue
                done = await self._replay_chunk(f, chunk, replay)
            except Exception:  # noqa: BLE001 - a disk error: the replay must outlive it, or nothing drains
                log.exception("spool replay failed", extra={"path": str(f.path)})
                done = False
            if done:
                delay, probe = RETRY_MIN_S, False
            else:
                await asyncio.sleep(delay)
                delay, probe = min(RETRY_MAX_S, delay * 2), True

    def _read_chunk(self, f: _File, limit: int) -> list[tuple[int, Entry | None, bytes]] | None:
        """Up to `limit` entries from the file's replay offset, no two from one sender, each with the
        offset just past it. Entry None: a line that does not decode. None: nothing left."""
        remaining = f.size - f.offset
        if remaining <= 0:
            return None
        data = os.pread(f.fd, min(_READ_BYTES, remaining), f.offset)
        if b"\n" not in data and len(data) < remaining:  # one line longer than a read: read it whole
            data = os.pread(f.fd, remaining, f.offset)
        chunk: list[tuple[int, Entry | None, bytes]] = []
        senders: set[tuple[object, ...]] = set()
        start = 0
        while len(chunk) < limit:
            end = data.find(b"\n", start)
            if end < 0:
                if not chunk and not f.own:
                    # A dead process's last line, torn by the crash: its webhook was never answered.
                    log.warning("skipping a torn line at the end of a spool file", extra={"path": str(f.path)})
                    f.offset = f.size
                break
            line = data[start:end]
            try:
                entry: Entry | None = decode(line)
            except pydantic.ValidationError:
                entry = None
            if entry is not None:
                key = _sender_key(entry)
                if key in senders:
                    break
                senders.add(key)
            chunk.append((f.offset + end + 1, entry, line))
            start = end + 1
        return chunk or None

    async def _replay_chunk(self, f: _File, chunk: list[tuple[int, Entry | None, bytes]],
                            replay: Replay) -> bool:
        """Replay a chunk; advance the file's offset past the entries settled from its start. False
        when the database (or ingest) could not take them: retry later."""
        async def one(entry: Entry | None) -> BaseException | None:
            if entry is None:
                return ValueError("undecodable spool line")
            try:
                await replay(entry.channel, entry.msg)
            except Exception as exc:  # noqa: BLE001 - classified below
                return exc
            return None

        outcomes = await asyncio.gather(*(one(entry) for _, entry, _ in chunk))
        for (end, entry, line), exc in zip(chunk, outcomes, strict=True):
            if exc is not None and (db_errors.unavailable(exc) or isinstance(exc, batcher.Overloaded)):
                # Later entries that did go in are replayed again next time and collapse as duplicates.
                return False
            if exc is None:
                self.replayed += 1
            else:
                self._reject(line, entry, exc)
            f.offset = end
        return True

    def _reject(self, line: bytes, entry: Entry | None, exc: BaseException) -> None:
        self.rejected += 1
        directory = self.directory / "rejected"
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / f"{os.getpid()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        log.error("spooled message refused by the database; kept for an operator", extra={
            "path": str(path), "error": type(exc).__name__,
            "provider_message_id": entry.msg.provider_message_id if entry else None,
            "tenant_id": entry.channel.tenant_id if entry else None})

    def _retire(self, f: _File) -> bool:
        """Remove a file replayed to its end. Ours only once no append awaits its fsync (it would
        fsync a closed descriptor); the next append starts a new file."""
        if f.own:
            if self._syncing or f.offset < f.size:
                return False
            self._own = None
        self._files.popleft()
        f.close(unlink=True)
        log.info("spool file replayed", extra={"path": str(f.path), "replayed": self.replayed})
        return True

    def close(self) -> None:
        """Let go of every file (and its lock); what was not replayed waits for the next start-up."""
        while self._files:
            self._files.popleft().close(unlink=False)
        self._own = None
