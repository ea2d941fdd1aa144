"""Tenants. The settings describe a default tenant whose channels are created (or refreshed) at start-up."""

from __future__ import annotations

import asyncpg

from db import queries
from services.channels.base import ChannelKind
from services.inbound.directory import CATCH_ALL
from services.settings import Settings

Q = queries.load(__file__, "tenants.sql")

DEFAULT_SLUG = "default"


async def bootstrap_default(pool: asyncpg.Pool, settings: Settings) -> int:
    """Create the default tenant and turn TWILIO_* / WHATSAPP_* settings into its channels."""
    async with pool.acquire() as conn, conn.transaction():
        tenant_id: int = await conn.fetchval(Q.upsert_tenant, DEFAULT_SLUG, settings.tenant_name,
                                             settings.help_text)
        if settings.twilio_account_sid and settings.twilio_auth_token:
            credentials = {"auth_token": settings.twilio_auth_token.get_secret_value()}
            # Settings name an account, not numbers: a catch-all routes every number of that account.
            for kind in (ChannelKind.TWILIO_SMS, ChannelKind.TWILIO_WHATSAPP):
                await conn.fetchval(Q.upsert_channel, tenant_id, kind.value, CATCH_ALL,
                                    settings.twilio_account_sid, credentials, None)
        if settings.whatsapp_phone_number_id:
            credentials = {
                name: secret.get_secret_value()
                for name, secret in (
                    ("app_secret", settings.whatsapp_app_secret),
                    ("verify_token", settings.whatsapp_verify_token),
                    ("access_token", settings.whatsapp_access_token),
                ) if secret is not None
            }
            await conn.fetchval(Q.upsert_channel, tenant_id, ChannelKind.WHATSAPP_CLOUD.value,
                                settings.whatsapp_phone_number_id, None, credentials, None)
    return tenant_id
