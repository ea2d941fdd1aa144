"""The `parley` command as users run it: settings errors, migrate, serve on the embedded default."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import support


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "TWILIO_", "WHATSAPP_", "OPENAI_"))}
    env.pop("DATABASE_URL", None)
    env.update({"PARLEY_HOME": str(tmp_path / "home")}, **extra)
    return env


def _parley(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(("extra", "name"), [
    ({"TWILIO_ACCOUNT_SID": "not-a-sid"}, "TWILIO_ACCOUNT_SID"),
    ({"TWILIO_ACCOUNT_SID": support.ACCOUNT_SID}, "TWILIO_AUTH_TOKEN"),
    ({"DATABASE_URL": "mysql://localhost/x"}, "DATABASE_URL"),
    ({"PARLEY_WORKERS": "lots"}, "PARLEY_WORKERS"),
    ({"WHATSAPP_PHONE_NUMBER_ID": "123"}, "WHATSAPP_APP_SECRET"),
])
def test_invalid_setting_stops_start_up_with_one_line_naming_it(tmp_path, extra, name):
    result = _parley("serve", env=_env(tmp_path, **extra))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextlib.contextmanager
def _serving(env: dict[str, str], port: int, logs: list[str], *args: str,
             procs: list[subprocess.Popen[str]] | None = None) -> Iterator[str]:
    """`parley serve` as a user runs it, until SIGTERM; its output is appended to `logs`."""
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if procs is not None:
        procs.append(proc)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get(base + "/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("parley serve did not become ready")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        logs.append(out + err)
    assert proc.returncode == 0, err[-2000:]


def test_serve_on_the_embedded_default_persists_across_restarts_and_keeps_secrets_out_of_logs(tmp_path):
    port = _free_port()
    env = _env(tmp_path, TWILIO_ACCOUNT_SID=support.ACCOUNT_SID, TWILIO_AUTH_TOKEN=support.AUTH_TOKEN,
               PARLEY_API_KEY=support.API_KEY, WHATSAPP_PHONE_NUMBER_ID=support.PHONE_NUMBER_ID,
               WHATSAPP_APP_SECRET=support.APP_SECRET, WHATSAPP_VERIFY_TOKEN=support.VERIFY_TOKEN,
               WHATSAPP_ACCESS_TOKEN=support.ACCESS_TOKEN, PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
               PARLEY_LOG_LEVEL="DEBUG")
    auth = {"Authorization": f"Bearer {support.API_KEY}"}
    logs: list[str] = []
    for round_ in range(2):
        with _serving(env, port, logs) as base:
            body, headers = support.twilio_request(support.sms_pairs("persist me", f"SM{round_:032x}"),
                                                   url=base + "/webhooks/twilio")
            req = urllib.request.Request(base + "/webhooks/twilio", data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
            # The agent worker inside `serve` picks the message up with no network: classified, enriched, logged.
            posted = time.monotonic()
            while time.monotonic() - posted < 30:
                status, data = _get(base + "/api/agent-logs?agent=enrichment", auth)
                if status == 200 and len(json.loads(data)["items"]) == round_ + 1:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the message was never processed by the agents")
            print(f"webhook to decision log: {time.monotonic() - posted:.3f} s")
            # Meta's handshake puts the verify token in the query string: it must not reach a log line.
            _get(base + "/webhooks/whatsapp?hub.mode=subscribe&hub.challenge=1"
                 f"&hub.verify_token={support.VERIFY_TOKEN}")
    # A third start finds both earlier messages: the embedded database persisted across restarts.
    assert (tmp_path / "home" / "pg" / "PG_VERSION").exists()
    with _serving(env, port, logs) as base:
        status, data = _get(base + "/api/conversations?phone=%2B14155550101", auth)
        [conv] = json.loads(data)["items"]
        status, data = _get(base + f"/api/conversations/{conv['id']}/messages", auth)
        assert [m["provider_message_id"] for m in json.loads(data)["items"]] == [f"SM{0:032x}", f"SM{1:032x}"]
    text = "".join(logs)
    assert "inbound stored" in text
    for secret in (support.AUTH_TOKEN, support.API_KEY, support.APP_SECRET, support.VERIFY_TOKEN,
                   support.ACCESS_TOKEN):
        assert secret not in text
    assert "+14155550101" not in text


def test_classify_reads_lines_on_stdin_and_writes_json_lines(tmp_path):
    lines = ["please stop texting me", "I can stop by tomorrow", "", "¿Tienen cita el sábado?", "STOP"]
    result = subprocess.run([sys.executable, "-m", "services.cli", "classify"], env=_env(tmp_path),
                            input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["text"] for o in out] == [t for t in lines if t]
    assert [o["intent"] for o in out] == ["opt_out", out[1]["intent"], "booking", "opt_out"]
    assert out[1]["intent"] != "opt_out"
    assert out[2]["language"] == "es" and out[3]["implementation"] == "rules"
    assert all(set(o) >= {"text", "intent", "confidence", "language", "implementation"} for o in out)
    assert all(0 <= o["confidence"] <= 1 for o in out)


def _helpers(parent: int) -> list[int]:
    """The webhook processes `parley serve --processes N` started (its children running parley)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == parent and b"services.cli" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _wait_for_helpers(parent: int, count: int, not_: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = [p for p in _helpers(parent) if p not in not_]
        if len(pids) == count:
            return pids
        time.sleep(0.1)
    pytest.fail(f"expected {count} webhook helper processes, found {_helpers(parent)}")


def _post_sms(base: str, text: str, sid: str) -> int:
    body, headers = support.twilio_request(support.sms_pairs(text, sid), url=base + "/webhooks/twilio")
    req = urllib.request.Request(base + "/webhooks/twilio", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=20) as resp:
        return int(resp.status)


def test_serve_with_processes_shares_its_port_with_helpers_and_restarts_one_that_dies(tmp_path):
    port = _free_port()
    env = _env(tmp_path, TWILIO_ACCOUNT_SID=support.ACCOUNT_SID, TWILIO_AUTH_TOKEN=support.AUTH_TOKEN,
               PARLEY_API_KEY=support.API_KEY, PUBLIC_BASE_URL=f"http://127.0.0.1:{port}")
    auth = {"Authorization": f"Bearer {support.API_KEY}"}
    logs: list[str] = []
    procs: list[subprocess.Popen[str]] = []
    with _serving(env, port, logs, "--processes", "2", procs=procs) as base:
        parent = procs[0].pid
        [helper] = _wait_for_helpers(parent, 1)
        # With the first process frozen, only the helper can answer: it serves the same port and
        # commits to the same (embedded) database.
        os.kill(parent, signal.SIGSTOP)
        try:
            assert _post_sms(base, "to the helper", "SM" + "a" * 32) == 200
        finally:
            os.kill(parent, signal.SIGCONT)
        os.kill(helper, signal.SIGKILL)
        [replacement] = _wait_for_helpers(parent, 1, not_={helper})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the replacement is up once it answers /readyz frozen-parent
            os.kill(parent, signal.SIGSTOP)
            try:
                status = _get(base + "/readyz")[0]
            except OSError:
                status = 0
            finally:
                os.kill(parent, signal.SIGCONT)
            if status == 200:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the replacement helper never served")
        os.kill(parent, signal.SIGSTOP)
        try:
            assert _post_sms(base, "to the replacement", "SM" + "b" * 32) == 200
        finally:
            os.kill(parent, signal.SIGCONT)
        status, data = _get(base + "/api/conversations?phone=%2B14155550101", auth)
        [conv] = json.loads(data)["items"]
        status, data = _get(base + f"/api/conversations/{conv['id']}/messages", auth)
        assert {m["body"] for m in json.loads(data)["items"]} == {"to the helper", "to the replacement"}
    # SIGTERM to the first process stops its helpers too (and it exits 0: checked by _serving).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{replacement}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{replacement}").exists() or b"Z" in Path(f"/proc/{replacement}/stat").read_bytes()[:64]
    assert "webhook process exited; starting another" in "".join(logs)


def test_a_helper_whose_first_process_is_killed_stops_and_frees_the_port(tmp_path):
    port = _free_port()
    env = _env(tmp_path, TWILIO_ACCOUNT_SID=support.ACCOUNT_SID, TWILIO_AUTH_TOKEN=support.AUTH_TOKEN,
               PARLEY_API_KEY=support.API_KEY, PUBLIC_BASE_URL=f"http://127.0.0.1:{port}", PARLEY_WORKERS="0")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port), "--processes", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Killed right after the helper is spawned, before it has even started up: the race to lose.
        [helper] = _wait_for_helpers(proc.pid, 1)
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{helper}").exists():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(helper, os.WNOHANG)
            time.sleep(0.1)
        assert not Path(f"/proc/{helper}").exists(), "the orphaned helper kept running"
        # Nothing holds the port any more: a new `parley serve` could bind it.
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
        # The embedded server outlived its SIGKILLed owner: stop it (SIGINT: PostgreSQL's fast shutdown).
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((tmp_path / "home" / "pg" / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGINT)
