"""Serving an app in tests as `tokensvc serve` serves it: on tokensvc.web.fastverify's runner."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tokensvc.web.fastverify import AppRunner


class ServedTestServer(TestServer):
    """aiohttp's TestServer with the fast /v1/verify path of `tokensvc serve`."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return AppRunner(self.app, **kwargs)
