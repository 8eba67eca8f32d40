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
    """200 while this process can verify tokens, with degraded dependencies named in the body;
    503 only when it cannot verify at all (tokensvc.services.health says when)."""
    readiness = await request.app[appkeys.SERVICES].health.readiness()

    body: dict[str, object] = {
        "status": readiness.status,
        "checks": readiness.checks,
        "verify": readiness.verify,
    }
    if readiness.degraded:
        body["degraded"] = readiness.degraded
    return json_response(body, status=200 if readiness.ready else 503)


_SPEC = resources.files("tokensvc").joinpath("openapi.yaml")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_SPEC.read_bytes(), content_type="application/yaml")
