"""A small service protected by tokensvc-client: every route needs a token, checked locally.

    TOKENSVC_SERVICE_TOKEN=... python client/examples/protected.py --tokensvc http://127.0.0.1:8080

Routes:
    GET  /docs/{name}   any token allowed `read` on the path (e.g. minted with --resource '/docs/*')
    POST /docs/{name}   `write` on the path
    GET  /admin/report  operation `report:read` on resource `/admin`, whatever the path
    GET  /healthz       open; shows the client's counters (hits, misses, stream state)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

from aiohttp import web

from tokensvc_client import TokensvcClient
from tokensvc_client.web import principal, public, require, tokensvc_middleware

CLIENT: web.AppKey[TokensvcClient] = web.AppKey("tokensvc_client", TokensvcClient)


async def read_doc(request: web.Request) -> web.Response:
    who = principal(request)
    return web.json_response({"doc": request.match_info["name"], "read_by": who.subject})


async def write_doc(request: web.Request) -> web.Response:
    who = principal(request)
    return web.json_response({"doc": request.match_info["name"], "written_by": who.subject})


@require(operation="report:read", resource="/admin")
async def report(request: web.Request) -> web.Response:
    return web.json_response({"report": "all good", "for": principal(request).subject})


@public
async def healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[CLIENT].metrics.snapshot())


def create_app(client: TokensvcClient, *, audience: str | None = None) -> web.Application:
    """The protected app; the client starts and stops with it."""
    app = web.Application(middlewares=[tokensvc_middleware(client, audience=audience)])
    app[CLIENT] = client

    async def tokensvc_client(app: web.Application) -> AsyncIterator[None]:
        async with client:
            yield

    app.cleanup_ctx.append(tokensvc_client)
    app.router.add_get("/docs/{name}", read_doc)
    app.router.add_post("/docs/{name}", write_doc)
    app.router.add_get("/admin/report", report)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokensvc", default=os.environ.get("TOKENSVC_URL", "http://127.0.0.1:8080")
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--audience", default=None, help="the audience tokens must name, if any")
    args = parser.parse_args()
    service_token = os.environ.get("TOKENSVC_SERVICE_TOKEN")
    if not service_token:
        parser.error("set TOKENSVC_SERVICE_TOKEN to a service token allowed tokens:verdict")
    client = TokensvcClient(args.tokensvc, service_token)
    web.run_app(create_app(client, audience=args.audience), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
