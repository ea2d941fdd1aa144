"""`parley serve --processes N`: more webhook processes on the same listening socket.

One Python process runs its event loop on one core. With `--processes N` the first process (the one
started by hand: it owns the embedded database, runs the agents and supervises) starts N-1 more that
serve webhooks and the operator API only. All of them accept from one listening socket, inherited by
the helpers: a busy process simply accepts fewer connections, so the process that also runs the agents
gets fewer webhooks while it works. A helper that dies is started again; all stop with the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from services import appkeys

log = logging.getLogger("parley.processes")

FD_ENV = "PARLEY_LISTEN_FD"  # set in a helper: the inherited listening socket
PARENT_ENV = "PARLEY_SUPERVISOR_PID"  # set in a helper: the first process, which it must not outlive
RESTART_DELAY_S = 1.0


def listening_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The socket every process accepts from (bound before any process starts, so no port race)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(backlog)
    return sock


def inherited_socket() -> socket.socket | None:
    """In a helper: the listening socket its supervisor handed over."""
    fd = os.environ.get(FD_ENV)
    if not fd:
        return None
    return socket.socket(fileno=int(fd))


class Helpers:
    """The N-1 helper processes of `parley serve --processes N`."""

    def __init__(self, count: int, sock: socket.socket, dsn: str) -> None:
        self.count = count
        self.sock = sock
        self.dsn = dsn
        self.procs: list[asyncio.subprocess.Process | None] = [None] * count
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep(i), name=f"helper-{i}") for i in range(self.count)]

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = {**os.environ, FD_ENV: str(self.sock.fileno()), PARENT_ENV: str(os.getpid()), "DATABASE_URL": self.dsn,
               "PARLEY_PROCESSES": "1", "PARLEY_WORKERS": "0",
               "PARLEY_DISPATCHERS": "0"}  # helpers serve webhooks only
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", "serve", env=env,
                                                    pass_fds=(self.sock.fileno(),))

    async def _keep(self, i: int) -> None:
        while not self._stopping:
            proc = self.procs[i] = await self._spawn()
            log.info("webhook process started", extra={"pid": proc.pid})
            code = await proc.wait()
            if self._stopping:
                return
            log.error("webhook process exited; starting another", extra={"pid": proc.pid, "code": code})
            await asyncio.sleep(RESTART_DELAY_S)

    async def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM (each finishes its in-flight webhooks), then SIGKILL after `timeout_s`."""
        self._stopping = True
        live = [p for p in self.procs if p is not None and p.returncode is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), timeout_s)
        except TimeoutError:
            for p in live:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def orphan_watch(check_s: float = 0.5) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx for a helper: shut down gracefully when the first process is gone (killed with
    SIGKILL, say). An orphan would hold the port, so the restarted service could not bind it, and
    with the embedded database it would answer every webhook with an error."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # From the environment, not getppid() now: the first process may already be gone by the time
        # this helper has started up.
        parent = int(os.environ.get(PARENT_ENV) or os.getppid())

        async def watch() -> None:
            while os.getppid() == parent:  # noqa: ASYNC110 - no event tells us our parent died
                await asyncio.sleep(check_s)
            log.error("the first parley process is gone; this webhook process stops", extra={"parent": parent})
            os.kill(os.getpid(), signal.SIGTERM)  # run_app's graceful shutdown: in-flight webhooks finish

        task = asyncio.create_task(watch(), name="orphan-watch")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def supervise(count: int, sock: socket.socket) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx for the first process: helpers start once the database is up, stop before it."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        helpers = Helpers(count, sock, app[appkeys.RUNTIME].dsn)
        await helpers.start()
        try:
            yield
        finally:
            await helpers.stop()

    return ctx
