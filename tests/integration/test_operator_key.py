"""The operator key as `parley` reads it: a blank key, from the environment or the file, stops start-up."""

from __future__ import annotations

import pytest

from tests.integration.test_processes import _env, _parley


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize("key", ["", "   ", "\t\n"])
def test_a_blank_parley_api_key_stops_start_up_with_one_line_naming_it(tmp_path, command, key):
    result = _parley(command, env=_env(tmp_path, PARLEY_API_KEY=key))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PARLEY_API_KEY" in lines[0], result.stderr


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize("content", [b"", b"  \n", b"\n\n"])
def test_a_blank_api_key_file_stops_start_up_with_one_line_naming_it(tmp_path, command, content):
    home = tmp_path / "home"
    home.mkdir()
    (home / "api-key").write_bytes(content)
    result = _parley(command, env=_env(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PARLEY_API_KEY" in lines[0] and str(home / "api-key") in lines[0], result.stderr
    # Nothing started: the embedded database was never initialised.
    assert not (home / "pg").exists()
