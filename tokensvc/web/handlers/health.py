"""Liveness, readiness and the API description."""

from __future__ import annotations

from importlib import resources

from aiohttp import web
from sqlalchemy import text

from tokensvc.web import appkeys
from tokensvc.web.jsonio import json_response


async def healthz(request: web.Request) -> web.Response:
    """Alive: no dependencies are consulted."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database (and Redis, where configured) answer."""
    checks: dict[str, str] = {}
    try:
        async with request.app[appkeys.ENGINE].connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["database"] = "unavailable"
    for name, probe in request.app[appkeys.READINESS_PROBES].items():
        checks[name] = "ok" if await probe() else "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


_SPEC = resources.files("tokensvc").joinpath("openapi.yaml")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_SPEC.read_bytes(), content_type="application/yaml")
