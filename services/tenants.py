"""Tenants. The settings describe a default tenant whose channels are created (or refreshed) at start-up."""

from __future__ import annotations

import asyncpg

from db import queries
from services.channels.base import ChannelKind
from services.inbound.directory import CATCH_ALL
from services.settings import Settings, SettingsError

Q = queries.load(__file__, "tenants.sql")

DEFAULT_SLUG = "default"


async def bootstrap_default(pool: asyncpg.Pool, settings: Settings) -> int:
    """Create the default tenant and turn TWILIO_* / WHATSAPP_* settings into its channels.

    The settings are the credentials' one source of truth: each start-up writes them onto the channels
    they name (numbers materialised from a catch-all read the catch-all's) and deactivates the channels
    earlier settings created that they no longer name. Raises SettingsError when two catch-alls would
    claim one account."""
    async with pool.acquire() as conn, conn.transaction():
        tenant_id: int = await conn.fetchval(Q.upsert_tenant, DEFAULT_SLUG, settings.tenant_name,
                                             settings.help_text)
        named: list[int] = []
        if settings.twilio_account_sid and settings.twilio_auth_token:
            credentials = {"auth_token": settings.twilio_auth_token.get_secret_value()}
            # Settings name an account, not numbers: a catch-all routes every number of that account.
            for kind in (ChannelKind.TWILIO_SMS, ChannelKind.TWILIO_WHATSAPP):
                named.append(await conn.fetchval(Q.upsert_channel, tenant_id, kind.value, CATCH_ALL,
                                                 settings.twilio_account_sid, credentials, None))
        if settings.whatsapp_phone_number_id:
            credentials = {
                name: secret.get_secret_value()
                for name, secret in (
                    ("app_secret", settings.whatsapp_app_secret),
                    ("verify_token", settings.whatsapp_verify_token),
                    ("access_token", settings.whatsapp_access_token),
                ) if secret is not None
            }
            named.append(await conn.fetchval(Q.upsert_channel, tenant_id, ChannelKind.WHATSAPP_CLOUD.value,
                                             settings.whatsapp_phone_number_id, None, credentials, None))
        await conn.execute(Q.deactivate_unnamed_settings_channels, tenant_id, named)
        conflicts = await conn.fetch(Q.catch_all_conflicts)
        if conflicts:  # raised inside the transaction: these settings write nothing
            first = conflicts[0]
            raise SettingsError(f"two catch-all channels claim {first['kind']} account {first['account_sid']} "
                                f"(tenants {first['tenants']}): deactivate one of them")
    return tenant_id
