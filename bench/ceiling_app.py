"""The HTTP ceilings for bench/ingest.py: the least an aiohttp webhook can do per request.

POST /webhooks/twilio reads the form (`await request.post()`) and answers Twilio's empty TwiML;
POST /webhooks/whatsapp reads the body, parses the JSON and answers the JSON `parley serve` answers.
Both run with parley's server settings (uvloop when installed, as `parley serve` uses it; no access
log), and do nothing else: no signature check, no database. Whatever parley reaches below these
figures is the cost of its own work. (On the default asyncio loop this app is about 6% slower, which
would flatter the ratio.) bench/README.md says why the ceilings check no signature.

    python bench/ceiling_app.py --host 127.0.0.1 --port 8099
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


async def inbound(request: web.Request) -> web.Response:
    await request.post()
    return web.Response(text=EMPTY_TWIML, content_type="text/xml")


async def whatsapp(request: web.Request) -> web.Response:
    delivery = json.loads(await request.read())
    received = sum(len(change.get("value", {}).get("messages", ())) for entry in delivery.get("entry", ())
                   for change in entry.get("changes", ()))
    return web.json_response({"received": received, "statuses": 0})


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app() -> web.Application:
    app = web.Application()
    app.add_routes([
        web.post("/webhooks/twilio", inbound),
        web.post("/webhooks/whatsapp", whatsapp),
        web.get("/readyz", ready),
    ])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
