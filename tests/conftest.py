"""Session-wide real services: one PostgreSQL (pgserver, or PARLEY_TEST_DATABASE_URL) and one Redis.

Migrations are applied once to a template database; every test gets a fresh database cloned from it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from services import runtime as runtime_mod

pytest_plugins = ["tests.fakes.openai_server"]

TEMPLATE = "parley_template"
_counter = itertools.count()


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """A superuser DSN on a real PostgreSQL server, started for this test session."""
    external = os.environ.get("PARLEY_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    data = Path(tempfile.mkdtemp(prefix="parley-test-pg-"))
    server = pgserver.get_server(data, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_admin_dsn: str) -> str:
    """Name of a database holding every migration; tests clone it."""
    prebuilt = os.environ.get("PARLEY_TEST_TEMPLATE")
    if prebuilt:  # `make mutate` migrates one template for its thousands of short test sessions
        return prebuilt

    async def build() -> None:
        await _admin(pg_admin_dsn, f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)", f"CREATE DATABASE {TEMPLATE}")
        await runtime_mod.apply_migrations(_with_database(pg_admin_dsn, TEMPLATE))

    asyncio.run(build())
    return TEMPLATE


async def _admin(admin_dsn: str, *statements: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


@asynccontextmanager
async def cloned_database(admin_dsn: str, template: str, name: str) -> AsyncIterator[str]:
    """A database cloned from the migrated template, dropped on exit; yields its DSN."""
    await _admin(admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
                 f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield _with_database(admin_dsn, name)
    finally:
        await _admin(admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def database_url(pg_admin_dsn: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    async with cloned_database(pg_admin_dsn, pg_template, f"parley_t{os.getpid()}_{next(_counter)}") as dsn:
        yield dsn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port (or PARLEY_TEST_REDIS_URL)."""
    external = os.environ.get("PARLEY_TEST_REDIS_URL")
    if external:
        yield external
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="parley-test-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def make_client(aiohttp_client, database_url: str):  # type: ignore[no-untyped-def]
    """Start the real app (its own pool, migrations check, default tenant) against this test's database."""
    from services import web
    from tests import support

    async def make(**overrides: object):  # type: ignore[no-untyped-def]
        settings = support.make_settings(database_url, **overrides)
        return await aiohttp_client(web.create_app(settings))

    return make


@pytest.fixture
async def client(make_client):  # type: ignore[no-untyped-def]
    return await make_client()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for assertions on what was committed."""
    from db import pool as db_pool

    conn = await db_pool.connect(database_url)
    yield conn
    await conn.close()
