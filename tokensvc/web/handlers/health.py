"""Liveness, readiness and the API description."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from tokensvc.web import appkeys
from tokensvc.web.jsonio import json_response


async def healthz(request: web.Request) -> web.Response:
    """Alive: no dependencies are consulted."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database (and Redis, where configured) answer."""
    checks = await request.app[appkeys.SERVICES].health.readiness()

    ready = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


_SPEC = resources.files("tokensvc").joinpath("openapi.yaml")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_SPEC.read_bytes(), content_type="application/yaml")
