"""The one registry from a channel kind to the provider module that sends for it."""

from __future__ import annotations

import aiohttp

from services.channels import twilio_send, whatsapp_cloud_send
from services.channels.base import ChannelKind
from services.channels.outbound import Sender
from services.settings import Settings


def twilio_defaults(settings: Settings) -> twilio_send.Credentials | None:
    """The default tenant's Twilio account, API key first (Twilio's advice for production)."""
    account_sid = settings.twilio_account_sid
    if account_sid is None:
        return None
    if settings.twilio_api_key_sid and settings.twilio_api_key_secret:
        return twilio_send.Credentials(account_sid, settings.twilio_api_key_sid,
                                       settings.twilio_api_key_secret.get_secret_value())
    if settings.twilio_auth_token is None:
        return None
    return twilio_send.Credentials(account_sid, account_sid, settings.twilio_auth_token.get_secret_value())


class Senders:
    """Every provider's sender, built once per process from the settings.

    WhatsApp Cloud sends over `session` (the runtime's, closed by its owner); Twilio's SDK brings its own
    session, which `close()` closes. Build inside a running event loop (a cleanup_ctx)."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.twilio = twilio_send.TwilioSender(timeout_s=settings.send_timeout_s,
                                               api_base_url=str(settings.twilio_api_base_url),
                                               defaults=twilio_defaults(settings))
        token = settings.whatsapp_access_token
        self.whatsapp_cloud = whatsapp_cloud_send.WhatsAppCloudSender(
            session, timeout_s=settings.send_timeout_s, base_url=str(settings.whatsapp_graph_base_url),
            version=settings.whatsapp_graph_version,
            default_access_token=token.get_secret_value() if token else None)

    def for_kind(self, kind: ChannelKind | str) -> Sender:
        """The sender for a channel kind, given as the enum or as stored ("twilio_sms")."""
        if kind in (ChannelKind.TWILIO_SMS, ChannelKind.TWILIO_WHATSAPP):
            return self.twilio
        if kind == ChannelKind.WHATSAPP_CLOUD:
            return self.whatsapp_cloud
        raise ValueError(f"no sender for channel kind {kind!r}")

    async def close(self) -> None:
        await self.twilio.close()
