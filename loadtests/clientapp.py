"""The sample service of `python -m loadtests client`: one aiohttp endpoint, GET /docs/{name},
served four ways (one process each; the protected ones also answer GET /_client/metrics):

- `noauth`:  no token check at all (the baseline);
- `cached`:  tokensvc-client's middleware, decisions from cached verdicts (a hot token: hits);
- `guarded`: no middleware; the handler protected per route by tokensvc-client's TokensvcGuard;
- `passthrough`: an empty middleware (it hands the request on): what aiohttp's middleware chain
             costs by itself, the floor under `cached`;
- `verify`:  the same middleware with a client whose revocation stream is not started, so every
             request is sent to tokensvc's POST /v1/verify (what services do without the client).

Run as `web.run_app` on uvloop with the access log off, like loadtests.bare.

    python -m loadtests.clientapp --mode cached --port 8090 --tokensvc http://127.0.0.1:8080 \\
        --verify-url http://127.0.0.1:8081   # TOKENSVC_SERVICE_TOKEN in the environment
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import web

from tokensvc_client import TokensvcClient
from tokensvc_client.web import TokensvcGuard, public, tokensvc_middleware

AUDIENCE = "files"


async def doc(request: web.Request) -> web.Response:
    # The same handler in every mode, touching nothing of the token's: the rows then differ by
    # what protects the route alone. (It used to read the Principal when present; under no auth
    # that `PRINCIPAL in request` raised and caught a KeyError inside aiohttp's Mapping, ~3,900
    # instructions the baseline paid and the protected rows did not, flattering their ratios.)
    body = orjson.dumps({"doc": request.match_info["name"]})
    return web.Response(body=body, content_type="application/json")


@public
async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


CLIENT: web.AppKey[TokensvcClient] = web.AppKey("client", TokensvcClient)


@public
async def client_metrics(request: web.Request) -> web.Response:
    """The client's counters and stream state: the benchmarks check that every counted request
    was a hit (no fetch, no fallback to /v1/verify)."""
    return web.Response(body=orjson.dumps(request.app[CLIENT].metrics.snapshot()))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
def passthrough(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    # Shaped like tokensvc_middleware's hit path (a plain function handing back the handler's
    # awaitable), so the difference between the two rows is the token check alone.
    return handler(request)


def make_app(mode: str, tokensvc: str, verify_url: str, service_token: str) -> web.Application:
    handler: Handler = doc
    if mode == "noauth":
        app = web.Application()
    elif mode == "passthrough":
        app = web.Application(middlewares=[passthrough])
    else:
        # verify: a client that never subscribes, so every request goes to /v1/verify.
        client = TokensvcClient(
            tokensvc, service_token, verify_url=verify_url, subscribe=mode != "verify"
        )
        if mode == "guarded":
            app = web.Application()
            handler = TokensvcGuard(client, audience=AUDIENCE).protect(doc)
        else:
            app = web.Application(middlewares=[tokensvc_middleware(client, audience=AUDIENCE)])

        app[CLIENT] = client
        app.router.add_get("/_client/metrics", client_metrics)

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            async with client:
                yield

        app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/docs/{name}", handler)
    app.router.add_get("/healthz", healthz)
    return app


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a tokensvc dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.clientapp")
    parser.add_argument(
        "--mode", choices=("noauth", "passthrough", "cached", "guarded", "verify"), required=True
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokensvc", default="http://127.0.0.1:8080")
    parser.add_argument("--verify-url", default=None)
    args = parser.parse_args(argv)
    web.run_app(
        make_app(
            args.mode,
            args.tokensvc,
            args.verify_url or args.tokensvc,
            os.environ.get("TOKENSVC_SERVICE_TOKEN", ""),
        ),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        loop=_new_loop(),
        print=lambda msg: print(msg, file=sys.stderr),
    )


if __name__ == "__main__":
    main()
