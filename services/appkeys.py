"""Typed keys for what the application holds."""

from __future__ import annotations

from aiohttp import web

from services.inbound.batcher import Batcher
from services.inbound.directory import Directory
from services.inbound.spool import Spool
from services.runtime import Runtime
from services.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
RUNTIME = web.AppKey("runtime", Runtime)
DIRECTORY = web.AppKey("directory", Directory)
BATCHER = web.AppKey("batcher", Batcher)
SPOOL = web.AppKey("spool", Spool)
