"""Tenants. The settings describe a default tenant whose channels are created (or refreshed) at start-up."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import asyncpg

from db import queries
from services import phone
from services.channels.base import ChannelKind
from services.inbound.directory import CATCH_ALL
from services.settings import Settings, SettingsError

Q = queries.load(__file__, "tenants.sql")
log = logging.getLogger("parley.tenants")

DEFAULT_SLUG = "default"


async def bootstrap_default(pool: asyncpg.Pool, settings: Settings) -> int:
    """Create the default tenant, turn TWILIO_* / WHATSAPP_* settings into its channels, and set its
    default senders (who sends a first message to someone who never wrote).

    The settings are the credentials' one source of truth: each start-up writes them onto the channels
    they name (numbers materialised from a catch-all read the catch-all's) and deactivates the channels
    earlier settings created that they no longer name. SMS: TWILIO_FROM_NUMBER (a number of the
    account), else TWILIO_MESSAGING_SERVICE_SID (the account's catch-all, which sends through it);
    WhatsApp: WHATSAPP_PHONE_NUMBER_ID. A default the settings no longer name is cleared. Raises
    SettingsError when two catch-alls would claim one account, or TWILIO_FROM_NUMBER is another
    tenant's number."""
    async with pool.acquire() as conn, conn.transaction():
        tenant_id: int = await conn.fetchval(Q.upsert_tenant, DEFAULT_SLUG, settings.tenant_name,
                                             settings.help_text)
        named: list[int] = []
        sms_sender: int | None = None
        whatsapp_sender: int | None = None
        if settings.twilio_account_sid and settings.twilio_auth_token:
            credentials = {"auth_token": settings.twilio_auth_token.get_secret_value()}
            # Settings name an account, not numbers: a catch-all routes every number of that account.
            for kind in (ChannelKind.TWILIO_SMS, ChannelKind.TWILIO_WHATSAPP):
                service = settings.twilio_messaging_service_sid if kind is ChannelKind.TWILIO_SMS else None
                named.append(await conn.fetchval(Q.upsert_channel, tenant_id, kind.value, CATCH_ALL,
                                                 settings.twilio_account_sid, credentials, None, service))
            sms_sender = await _sms_sender(conn, tenant_id, named[0], settings)
        elif settings.twilio_from_number or settings.twilio_messaging_service_sid:
            raise SettingsError("missing setting TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are required when "
                                "TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID is set")
        if settings.whatsapp_phone_number_id:
            credentials = {
                name: secret.get_secret_value()
                for name, secret in (
                    ("app_secret", settings.whatsapp_app_secret),
                    ("verify_token", settings.whatsapp_verify_token),
                    ("access_token", settings.whatsapp_access_token),
                ) if secret is not None
            }
            whatsapp_sender = await conn.fetchval(Q.upsert_channel, tenant_id, ChannelKind.WHATSAPP_CLOUD.value,
                                                  settings.whatsapp_phone_number_id, None, credentials, None, None)
            named.append(whatsapp_sender)
        await conn.execute(Q.deactivate_unnamed_settings_channels, tenant_id, named)
        await conn.execute(Q.set_default_senders, tenant_id, sms_sender, whatsapp_sender)
        conflicts = await conn.fetch(Q.catch_all_conflicts)
        if conflicts:  # raised inside the transaction: these settings write nothing
            first = conflicts[0]
            raise SettingsError(f"two catch-all channels claim {first['kind']} account {first['account_sid']} "
                                f"(tenants {first['tenants']}): deactivate one of them")
    return tenant_id


async def _sms_sender(conn: asyncpg.Connection, tenant_id: int, catch_all_id: int, settings: Settings) -> int | None:
    if settings.twilio_from_number:
        await conn.execute(Q.sender_number, catch_all_id, settings.twilio_from_number)
        row = await conn.fetchrow(Q.number_channel, ChannelKind.TWILIO_SMS.value, settings.twilio_from_number)
        if row is None or row["tenant_id"] != tenant_id:
            raise SettingsError(f"invalid setting TWILIO_FROM_NUMBER: {phone.mask(settings.twilio_from_number)} "
                                "is a number of another tenant")
        if not row["active"]:
            # An operator deactivated it: sending from it anyway would overrule them.
            log.warning("TWILIO_FROM_NUMBER names a deactivated channel: no default SMS sender",
                        extra={"tenant_id": tenant_id, "channel_id": row["id"]})
            return None
        sender: int = row["id"]
        return sender
    if settings.twilio_messaging_service_sid:
        return catch_all_id  # a catch-all sends through its Messaging Service
    return None


POLICY_COLUMNS = ("time_zone", "quiet_hours", "budget_hourly", "budget_daily")


async def set_policy(conn: asyncpg.Connection, tenant_id: int, changes: Mapping[str, object]) -> bool:
    """Write the tenant's outbound defaults named in `changes` (keys from POLICY_COLUMNS; a value of
    None: the settings' default; quiet_hours "": none). False when there is no such tenant."""
    unknown = set(changes) - set(POLICY_COLUMNS)
    if unknown:
        raise ValueError(f"not tenant policy columns: {sorted(unknown)}")
    args: list[object] = []
    for column in POLICY_COLUMNS:
        args += [column in changes, changes.get(column)]
    return await conn.fetchval(Q.set_policy, tenant_id, *args) is not None
