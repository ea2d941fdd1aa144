"""Settings that end up in rows are refused at start-up, in one line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services import settings as settings_mod


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("PARLEY_HELP_TEXT", "x" * 1601, "at most 1600 characters (it is 1601)"),
    ("PARLEY_HELP_TEXT", "", "must not be empty"),
    ("PARLEY_HELP_TEXT", "   ", "must not be empty"),
    ("PARLEY_HELP_TEXT", "Reply STOP\x00", "NUL"),
    ("PARLEY_TENANT_NAME", "", "must not be empty"),
    ("PARLEY_TENANT_NAME", "Acme\x00", "NUL"),
    ("OPENAI_MODEL", " ", "must not be empty"),
    ("PARLEY_TASK_LEASE_S", "1e300", "less than or equal to 86400"),
    ("PARLEY_RETENTION_DAYS", "-1", "greater than or equal to 0"),
    ("PARLEY_RETENTION_INTERVAL_S", "0", "greater than 0"),
])
def test_a_setting_the_database_would_refuse_stops_start_up_naming_it(name, value, problem):
    with pytest.raises(settings_mod.SettingsError) as raised:
        settings_mod.load(**{name: value})
    message = str(raised.value)
    assert message.startswith(f"invalid setting {name}: ") and problem in message, message
    assert "\n" not in message and "Value error" not in message


@pytest.mark.parametrize("value", ["h", "é" * 1600])
def test_help_text_of_one_to_1600_characters_is_accepted(value):
    assert settings_mod.load(PARLEY_HELP_TEXT=value).help_text == value


def test_retention_defaults_to_thirty_days_hourly():
    s = settings_mod.load()
    assert (s.retention_days, s.retention_interval_s) == (30, 3600.0)


def test_the_command_prints_one_line_naming_the_setting(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "TWILIO_", "WHATSAPP_", "OPENAI_"))}
    env.update(PARLEY_HOME=str(tmp_path), PARLEY_HELP_TEXT="x" * 2000)
    result = subprocess.run([sys.executable, "-m", "services.cli", "worker"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "parley: invalid setting PARLEY_HELP_TEXT: must be at most 1600 characters (it is 2000)"]
