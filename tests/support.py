"""Shared test values and request signing, done the providers' way."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from multidict import MultiDict
from twilio.request_validator import RequestValidator

from services import settings as settings_mod

TESTDATA = Path(__file__).with_name("testdata")

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
AUTH_TOKEN = "twilio-auth-token-7f3a9c2e5b1d"
APP_SECRET = "meta-app-secret-4b8e2f6a1c9d"
VERIFY_TOKEN = "meta-verify-token-93b1e7"
ACCESS_TOKEN = "meta-access-token-EAAG5d8c1f"
PHONE_NUMBER_ID = "209876543210987"  # the number in tests/testdata/whatsapp_cloud
API_KEY = "operator-api-key-2c7e9a4f"
PUBLIC_BASE = "https://parley.example.com"


def make_settings(database_url: str, **overrides: Any) -> settings_mod.Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "PARLEY_API_KEY": API_KEY,
        "PUBLIC_BASE_URL": PUBLIC_BASE,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
        "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "PARLEY_DB_POOL_SIZE": 4,
    }
    values.update(overrides)
    return settings_mod.Settings(**values)


def twilio_sign(url: str, pairs: list[tuple[str, str]], token: str = AUTH_TOKEN) -> str:
    """X-Twilio-Signature as Twilio computes it, with the twilio package's own validator."""
    return RequestValidator(token).compute_signature(url, MultiDict(pairs))


def twilio_request(pairs: list[tuple[str, str]], path: str = "/webhooks/twilio",
                   url: str | None = None, token: str = AUTH_TOKEN) -> tuple[bytes, dict[str, str]]:
    body = urlencode(pairs).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Twilio-Signature": twilio_sign(url or PUBLIC_BASE + path, pairs, token)}
    return body, headers


def meta_sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def meta_request(payload: dict[str, Any] | bytes, secret: str = APP_SECRET) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return body, {"Content-Type": "application/json", "X-Hub-Signature-256": meta_sign(body, secret)}


def form_pairs(text: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(text.strip(), keep_blank_values=True)


def sms_pairs(body: str, sid: str, from_: str = "+14155550101", to: str = "+14155550100",
              **extra: str) -> list[tuple[str, str]]:
    pairs = [("ToCountry", "US"), ("SmsMessageSid", sid), ("NumMedia", "0"), ("SmsSid", sid),
             ("SmsStatus", "received"), ("Body", body), ("To", to), ("NumSegments", "1"),
             ("MessageSid", sid), ("AccountSid", ACCOUNT_SID), ("From", from_), ("ApiVersion", "2010-04-01")]
    pairs.extend(extra.items())
    return pairs


def whatsapp_text(body: str, wamid: str, wa_id: str = "16505551234", name: str = "Sheena Nelson",
                  phone_number_id: str = PHONE_NUMBER_ID) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": wamid, "timestamp": "1749416383", "type": "text",
                          "text": {"body": body}}],
        }}]}],
    }
