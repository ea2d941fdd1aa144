"""Which tenant and channel a webhook belongs to, and the secret that must have signed it.

Channels change rarely and are read on every webhook, so they are cached in memory and reloaded
every few seconds, or at once (rate-limited) when an unknown address shows up. When the database is
slow or down the last good cache keeps serving, so signatures still verify against the channels it
holds; one request at a time retries the refresh, after a backoff that grows with each failure.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import asyncpg

from db import errors as db_errors
from db import pool as db_pool
from db import queries
from services.channels.base import ChannelKind

Q = queries.load(__file__, "directory.sql")
log = logging.getLogger("parley.inbound")

CATCH_ALL = "*"
_NO_CREDENTIALS: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class Channel:
    id: int
    tenant_id: int
    kind: ChannelKind
    address: str
    account_sid: str | None
    messaging_service_sid: str | None
    # Resolved: a number materialised from a catch-all reads the catch-all's, never a copy.
    credentials: Mapping[str, str]
    parent_id: int | None = None

    @property
    def is_catch_all(self) -> bool:
        return self.address == CATCH_ALL

    @property
    def secret(self) -> str:
        """What signs this channel's webhooks: the Twilio auth token or the Meta app secret ('' if none)."""
        name = "app_secret" if self.kind is ChannelKind.WHATSAPP_CLOUD else "auth_token"
        return self.credentials.get(name, "")

    def signed_with(self, secret: str) -> bool:
        return bool(self.secret) and hmac.compare_digest(self.secret, secret)


def _channel(row: asyncpg.Record, credentials: Mapping[str, str]) -> Channel:
    return Channel(row["id"], row["tenant_id"], ChannelKind(row["kind"]), row["address"], row["account_sid"],
                   row["messaging_service_sid"], credentials, row["parent_channel_id"])


def _inherits(row: asyncpg.Record, parent: asyncpg.Record | Channel | None) -> bool:
    """Whether a materialised number may use its catch-all's credentials: only while the catch-all is
    active and still names the number's tenant, kind and account (TWILIO_ACCOUNT_SID may have changed)."""
    if parent is None:
        return False
    if isinstance(parent, Channel):
        return (parent.tenant_id, parent.kind.value, parent.account_sid) == (
            row["tenant_id"], row["kind"], row["account_sid"])
    return bool(parent["active"]) and (parent["tenant_id"], parent["kind"], parent["account_sid"]) == (
        row["tenant_id"], row["kind"], row["account_sid"])


@dataclass(slots=True)
class _Snapshot:
    by_address: dict[tuple[ChannelKind, str], Channel] = field(default_factory=dict)
    by_service: dict[tuple[ChannelKind, str], Channel] = field(default_factory=dict)
    catch_all: dict[tuple[ChannelKind, str], Channel] = field(default_factory=dict)
    # A channel whose token verifies requests of an account that no channel routes (answered 404).
    by_account: dict[str, Channel] = field(default_factory=dict)
    # Deactivated numbers, with their account: they never fall through to that account's catch-all.
    inactive: dict[tuple[ChannelKind, str], str | None] = field(default_factory=dict)
    app_secrets: tuple[str, ...] = ()
    verify_tokens: tuple[str, ...] = ()


def _snapshot(rows: list[asyncpg.Record]) -> _Snapshot:
    by_id = {row["id"]: row for row in rows}
    snap = _Snapshot()
    claims: dict[tuple[ChannelKind, str], list[Channel]] = {}
    app_secrets: set[str] = set()
    verify_tokens: set[str] = set()
    for row in rows:
        kind = ChannelKind(row["kind"])
        if not row["active"]:
            if row["address"] != CATCH_ALL:
                snap.inactive[(kind, row["address"])] = row["account_sid"]
            continue
        parent_id = row["parent_channel_id"]
        if parent_id is None:
            credentials = row["credentials"]
        else:
            credentials = by_id[parent_id]["credentials"] if _inherits(row, by_id.get(parent_id)) else _NO_CREDENTIALS
        channel = _channel(row, credentials)
        if channel.is_catch_all:
            claims.setdefault((kind, channel.account_sid or ""), []).append(channel)
        else:
            snap.by_address[(kind, channel.address)] = channel
        if channel.messaging_service_sid:
            snap.by_service[(kind, channel.messaging_service_sid)] = channel
        if channel.account_sid and channel.secret and (channel.is_catch_all
                                                       or channel.account_sid not in snap.by_account):
            snap.by_account[channel.account_sid] = channel
        if kind is ChannelKind.WHATSAPP_CLOUD:
            if channel.secret:
                app_secrets.add(channel.secret)
            if credentials.get("verify_token"):
                verify_tokens.add(credentials["verify_token"])
    for key, channels in claims.items():
        if len(channels) == 1:
            snap.catch_all[key] = channels[0]
        else:
            # Start-up refuses this (services/tenants.py); one added since is ambiguous, not last-one-wins.
            log.error("two catch-alls claim one account: neither routes",
                      extra={"kind": key[0].value, "account_sid": key[1],
                             "channel_ids": [c.id for c in channels]})
    snap.app_secrets, snap.verify_tokens = tuple(app_secrets), tuple(verify_tokens)
    return snap


class Directory:
    def __init__(self, pool: asyncpg.Pool, ttl_s: float = 5.0, miss_refresh_s: float = 1.0, *,
                 refresh_timeout_s: float = 2.0, backoff_s: tuple[float, float] = (0.5, 5.0),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._miss_refresh_s = miss_refresh_s
        self._refresh_timeout_s = refresh_timeout_s
        self._backoff_s = backoff_s
        self._clock = clock
        self._loaded_at = float("-inf")
        self._retry_at = float("-inf")
        self._failures = 0
        self._lock = asyncio.Lock()
        self._snap: _Snapshot | None = None

    async def _current(self, max_age_s: float, *, wait: bool = False) -> _Snapshot:
        """The cache, refreshed first when older than `max_age_s`.

        Single flight: while one request refreshes, the others serve the cache as it is, except those
        that missed (`wait`), which wait for the refresh under way (bounded by its timeout). After a
        failed refresh nobody retries before the backoff has passed."""
        snap = self._snap
        now = self._clock()
        if snap is not None and (now - self._loaded_at < max_age_s or now < self._retry_at
                                 or (self._lock.locked() and not wait)):
            return snap
        async with self._lock:
            snap = self._snap
            now = self._clock()
            if now - self._loaded_at < max_age_s or now < self._retry_at:
                if snap is None:
                    raise db_errors.Unavailable("channel directory not loaded yet")
                return snap
            try:
                async with asyncio.timeout(self._refresh_timeout_s), self._pool.acquire() as conn:
                    rows = await conn.fetch(Q.channels)
            except Exception as exc:  # noqa: BLE001 - whatever broke the refresh, the last good cache stands
                self._failures += 1
                low, high = self._backoff_s
                delay = min(high, low * 2 ** (self._failures - 1))
                self._retry_at = self._clock() + delay
                log.warning("channel directory refresh failed", extra={
                    "error": type(exc).__name__, "failures": self._failures, "retry_in_s": delay,
                    "serving_cache": snap is not None})
                if snap is None:
                    raise db_errors.Unavailable("channel directory could not be loaded") from exc
                return snap
            self._snap = snap = _snapshot(rows)
            self._loaded_at, self._retry_at, self._failures = self._clock(), float("-inf"), 0
            return snap

    async def twilio_channel(self, kind: ChannelKind, to: str | None, messaging_service_sid: str | None,
                             account_sid: str) -> Channel | None:
        """The channel a Twilio request claiming `account_sid` lands in: the exact number, then its
        Messaging Service, then the account's catch-all (returned as is: materialise it only once the
        request is verified). None when nothing routes, or the number was deactivated."""
        snap = await self._current(self._ttl_s)
        for attempt in range(2):
            if attempt:
                snap = await self._current(self._miss_refresh_s, wait=True)
            channel = snap.by_address.get((kind, to)) if to else None
            if channel is None and messaging_service_sid:
                channel = snap.by_service.get((kind, messaging_service_sid))
            if channel is not None and channel.account_sid == account_sid:
                return channel
            if to and snap.inactive.get((kind, to), "") == account_sid:
                return None
            catch_all = snap.catch_all.get((kind, account_sid))
            if catch_all is not None:
                return catch_all
        return None

    async def twilio_account(self, account_sid: str) -> Channel | None:
        """A channel holding `account_sid`'s auth token, to verify a request no channel routes."""
        return (await self._current(self._ttl_s)).by_account.get(account_sid)

    async def materialise(self, catch_all: Channel, address: str) -> Channel | None:
        """The concrete channel for `address` under `catch_all`, created on first use so each number
        keeps its own conversations. Only call it for a request `catch_all`'s secret verified.

        A number that is already another tenant's, or another account's, stays theirs: the message goes
        to the catch-all itself. None when the number was deactivated."""
        # Two first messages to one new number race here: the loser's insert can trip the other unique
        # key on (kind, address, tenant_id), which ON CONFLICT does not arbitrate. Run again, it then
        # finds the winner's row.
        row = await db_pool.in_transaction(
            self._pool, lambda conn: conn.fetchrow(Q.materialise_number, catch_all.id, address))
        if row["tenant_id"] != catch_all.tenant_id or row["parent_channel_id"] != catch_all.id \
                or not _inherits(row, catch_all):
            return catch_all
        snap = self._snap
        if not row["active"]:
            if snap is not None:
                snap.inactive[(catch_all.kind, address)] = row["account_sid"]
            return None
        channel = _channel(row, catch_all.credentials)
        if snap is not None:
            snap.by_address[(channel.kind, channel.address)] = channel
        return channel

    async def route_twilio(self, kind: ChannelKind, to: str, messaging_service_sid: str | None,
                           account_sid: str | None) -> Channel | None:
        """`twilio_channel`, a catch-all materialised: for callers that have verified the request."""
        if not account_sid:
            return None
        channel = await self.twilio_channel(kind, to, messaging_service_sid, account_sid)
        if channel is not None and channel.is_catch_all:
            return await self.materialise(channel, to)
        return channel

    async def whatsapp(self, phone_number_id: str) -> Channel | None:
        snap = await self._current(self._ttl_s)
        channel = snap.by_address.get((ChannelKind.WHATSAPP_CLOUD, phone_number_id))
        if channel is None:
            snap = await self._current(self._miss_refresh_s, wait=True)
            channel = snap.by_address.get((ChannelKind.WHATSAPP_CLOUD, phone_number_id))
        return channel

    async def whatsapp_app_secrets(self) -> tuple[str, ...]:
        """Every distinct app secret: for a delivery that names none of our numbers."""
        return (await self._current(self._ttl_s)).app_secrets

    async def whatsapp_verify_tokens(self) -> tuple[str, ...]:
        return (await self._current(self._ttl_s)).verify_tokens
