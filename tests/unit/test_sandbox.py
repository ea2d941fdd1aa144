"""When the sandbox is on, the credentials it makes up once, and the settings `parley serve` then runs with."""

from __future__ import annotations

import json
import socket
import stat

import pytest

from services import sandbox
from services import settings as settings_mod
from tests import support

LOCAL = "http://127.0.0.1:8123"


def _settings(tmp_path, **values: object) -> settings_mod.Settings:
    return settings_mod.Settings(PARLEY_HOME=str(tmp_path / "home"), **values)  # type: ignore[arg-type]


TWILIO = {"TWILIO_ACCOUNT_SID": support.ACCOUNT_SID, "TWILIO_AUTH_TOKEN": support.AUTH_TOKEN}
WHATSAPP = {"WHATSAPP_PHONE_NUMBER_ID": support.PHONE_NUMBER_ID, "WHATSAPP_APP_SECRET": support.APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": support.VERIFY_TOKEN}


@pytest.mark.parametrize(("values", "on"), [
    ({}, True),
    (TWILIO, False),
    (WHATSAPP, False),
    ({**TWILIO, **WHATSAPP}, False),
    ({**TWILIO, "PARLEY_SANDBOX": "1"}, True),
    ({"PARLEY_SANDBOX": "0"}, False),
    ({"PARLEY_SANDBOX": ""}, True),  # blank is unset: no credentials, so on
])
def test_the_sandbox_is_on_without_provider_credentials_and_with_them_only_when_asked(tmp_path, values, on):
    settings = _settings(tmp_path, **values)
    assert sandbox.wanted(settings) is on
    assert sandbox.resolve(settings, LOCAL).sandbox is on


def test_credentials_are_generated_once_kept_private_and_read_back_unchanged(tmp_path):
    first = sandbox.load_secrets(tmp_path / "home")
    path = tmp_path / "home" / sandbox.SECRETS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sandbox.load_secrets(tmp_path / "home") == first
    assert json.loads(path.read_text())["twilio_auth_token"] == first.twilio_auth_token
    # Another home, other credentials: two sandboxes never share a Twilio account.
    assert sandbox.load_secrets(tmp_path / "other").twilio_account_sid != first.twilio_account_sid
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("content", [b"", b"{", b'{"twilio_account_sid": "AC1"}', b"\xff\xfe"])
def test_an_unusable_secrets_file_stops_start_up_naming_it_and_is_left_alone(tmp_path, content):
    home = tmp_path / "home"
    home.mkdir()
    path = home / sandbox.SECRETS_FILE
    path.write_bytes(content)
    with pytest.raises(settings_mod.SettingsError) as caught:
        sandbox.resolve(_settings(tmp_path), LOCAL)
    assert str(path) in str(caught.value) and "PARLEY_SANDBOX" in str(caught.value)
    assert path.read_bytes() == content


def test_in_the_sandbox_the_default_tenant_sends_through_the_simulator_with_the_sandbox_credentials(tmp_path):
    resolved = sandbox.resolve(_settings(tmp_path, PARLEY_PROCESSES=3), LOCAL)
    box = sandbox.load_secrets(tmp_path / "home")
    assert resolved.twilio_account_sid == box.twilio_account_sid
    assert resolved.twilio_auth_token is not None
    assert resolved.twilio_auth_token.get_secret_value() == box.twilio_auth_token
    assert resolved.twilio_from_number == box.sms_number
    assert resolved.whatsapp_phone_number_id == box.whatsapp_phone_number_id
    assert str(resolved.twilio_api_base_url).rstrip("/") == LOCAL + sandbox.PREFIX
    assert str(resolved.whatsapp_graph_base_url).rstrip("/") == LOCAL + sandbox.PREFIX
    assert resolved.public_base == LOCAL  # the simulator's webhooks and the StatusCallback come back here
    assert resolved.processes == 1  # the simulator's memory is one process's
    # The settings' own rules still hold for what the sandbox made up.
    settings_mod.Settings(TWILIO_ACCOUNT_SID=box.twilio_account_sid, TWILIO_AUTH_TOKEN=box.twilio_auth_token,
                          TWILIO_FROM_NUMBER=box.sms_number, WHATSAPP_PHONE_NUMBER_ID=box.whatsapp_phone_number_id,
                          WHATSAPP_APP_SECRET="x", WHATSAPP_VERIFY_TOKEN="y")  # type: ignore[call-arg]


def test_sandbox_on_top_of_real_credentials_replaces_every_one_of_them(tmp_path):
    real = _settings(tmp_path, PARLEY_SANDBOX="1", TWILIO_API_KEY_SID="SK" + "0" * 32, TWILIO_API_KEY_SECRET="s" * 20,
                     TWILIO_MESSAGING_SERVICE_SID="MG" + "0" * 32, PUBLIC_BASE_URL=support.PUBLIC_BASE,
                     **TWILIO, **WHATSAPP)
    resolved = sandbox.resolve(real, LOCAL)
    assert resolved.twilio_account_sid != support.ACCOUNT_SID
    assert resolved.whatsapp_phone_number_id != support.PHONE_NUMBER_ID
    assert resolved.twilio_api_key_sid is None and resolved.twilio_messaging_service_sid is None
    assert "api.twilio.com" not in str(resolved.twilio_api_base_url)
    assert resolved.public_base == support.PUBLIC_BASE  # a proxy of the operator's own stays


def test_a_server_off_the_sandbox_keeps_its_settings_as_they_are(tmp_path):
    real = _settings(tmp_path, **TWILIO)
    resolved = sandbox.resolve(real, LOCAL)
    assert resolved.model_dump(exclude={"sandbox"}) == real.model_dump(exclude={"sandbox"})
    assert not (tmp_path / "home" / sandbox.SECRETS_FILE).exists()


@pytest.mark.parametrize(("path", "provider"), [
    ("/sandbox/2010-04-01/Accounts/AC1/Messages.json", True),
    ("/sandbox/v23.0/123456/messages", True),
    ("/sandbox/v9/123456/messages", True),
    ("/sandbox/sim/messages", False),
    ("/sandbox/sim/inbound", False),
    ("/sandbox/info", False),
    ("/sandbox/pending", False),
    ("/sandbox/vx/123", False),
    ("/sandbox/", False),
])
def test_only_the_providers_own_apis_skip_the_operator_key(path, provider):
    assert sandbox._provider_path(path) is provider


def test_the_local_url_reaches_a_wildcard_bind_through_loopback():
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        port = sock.getsockname()[1]
        assert sandbox.local_url(sock) == f"http://127.0.0.1:{port}"
