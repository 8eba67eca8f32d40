"""Serving an app in tests as `tokensvc serve` serves it: the app, and the verify listener
(tokensvc.web.verifyport) on a port of its own, to which the client sends every /v1/verify."""

from __future__ import annotations

import asyncio
from ssl import SSLContext
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from tokensvc.web.verifyport import (
    PATH,
    VerifyEndpoint,
    start_verify_listener,
    stop_verify_listener,
)


class ServedTestServer(TestServer):
    """aiohttp's TestServer, plus the verify listener on the app's verifier."""

    def __init__(
        self, app: web.Application, *, verify_ssl: SSLContext | None = None, **kwargs: Any
    ):
        super().__init__(app, **kwargs)
        self.verify_ssl = verify_ssl
        self.verify_port = 0
        self.listener: tuple[asyncio.Server, VerifyEndpoint] | None = None

    async def start_server(self, **kwargs: Any) -> None:
        await super().start_server(**kwargs)  # starts the app: its verifier exists from here
        self.listener = await start_verify_listener(self.app, self.host, 0, ssl=self.verify_ssl)
        self.verify_port = self.listener[0].sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.listener is not None:
            await stop_verify_listener(*self.listener)
            self.listener = None
        await super().close()


class ServedTestClient(TestClient[web.Request, web.Application]):
    """A test client that sends /v1/verify to the verify listener and the rest to the app."""

    def make_url(self, path: Any) -> URL:
        server = self.server
        if isinstance(server, ServedTestServer) and str(path).split("?", 1)[0] == PATH:
            scheme = "https" if server.verify_ssl is not None else "http"
            return URL(f"{scheme}://{server.host}:{server.verify_port}{path}")
        return super().make_url(path)
