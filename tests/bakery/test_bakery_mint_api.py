"""Minting through POST /v1/tokens with third-party caveats, end to end with a bakery discharger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from macaroonbakery import bakery

from tests.bakery.test_bakery_interop import as_pymacaroon, bakery_discharger, get_discharge
from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tokensvc.bakery.config import BakeryConfig
from tokensvc.web.app import create_app


async def _admin(client: Any) -> dict[str, str]:
    resp = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    return {"Authorization": f"Bearer {(await resp.json())['token']}"}


async def test_api_minted_third_party_caveat_needs_its_discharge(
    aiohttp_server: Any, aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """A token minted with third_party verifies only with the bound discharge from that discharger."""
    key = bakery.generate_key()
    location = str((await aiohttp_server(bakery_discharger(key, 3))).make_url("")).rstrip("/")
    config = make_config(database_url=pg_url, data_dir=data_dir)
    config = config.model_copy(update={"bakery": BakeryConfig(third_party_locations=(location,))})
    client = await aiohttp_client(create_app(config, clock=clock))
    headers = await _admin(client)
    minted = await client.post(
        "/v1/tokens",
        json={"subject": "alice", "third_party": [{"location": location, "condition": "is-ok"}]},
        headers=headers,
    )
    token = (await minted.json())["token"]
    discharge = await get_discharge(token)
    bound = as_pymacaroon(token).prepare_for_request(discharge).serialize()

    with_discharge = await client.post("/v1/verify", json={"token": token, "discharges": [bound]})
    without = await client.post("/v1/verify", json={"token": token})

    assert minted.status == 201
    assert with_discharge.status == 200
    assert (await with_discharge.json())["declared"] == {"username": "bob"}
    assert without.status == 401


@pytest.mark.parametrize("location", ["https://not-allowed.example", "file:///etc/passwd"])
async def test_third_party_location_outside_the_allow_list_is_400(
    client: Any, admin_token: str, location: str
) -> None:
    """A discharger location that is not configured is refused before anything is contacted."""
    resp = await client.post(
        "/v1/tokens",
        json={"subject": "alice", "third_party": [{"location": location, "condition": "x"}]},
        headers={"Authorization": f"Bearer {admin_token}"},
    )

    assert resp.status == 400
    assert (await resp.json())["error"]["code"]
