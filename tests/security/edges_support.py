"""Shared by the edge attack tests (client address, encodings, log leaks): apps served as
`tokensvc serve` serves them, on either store, and tokensvc's JSON log lines captured."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from aiohttp import web

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tests.served import ServedTestServer
from tokensvc.operations.logs import configure
from tokensvc.web.app import create_app

if TYPE_CHECKING:
    from aiohttp.test_utils import TestClient

    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]

#: The stores a lockout test runs on: SQLite with the in-process lockout, PostgreSQL with Redis.
STORES = ("sqlite", "postgres+redis")

ALICE_PASSWORD = "her long lantern passphrase"
WRONG = "not her lantern passphrase"


def store_config(request: pytest.FixtureRequest, store: str, **overrides: Any) -> Config:
    """A test configuration on `store` (one of STORES), in the test's own database or prefix."""
    data_dir: Path = request.getfixturevalue("data_dir")
    if store == "sqlite":
        url = request.getfixturevalue("sqlite_url")
        return make_config(database_url=url, data_dir=data_dir, **overrides)
    return make_config(
        database_url=request.getfixturevalue("pg_url"),
        data_dir=data_dir,
        redis_url=request.getfixturevalue("redis_url"),
        redis_prefix=request.getfixturevalue("redis_prefix"),
        **overrides,
    )


class ServeLikeTestServer(ServedTestServer):
    """ServedTestServer without the handler cancellation aiohttp's TestServer turns on.

    `tokensvc serve` leaves aiohttp's default (no cancellation): a client that leaves mid-body
    makes the handler's read fail with the connection's error rather than cancelling it, and
    that is the case these tests must see.
    """

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


async def serve(
    aiohttp_client: Any, config: Config, clock: FakeClock, *, verify_listener: bool = True
) -> Client:
    """The real app for `config`, served as `tokensvc serve` serves it (the verify listener
    beside it, where /v1/verify goes unless `verify_listener` is False, and no handler
    cancellation)."""
    server = ServeLikeTestServer(create_app(config, clock=clock))
    server.send_verifies_to_listener = verify_listener
    client: Client = await aiohttp_client(server)
    return client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def admin_login(client: Client) -> str:
    """A token of the bootstrap admin, from POST /v1/login."""
    resp = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


async def create_alice(client: Client, admin_token: str) -> None:
    resp = await client.post(
        "/v1/users", json={"name": "alice", "password": ALICE_PASSWORD}, headers=bearer(admin_token)
    )
    assert resp.status == 201, await resp.text()


async def mint(client: Client, admin_token: str, **body: Any) -> str:
    """A token minted through POST /v1/tokens with the admin's token."""
    resp = await client.post("/v1/tokens", json=body, headers=bearer(admin_token))
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["token"])


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Everything tokensvc logs meanwhile, as its JSON lines, at DEBUG; logging restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    buffer = io.StringIO()
    configure("debug", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)


def log_lines(buffer: io.StringIO, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON objects logged so far, optionally only those with this `event`."""
    parsed = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    return [p for p in parsed if event is None or p.get("event") == event]
