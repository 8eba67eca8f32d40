"""Fixtures for the bakery tests: tokensvc with its discharger, served on a loopback port."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tokensvc.bakery import appkeys as bakery_keys
from tokensvc.bakery.config import BakeryConfig
from tokensvc.bakery.thirdparty import ThirdPartyLocator, ThirdPartyRequest, add_third_party_caveats
from tokensvc.macaroons.tokenformat import decode_token, encode_token
from tokensvc.web.app import create_app

if TYPE_CHECKING:
    from pytest_aiohttp import AiohttpClient, AiohttpServer

PREFIX = "/bakery"
ALICE_PASSWORD = "her other lantern passphrase"
BOB_PASSWORD = "his long lantern passphrase too"

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def bakery_app(pg_url: str, data_dir: Path, clock: FakeClock) -> web.Application:
    """tokensvc on real PostgreSQL with the discharger under /bakery and the fake clock."""
    return create_app(make_config(database_url=pg_url, data_dir=data_dir), clock=clock)


@pytest.fixture
async def server(aiohttp_server: AiohttpServer, bakery_app: web.Application) -> TestServer:
    """tokensvc listening on 127.0.0.1 (a real socket, so threads and subprocesses can call it)."""
    return await aiohttp_server(bakery_app, host="127.0.0.1")


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, server: TestServer) -> Client:
    """An HTTP client of the served tokensvc."""
    served: Client = await aiohttp_client(server)  # type: ignore[assignment]  # app is known here
    return served


@pytest.fixture
def discharger_url(server: TestServer) -> str:
    """The location third-party caveats address tokensvc's discharger by."""
    return str(server.make_url(PREFIX))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: Any, username: str, password: str) -> str:
    """A token for the user, through POST /v1/login."""
    resp = await client.post("/v1/login", headers=basic_auth(username, password))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


@pytest.fixture
async def admin_token(client: Client) -> str:
    """A token of the bootstrap admin."""
    return await login(client, "admin", ADMIN_PASSWORD)


@pytest.fixture
async def users(client: Client, admin_token: str) -> dict[str, str]:
    """alice (role dev) and bob (no roles), created through the users API; name → password."""
    for name, password, roles in (
        ("alice", ALICE_PASSWORD, ["dev"]),
        ("bob", BOB_PASSWORD, []),
    ):
        resp = await client.post(
            "/v1/users",
            json={"name": name, "password": password, "roles": roles},
            headers=bearer(admin_token),
        )
        assert resp.status == 201, await resp.text()
    return {"alice": ALICE_PASSWORD, "bob": BOB_PASSWORD}


async def mint(client: Client, admin_token: str, **body: Any) -> str:
    resp = await client.post("/v1/tokens", json=body, headers=bearer(admin_token))
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["token"])


async def with_third_party(client: Client, token: str, location: str, condition: str) -> str:
    """`token` with a third-party caveat for `location` added the way Minter will add it."""
    locator = ThirdPartyLocator(BakeryConfig(third_party_locations=(location,)))
    try:
        macaroon = await add_third_party_caveats(
            decode_token(token, max_bytes=1 << 16, max_caveats=128),
            [ThirdPartyRequest(location, condition)],
            locator=locator,
            key=client.app[bakery_keys.DISCHARGER_KEY],
        )
    finally:
        await locator.close()
    return encode_token(macaroon)
