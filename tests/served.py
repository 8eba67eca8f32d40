"""Serving an app in tests as `tokensvc serve` serves it: the app, and the verify listener
(tokensvc.web.verifyport) on a port of its own, to which every /v1/verify goes."""

from __future__ import annotations

import asyncio
from ssl import SSLContext
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from tokensvc.web.verifyport import (
    PATH,
    VerifyEndpoint,
    start_verify_listener,
    stop_verify_listener,
)


class ServedTestServer(TestServer):
    """aiohttp's TestServer, plus the verify listener on the app's verifier.

    A client of it (aiohttp's TestClient builds every URL with `make_url`) sends /v1/verify to
    the listener and the rest to the app; `app_url` reaches the app's own /v1/verify.
    """

    def __init__(
        self, app: web.Application, *, verify_ssl: SSLContext | None = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.verify_ssl = verify_ssl
        self.verify_port = 0
        self.listener: tuple[asyncio.Server, VerifyEndpoint] | None = None
        self.send_verifies_to_listener = True

    async def start_server(self, **kwargs: Any) -> None:
        await super().start_server(**kwargs)  # starts the app: its verifier exists from here
        self.listener = await start_verify_listener(self.app, self.host, 0, ssl=self.verify_ssl)
        self.verify_port = self.listener[0].sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.listener is not None:
            await stop_verify_listener(*self.listener)
            self.listener = None
        await super().close()

    def make_url(self, path: Any) -> URL:
        if (
            self.listener is not None
            and self.send_verifies_to_listener
            and str(path).split("?", 1)[0] == PATH
        ):
            scheme = "https" if self.verify_ssl is not None else "http"
            return URL(f"{scheme}://{self.host}:{self.verify_port}{path}")
        return self.app_url(path)

    def app_url(self, path: Any) -> URL:
        """The URL of `path` on the app's own port."""
        return super().make_url(path)
