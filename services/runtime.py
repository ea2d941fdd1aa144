"""Runtime: settings + database pool (+ embedded Postgres) + Redis, opened and closed together."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from db import embedded, migrate, notify
from db import pool as db_pool
from services import tenants
from services.settings import Settings, SettingsError

log = logging.getLogger("parley.runtime")


@dataclass
class Runtime:
    settings: Settings
    dsn: str
    pool: asyncpg.Pool
    redis: aioredis.Redis | None
    api_key: str
    default_tenant_id: int


def operator_api_key(settings: Settings) -> str:
    """PARLEY_API_KEY, or a key generated once and kept (mode 0600) in $PARLEY_HOME/api-key.

    SettingsError, one line naming PARLEY_API_KEY and the file, when the file holds no usable key
    (blank, unreadable) or cannot be written: start-up stops rather than run an API anyone can open."""
    if settings.parley_api_key is not None:
        return settings.parley_api_key.get_secret_value()
    path = Path(settings.parley_home) / "api-key"
    try:
        if not path.exists():
            _generate(path)
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError) as exc:
        raise SettingsError(f"invalid setting PARLEY_API_KEY: {path} cannot be used ({exc})") from None
    if not key:
        raise SettingsError(f"invalid setting PARLEY_API_KEY: {path} is empty; delete it to have a key "
                            "generated, or set PARLEY_API_KEY")
    return key


def _generate(path: Path) -> None:
    if write_once(path, secrets.token_urlsafe(32) + "\n"):
        log.warning("PARLEY_API_KEY is not set: generated an operator API key", extra={"path": str(path)})


def write_once(path: Path, text: str) -> bool:
    """Write `text` (mode 0600) to `path` unless another process gets there first; True if this one did.

    The text is written whole under a temporary name and fsync'd before it takes the real name, so a
    crash leaves either no file (and the next start generates one) or the whole text, never the empty
    file that used to let `Authorization: Bearer` with no token in. It takes the name by link(), a
    rename that fails when the name exists: two processes starting at once keep the first file, where
    a rename would replace it under the process already using it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False  # another process won: its file is the file
        except OSError:
            os.replace(temporary, path)  # a file system without hard links
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the new name itself survives a crash
        finally:
            os.close(directory)
        return True
    finally:
        temporary.unlink(missing_ok=True)


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """The database's DSN: DATABASE_URL, or the embedded server, started here and stopped on exit."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    server = embedded.EmbeddedPostgres(Path(settings.parley_home) / "pg")
    dsn = await asyncio.to_thread(server.start)
    try:
        yield dsn
    finally:
        await asyncio.to_thread(server.stop)


async def apply_migrations(dsn: str) -> list[str]:
    conn = await db_pool.connect(dsn)
    try:
        return await migrate.apply(conn)
    finally:
        await conn.close()


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Open every shared resource (migrating the database first); close them in reverse order."""
    async with database(settings) as dsn:
        await apply_migrations(dsn)
        pool = await db_pool.create(dsn, settings.db_pool_size, settings.db_acquire_timeout_s)
        redis_client = None
        try:
            if settings.redis_url:
                redis_client = aioredis.from_url(settings.redis_url, socket_timeout=2,
                                                 socket_connect_timeout=2)
            tenant_id = await tenants.bootstrap_default(pool, settings)
            yield Runtime(settings, dsn, pool, redis_client, operator_api_key(settings), tenant_id)
        finally:
            if redis_client is not None:
                await redis_client.aclose()
            await notify.close(pool)
            await pool.close()
