"""The URL a provider called, rebuilt for signature checks.

Twilio signs the exact URL configured in its console. Behind a proxy or a tunnel our own view of the
request (http://127.0.0.1:8080/...) differs from it, so it comes from PUBLIC_BASE_URL or, with
TRUST_PROXY, from the X-Forwarded-Proto / X-Forwarded-Host our own proxy appended. With neither, the
request's own scheme and Host header are used as they arrive.
"""

from __future__ import annotations

from aiohttp import web

from services.settings import Settings


def forwarded(value: str | None, hops: int) -> str | None:
    """The entry `hops` from the right of a comma-separated X-Forwarded-* chain.

    Each proxy appends what it received, so only the right-most entries were written by proxies we run;
    anything to their left came from the client and may be forged. A chain shorter than `hops` did not
    pass through all of our proxies: it is not trusted at all (None)."""
    if not value:
        return None
    entries = [entry.strip() for entry in value.split(",")]
    if len(entries) < hops:
        return None
    return entries[-hops] or None


def external_url(request: web.Request, settings: Settings) -> str:
    path = request.raw_path  # undecoded path and query, exactly as sent
    if settings.public_base:
        return settings.public_base + path
    if settings.trust_proxy:
        hops = settings.trust_proxy_hops
        proto = forwarded(request.headers.get("X-Forwarded-Proto"), hops) or request.scheme
        host = forwarded(request.headers.get("X-Forwarded-Host"), hops) or request.host
        return f"{proto}://{host}{path}"
    return f"{request.scheme}://{request.host}{path}"
