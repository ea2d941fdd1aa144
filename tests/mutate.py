"""`make mutate`: mutmut over the ingest path and the task runtime, against one PostgreSQL and one Redis.

mutmut runs a fresh pytest session per mutant. Left to the fixtures, each session would start its own
PostgreSQL and migrate a template (seconds per mutant, thousands of mutants); here one server, one Redis
and one migrated template are started for the whole run, and the sessions only clone the template
(tests/conftest.py reads PARLEY_TEST_DATABASE_URL, PARLEY_TEST_REDIS_URL and PARLEY_TEST_TEMPLATE).
What is mutated and which tests run are configured under [tool.mutmut] in pyproject.toml.

    python tests/mutate.py [mutmut run arguments...]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "parley_mutation_template"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_database(dsn: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _template(admin_dsn: str) -> None:
    sys.path.insert(0, str(ROOT))
    from services import runtime

    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    await runtime.apply_migrations(_with_database(admin_dsn, TEMPLATE))


def _redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (make redis-server)")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def main(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    workdir = tempfile.mkdtemp(prefix="parley-mutate-")
    server = pgserver.get_server(Path(workdir) / "pg", cleanup_mode="delete")
    redis_proc, redis_url = _redis(workdir)
    try:
        admin_dsn = server.get_uri()
        asyncio.run(_template(admin_dsn))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutants, not this tree
        env.update(PARLEY_TEST_DATABASE_URL=admin_dsn, PARLEY_TEST_REDIS_URL=redis_url, PARLEY_TEST_TEMPLATE=TEMPLATE)
        mutmut = str(Path(sys.executable).with_name("mutmut"))
        code = subprocess.call([mutmut, "run", *argv], cwd=ROOT, env=env)
        subprocess.call([mutmut, "results"], cwd=ROOT, env=env)
        return code
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
