"""Typed keys for what the simulator's application holds."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from services.simulator.state import Store

STORE = web.AppKey("store", Store)
# For the webhooks it posts to Parley; opened and closed with the application.
SESSION = web.AppKey("session", aiohttp.ClientSession)
