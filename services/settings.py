"""One settings model, read once in main() and passed explicitly. Names are part of the public contract."""

from __future__ import annotations

import functools
from decimal import Decimal
from pathlib import Path
from typing import Annotated

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelPrice(BaseModel):
    """USD per million tokens."""

    input: Decimal
    output: Decimal


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(input=Decimal("0.15"), output=Decimal("0.60")),
    "gpt-4o": ModelPrice(input=Decimal("2.50"), output=Decimal("10.00")),
    "gpt-4.1-mini": ModelPrice(input=Decimal("0.40"), output=Decimal("1.60")),
    "gpt-4.1-nano": ModelPrice(input=Decimal("0.10"), output=Decimal("0.40")),
}


HELP_TEXT_MAX = 1600  # message_queue.body's CHECK


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str | None = Field(None, alias="DATABASE_URL")
    redis_url: str | None = Field(None, alias="REDIS_URL")
    parley_home: Path = Field(Path("./.parley"), alias="PARLEY_HOME")
    parley_api_key: SecretStr | None = Field(None, alias="PARLEY_API_KEY")
    public_base_url: AnyHttpUrl | None = Field(None, alias="PUBLIC_BASE_URL")
    trust_proxy: bool = Field(False, alias="TRUST_PROXY")
    # Proxies of ours in front of the service: the X-Forwarded-* entry this far from the right is the
    # one the outermost of them appended (services/inbound/public_url.py).
    trust_proxy_hops: Annotated[int, Field(ge=1, le=16)] = Field(1, alias="TRUST_PROXY_HOPS")

    twilio_account_sid: str | None = Field(None, alias="TWILIO_ACCOUNT_SID", pattern=r"^AC[0-9a-fA-F]{32}$")
    twilio_auth_token: SecretStr | None = Field(None, alias="TWILIO_AUTH_TOKEN")
    whatsapp_app_secret: SecretStr | None = Field(None, alias="WHATSAPP_APP_SECRET")
    whatsapp_verify_token: SecretStr | None = Field(None, alias="WHATSAPP_VERIFY_TOKEN")
    whatsapp_access_token: SecretStr | None = Field(None, alias="WHATSAPP_ACCESS_TOKEN")
    whatsapp_phone_number_id: str | None = Field(None, alias="WHATSAPP_PHONE_NUMBER_ID", pattern=r"^[0-9]+$")

    openai_api_key: SecretStr | None = Field(None, alias="OPENAI_API_KEY")
    openai_base_url: AnyHttpUrl | None = Field(None, alias="OPENAI_BASE_URL")
    openai_model: str = Field("gpt-4o-mini", alias="OPENAI_MODEL")
    openai_timeout_s: Annotated[float, Field(gt=0)] = Field(10.0, alias="OPENAI_TIMEOUT_S")
    openai_max_retries: Annotated[int, Field(ge=0, le=10)] = Field(2, alias="OPENAI_MAX_RETRIES")
    # USD per million tokens, by model; JSON in the environment.
    openai_prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES),
                                                 alias="OPENAI_PRICES")

    tenant_name: str = Field("Default", alias="PARLEY_TENANT_NAME")
    help_text: str = Field(
        "Reply STOP to unsubscribe, START to resubscribe. Msg&data rates may apply.",
        alias="PARLEY_HELP_TEXT",
    )
    log_level: str = Field("INFO", alias="PARLEY_LOG_LEVEL", pattern=r"^(?i)(DEBUG|INFO|WARNING|ERROR)$")
    max_body_bytes: Annotated[int, Field(gt=0)] = Field(1024 * 1024, alias="PARLEY_MAX_BODY_BYTES")
    db_pool_size: Annotated[int, Field(ge=2, le=200)] = Field(10, alias="PARLEY_DB_POOL_SIZE")
    # How long a request waits for a database connection before answering 503 (or spooling).
    db_acquire_timeout_s: Annotated[float, Field(gt=0, le=60)] = Field(3.0, alias="PARLEY_DB_ACQUIRE_TIMEOUT_S")
    # Twilio webhooks kept on disk while the database is unreachable (services/inbound/spool.py).
    spool_max_bytes: Annotated[int, Field(ge=0)] = Field(256 * 1024 * 1024, alias="PARLEY_SPOOL_MAX_BYTES")
    # Connections of each webhook process that group-commit inbound messages (taken from the pool).
    # Group-commit lanes (services/inbound/batcher.py). One makes the biggest batches: every statement,
    # commit and WAL flush is shared by all the messages that arrived while the previous batch was
    # being written; two measured 2-5% slower on 2 cores (README, Performance).
    ingest_writers: Annotated[int, Field(ge=1, le=64)] = Field(1, alias="PARLEY_INGEST_WRITERS")
    # Messages one lane may hold waiting for the database; beyond it webhooks are refused (503) rather
    # than held in memory. A healthy lane holds a few to a few dozen (one per webhook in flight).
    ingest_queue_max: Annotated[int, Field(ge=1, le=1_000_000)] = Field(1000, alias="PARLEY_INGEST_QUEUE_MAX")
    # Webhook processes of `parley serve` on its one port; the first also runs the agents.
    processes: Annotated[int, Field(ge=1, le=64)] = Field(1, alias="PARLEY_PROCESSES")
    workers: Annotated[int, Field(ge=0, le=64)] = Field(1, alias="PARLEY_WORKERS")
    worker_concurrency: Annotated[int, Field(ge=1, le=256)] = Field(8, alias="PARLEY_WORKER_CONCURRENCY")
    # Inside `parley serve` the agents share the event loop with the webhooks: fewer, smaller batches
    # keep acknowledgements fast; the backlog of a burst is worked off after it.
    serve_worker_concurrency: Annotated[int, Field(ge=1, le=256)] = Field(1, alias="PARLEY_SERVE_WORKER_CONCURRENCY")
    # How long a batch of those agents waits, at most, while webhooks saturate the process.
    serve_agent_max_wait_s: Annotated[float, Field(ge=0, le=60)] = Field(2.0, alias="PARLEY_SERVE_AGENT_MAX_WAIT_S")
    # Bounded: the lease is stored as a timestamp, and one out of its range would fail every claim.
    task_lease_s: Annotated[float, Field(gt=0, le=86400)] = Field(60.0, alias="PARLEY_TASK_LEASE_S")
    task_max_attempts: Annotated[int, Field(ge=1, le=50)] = Field(5, alias="PARLEY_TASK_MAX_ATTEMPTS")
    poll_interval_s: Annotated[float, Field(gt=0)] = Field(1.0, alias="PARLEY_POLL_INTERVAL_S")
    # Done agent tasks and status callbacks older than this are deleted by `parley serve` and `parley
    # worker` (services/retention.py), every PARLEY_RETENTION_INTERVAL_S. 0 keeps them forever.
    retention_days: Annotated[int, Field(ge=0, le=36500)] = Field(30, alias="PARLEY_RETENTION_DAYS")
    retention_interval_s: Annotated[float, Field(gt=0, le=86400)] = Field(3600.0, alias="PARLEY_RETENTION_INTERVAL_S")

    # --- Outbound (services/orchestrator). Tenant defaults; each tenant and user may override the
    # quiet hours, time zone and budget (PATCH /api/tenant, PATCH /api/users/{id}).
    # Dispatchers inside `parley serve` (0: none; run `parley dispatcher` processes instead or as well).
    dispatchers: Annotated[int, Field(ge=0, le=64)] = Field(1, alias="PARLEY_DISPATCHERS")
    # "HH:MM-HH:MM" in the recipient's local time, or empty for none.
    quiet_hours: str = Field("21:00-08:00", alias="PARLEY_QUIET_HOURS",
                             pattern=r"^$|^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$")
    # The zone of a recipient whose own zone is unknown and cannot be inferred from the number.
    time_zone: str = Field("UTC", alias="PARLEY_TIME_ZONE")
    budget_hourly: Annotated[int, Field(ge=0, le=100_000)] = Field(2, alias="PARLEY_BUDGET_HOURLY")
    budget_daily: Annotated[int, Field(ge=0, le=100_000)] = Field(5, alias="PARLEY_BUDGET_DAILY")
    min_spacing_s: Annotated[float, Field(ge=0, le=86400)] = Field(30.0, alias="PARLEY_MIN_SPACING_S")
    reply_limit_hourly: Annotated[int, Field(ge=0, le=100_000)] = Field(10, alias="PARLEY_REPLY_LIMIT_HOURLY")
    active_user_minutes: Annotated[float, Field(ge=0, le=1440)] = Field(10.0, alias="PARLEY_ACTIVE_USER_MINUTES")
    send_lease_s: Annotated[float, Field(gt=0, le=3600)] = Field(30.0, alias="PARLEY_SEND_LEASE_S")
    # One provider call's deadline (the twilio package's own timeout is not applied by its async client).
    send_timeout_s: Annotated[float, Field(gt=0, le=120)] = Field(15.0, alias="PARLEY_SEND_TIMEOUT_S")
    send_max_attempts: Annotated[int, Field(ge=1, le=50)] = Field(5, alias="PARLEY_SEND_MAX_ATTEMPTS")
    # Sends whose outcome is unknown: looked up at the provider after this grace (Twilio), and given up
    # on (failed, for an operator) after the timeout when the provider has no lookup (WhatsApp Cloud).
    unknown_grace_s: Annotated[float, Field(gt=0, le=86400)] = Field(60.0, alias="PARLEY_UNKNOWN_GRACE_S")
    unknown_timeout_s: Annotated[float, Field(gt=0, le=7 * 86400)] = Field(3600.0, alias="PARLEY_UNKNOWN_TIMEOUT_S")
    dispatch_batch: Annotated[int, Field(ge=1, le=1000)] = Field(100, alias="PARLEY_DISPATCH_BATCH")
    dispatch_concurrency: Annotated[int, Field(ge=1, le=1000)] = Field(64, alias="PARLEY_DISPATCH_CONCURRENCY")
    # Who sends a first message to someone who never wrote (the default tenant's SMS sender).
    twilio_from_number: str | None = Field(None, alias="TWILIO_FROM_NUMBER")
    twilio_messaging_service_sid: str | None = Field(None, alias="TWILIO_MESSAGING_SERVICE_SID",
                                                     pattern=r"^MG[0-9a-fA-F]{32}$")
    # API key auth for sending (Twilio recommends it over the auth token); the auth token still signs webhooks.
    twilio_api_key_sid: str | None = Field(None, alias="TWILIO_API_KEY_SID", pattern=r"^SK[0-9a-fA-F]{32}$")
    twilio_api_key_secret: SecretStr | None = Field(None, alias="TWILIO_API_KEY_SECRET")
    # Any server that speaks the same wire format can stand in (the simulator, a proxy).
    twilio_api_base_url: AnyHttpUrl = Field(AnyHttpUrl("https://api.twilio.com"), alias="TWILIO_API_BASE_URL")
    whatsapp_graph_base_url: AnyHttpUrl = Field(AnyHttpUrl("https://graph.facebook.com"),
                                                alias="WHATSAPP_GRAPH_BASE_URL")
    whatsapp_graph_version: str = Field("v23.0", alias="WHATSAPP_GRAPH_VERSION", pattern=r"^v[0-9]+\.[0-9]+$")
    # With no provider credentials, `parley serve` runs a sandbox tenant on the embedded simulator;
    # with real credentials only when this is set.
    sandbox: bool | None = Field(None, alias="PARLEY_SANDBOX")

    @field_validator("database_url", "redis_url", "twilio_account_sid", "whatsapp_phone_number_id",
                     "twilio_from_number", "twilio_messaging_service_sid", "twilio_api_key_sid", "sandbox",
                     mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("twilio_auth_token", "whatsapp_app_secret", "whatsapp_verify_token",
                     "whatsapp_access_token", "openai_api_key", "public_base_url",
                     "openai_base_url", "twilio_api_key_secret", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("tenant_name", "help_text", "openai_model")
    @classmethod
    def _storable_text(cls, value: str) -> str:
        # These end up in rows (tenants, message_queue, agent_actions_log): refused here at start-up,
        # not by the database later, one message or one batch at a time.
        if not value.strip():
            raise ValueError("must not be empty or blank")
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("help_text")
    @classmethod
    def _one_message(cls, value: str) -> str:
        # The HELP reply is queued as is: message_queue.body holds 1-1600 characters (10 SMS segments).
        if len(value) > HELP_TEXT_MAX:
            raise ValueError(f"must be at most {HELP_TEXT_MAX} characters (it is {len(value)})")
        return value

    @field_validator("parley_api_key")
    @classmethod
    def _usable_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        # Set but blank is refused, not read as unset: an empty key would let `Authorization: Bearer`
        # with no token in, and a blank meant as "generate one" is better said by unsetting it.
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("must not be empty or whitespace (unset it to have a key generated under PARLEY_HOME)")
        return SecretStr(key)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("must be a postgres:// or postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_window(cls, value: str) -> str:
        # The pattern admits "08:00-08:00"; a window that starts where it ends is refused here, at
        # start-up, not at every claim.
        from services import badinput
        from services.orchestrator import quiet_hours

        try:
            quiet_hours.parse(value)
        except badinput.BadInput as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("twilio_from_number")
    @classmethod
    def _from_number(cls, value: str | None) -> str | None:
        from services import phone

        if value is None:
            return None
        e164 = phone.to_e164(value)
        if e164 is None:
            raise ValueError("must be a phone number in E.164 form (+15551230000)")
        return e164

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        # A half-configured channel would accept webhooks it cannot verify: refuse to start instead.
        if self.twilio_account_sid and not self.twilio_auth_token:
            raise ValueError("TWILIO_AUTH_TOKEN is required when TWILIO_ACCOUNT_SID is set")
        if self.twilio_auth_token and not self.twilio_account_sid:
            raise ValueError("TWILIO_ACCOUNT_SID is required when TWILIO_AUTH_TOKEN is set")
        if (self.twilio_api_key_sid is None) != (self.twilio_api_key_secret is None):
            raise ValueError("TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET go together")
        if self.whatsapp_phone_number_id:
            for name in ("whatsapp_app_secret", "whatsapp_verify_token"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name.upper()} is required when WHATSAPP_PHONE_NUMBER_ID is set")
        return self

    @functools.cached_property
    def public_base(self) -> str | None:
        # Read for every Twilio webhook's signature check; the settings never change once loaded.
        return str(self.public_base_url).rstrip("/") if self.public_base_url else None


class SettingsError(Exception):
    """Start-up configuration problem, reported as one line naming the setting."""


def load(**overrides: object) -> Settings:
    """Read settings from the environment; turn validation errors into one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a cross-field rule: its message names the setting
            raise SettingsError(f"missing setting {first['msg'].removeprefix('Value error, ')}") from None
        name = str(first["loc"][0])
        field = Settings.model_fields.get(name)
        env_name = field.alias if field and field.alias else name.upper()
        raise SettingsError(f"invalid setting {env_name}: {first['msg'].removeprefix('Value error, ')}") from None
