"""Which tenant and channel a webhook belongs to, and which secrets verify it.

Channels change rarely and are read on every webhook, so they are cached in memory and reloaded
every few seconds, or at once (rate-limited) when an unknown address shows up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from db import queries
from services.channels.base import ChannelKind

Q = queries.load(__file__, "directory.sql")

CATCH_ALL = "*"


@dataclass(frozen=True, slots=True)
class Channel:
    id: int
    tenant_id: int
    kind: ChannelKind
    address: str
    account_sid: str | None
    messaging_service_sid: str | None
    credentials: Mapping[str, str]

    @property
    def is_catch_all(self) -> bool:
        return self.address == CATCH_ALL


def _channel(row: asyncpg.Record) -> Channel:
    return Channel(row["id"], row["tenant_id"], ChannelKind(row["kind"]), row["address"],
                   row["account_sid"], row["messaging_service_sid"], row["credentials"])


class Directory:
    def __init__(self, pool: asyncpg.Pool, ttl_s: float = 5.0, miss_refresh_s: float = 1.0) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._miss_refresh_s = miss_refresh_s
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()
        self._by_address: dict[tuple[ChannelKind, str], Channel] = {}
        self._by_service: dict[tuple[ChannelKind, str], Channel] = {}
        self._catch_all: dict[tuple[ChannelKind, str], Channel] = {}
        self._twilio_tokens: dict[str, str] = {}
        self._app_secrets: tuple[str, ...] = ()
        self._verify_tokens: tuple[str, ...] = ()

    async def _refresh(self, max_age_s: float) -> None:
        if time.monotonic() - self._loaded_at < max_age_s:
            return
        async with self._lock:
            if time.monotonic() - self._loaded_at < max_age_s:
                return
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(Q.active_channels)
            by_address, by_service, catch_all, tokens = {}, {}, {}, {}
            app_secrets, verify_tokens = set(), set()
            for channel in map(_channel, rows):
                if channel.is_catch_all:
                    catch_all[(channel.kind, channel.account_sid or "")] = channel
                else:
                    by_address[(channel.kind, channel.address)] = channel
                if channel.messaging_service_sid:
                    by_service[(channel.kind, channel.messaging_service_sid)] = channel
                if channel.account_sid and channel.credentials.get("auth_token"):
                    tokens[channel.account_sid] = channel.credentials["auth_token"]
                if channel.credentials.get("app_secret"):
                    app_secrets.add(channel.credentials["app_secret"])
                if channel.credentials.get("verify_token"):
                    verify_tokens.add(channel.credentials["verify_token"])
            self._by_address, self._by_service, self._catch_all = by_address, by_service, catch_all
            self._twilio_tokens = tokens
            self._app_secrets, self._verify_tokens = tuple(app_secrets), tuple(verify_tokens)
            self._loaded_at = time.monotonic()

    async def twilio_tokens(self, account_sid: str | None) -> list[str]:
        """Auth tokens that may have signed a request claiming `account_sid`.

        Without a (known) AccountSid every token is a candidate, so a genuine request that lacks the
        field still passes the signature check and then gets a 400 naming it."""
        await self._refresh(self._ttl_s)
        if account_sid and account_sid not in self._twilio_tokens:
            await self._refresh(self._miss_refresh_s)
        if account_sid and account_sid in self._twilio_tokens:
            return [self._twilio_tokens[account_sid]]
        return list(self._twilio_tokens.values())

    async def route_twilio(self, kind: ChannelKind, to: str, messaging_service_sid: str | None,
                           account_sid: str | None) -> Channel | None:
        """The channel for a number: exact address, then Messaging Service, then the account's catch-all
        (which is materialised as a concrete channel so each number keeps its own conversations)."""
        for max_age in (self._ttl_s, self._miss_refresh_s):
            await self._refresh(max_age)
            channel = self._by_address.get((kind, to))
            if channel is None and messaging_service_sid:
                channel = self._by_service.get((kind, messaging_service_sid))
            if channel is not None and (channel.account_sid is None or channel.account_sid == account_sid):
                return channel
            catch_all = self._catch_all.get((kind, account_sid or ""))
            if catch_all is not None:
                return await self._materialise(catch_all, to)
        return None

    async def _materialise(self, catch_all: Channel, address: str) -> Channel:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(Q.materialise_number, catch_all.id, address)
        channel = _channel(row)
        if channel.tenant_id != catch_all.tenant_id:
            # The number is already another tenant's: never cross tenants.
            return catch_all
        self._by_address[(channel.kind, channel.address)] = channel
        return channel

    async def whatsapp(self, phone_number_id: str) -> Channel | None:
        for max_age in (self._ttl_s, self._miss_refresh_s):
            await self._refresh(max_age)
            channel = self._by_address.get((ChannelKind.WHATSAPP_CLOUD, phone_number_id))
            if channel is not None:
                return channel
        return None

    async def whatsapp_app_secrets(self) -> tuple[str, ...]:
        await self._refresh(self._ttl_s)
        return self._app_secrets

    async def whatsapp_verify_tokens(self) -> tuple[str, ...]:
        await self._refresh(self._ttl_s)
        return self._verify_tokens
