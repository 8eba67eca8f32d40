"""GET /metrics: Prometheus text format; gauges of live state are refreshed just before."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from tokensvc.operations import metrics
from tokensvc.web import appkeys
from tokensvc.web.routes import add_routes

# In multiprocess mode a scrape reaches one worker; the others keep their gauges this fresh.
REFRESH_EVERY = 15.0


def refresh(app: web.Application) -> None:
    """Set the gauges read from live state: root-key age and the verify chain-cache size."""
    keyring = app.get(appkeys.KEYRING)
    if keyring is not None:
        created = keyring.current_created_at
        if created is not None:
            age = (app[appkeys.CLOCK]() - created).total_seconds()
            metrics.ROOT_KEY_AGE.set(max(age, 0.0))
    verifier = app.get(appkeys.VERIFIER)
    if verifier is not None:
        metrics.CHAIN_CACHE_ENTRIES.set(len(verifier.cache))


async def serve_metrics(request: web.Request) -> web.Response:
    refresh(request.app)
    body, content_type = metrics.exposition(request.headers.get("Accept"))
    response = web.Response(body=body)
    # The exposition content type carries parameters (version, charset); set it verbatim.
    response.headers["Content-Type"] = content_type
    return response


async def _refresher(app: web.Application) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            refresh(app)
            await asyncio.sleep(REFRESH_EVERY)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup(app: web.Application) -> None:
    """Add GET /metrics and the periodic gauge refresh to `app`."""
    add_routes(app, [web.get("/metrics", serve_metrics)])
    app.cleanup_ctx.append(_refresher)
