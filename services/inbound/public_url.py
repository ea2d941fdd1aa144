"""The URL a provider called, rebuilt for signature checks.

Twilio signs the exact URL configured in its console. Behind a proxy or a tunnel our own view of the
request (http://127.0.0.1:8080/...) differs from it, so it comes from PUBLIC_BASE_URL, or, with
TRUST_PROXY, from the proxy's X-Forwarded-Proto / X-Forwarded-Host.
"""

from __future__ import annotations

from aiohttp import web

from services.settings import Settings


def _first(value: str | None) -> str | None:
    # A chain of proxies appends: "https, http". The left-most is what the client (Twilio) used.
    if not value:
        return None
    return value.split(",")[0].strip() or None


def external_url(request: web.Request, settings: Settings) -> str:
    path = request.raw_path  # undecoded path and query, exactly as sent
    if settings.trust_proxy:
        proto = _first(request.headers.get("X-Forwarded-Proto")) or request.scheme
        host = _first(request.headers.get("X-Forwarded-Host")) or request.host
        return f"{proto}://{host}{path}"
    if settings.public_base:
        return settings.public_base + path
    return f"{request.scheme}://{request.host}{path}"
