"""The fair baseline for the HTTP benchmark: a bare aiohttp JSON handler.

Set up as `tokensvc serve` runs its app — aiohttp's `web.run_app` on a uvloop loop, access log
off, one process — but the handler only reads the body, parses it with orjson, and answers a small
JSON object shaped like /v1/verify's answer. The difference between the two is the price of
tokensvc's request pipeline, validation and token verification.

    python -m loadtests.bare --port 8081 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson
from aiohttp import web

_ANSWER_SUBJECT = "bench"


async def handle(request: web.Request) -> web.Response:
    data = orjson.loads(await request.read())
    token = data.get("token") if isinstance(data, dict) else None
    body = orjson.dumps(
        {
            "valid": True,
            "subject": _ANSWER_SUBJECT,
            "token_id": "0" * 32,
            "expires_at": "2030-01-01T00:00:00Z",
            "declared": {},
            "n": len(token) if isinstance(token, str) else 0,
        }
    )
    return web.Response(body=body, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/verify", handle)
    app.router.add_get("/healthz", healthz)
    return app


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a tokensvc dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        loop=_new_loop(),
        print=lambda msg: print(msg, file=sys.stderr),
    )


if __name__ == "__main__":
    main()
