"""The generated operator key: written atomically, once, mode 0600; a blank one is never used."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from services import runtime
from services import settings as settings_mod


def _settings(home: Path, **extra: str) -> settings_mod.Settings:
    return settings_mod.Settings(PARLEY_HOME=str(home), **extra)  # type: ignore[arg-type]


def test_generated_key_is_kept_mode_0600_and_read_back_on_the_next_start(tmp_path):
    key = runtime.operator_api_key(_settings(tmp_path))
    path = tmp_path / "api-key"
    assert len(key) >= 40 and path.read_text() == key + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["api-key"]  # no temporary file left behind
    assert runtime.operator_api_key(_settings(tmp_path)) == key


def test_a_crash_before_the_key_is_durable_leaves_no_key_file(tmp_path, monkeypatch):
    def crash(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(settings_mod.SettingsError, match="PARLEY_API_KEY"):
        runtime.operator_api_key(_settings(tmp_path))
    assert os.listdir(tmp_path) == []  # neither an empty api-key nor the temporary file
    monkeypatch.undo()
    assert runtime.operator_api_key(_settings(tmp_path))


def test_processes_starting_together_agree_on_one_key(tmp_path):
    keys: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        keys.append(runtime.operator_api_key(_settings(tmp_path)))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1 and keys[0]
    assert (tmp_path / "api-key").read_text() == keys[0] + "\n"


@pytest.mark.parametrize("content", [b"", b" \n\t", "\u00e9".encode("latin-1")])
def test_a_blank_or_unreadable_key_file_is_a_settings_error_naming_it(tmp_path, content):
    (tmp_path / "api-key").write_bytes(content)
    with pytest.raises(settings_mod.SettingsError, match="PARLEY_API_KEY") as raised:
        runtime.operator_api_key(_settings(tmp_path))
    assert str(tmp_path / "api-key") in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("value", ["", " ", "\n"])
def test_a_blank_parley_api_key_is_refused_not_read_as_unset(tmp_path, value):
    with pytest.raises(settings_mod.SettingsError, match="PARLEY_API_KEY"):
        settings_mod.load(PARLEY_HOME=str(tmp_path), PARLEY_API_KEY=value)


def test_parley_api_key_is_used_without_its_surrounding_whitespace(tmp_path):
    assert runtime.operator_api_key(_settings(tmp_path, PARLEY_API_KEY=" k3y\n")) == "k3y"
    assert not (tmp_path / "api-key").exists()
