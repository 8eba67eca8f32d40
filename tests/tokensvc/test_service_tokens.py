"""Long-lived service tokens: a root key of their own, sealed under the KEK, gone with their row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient as Client
from sqlalchemy import text

from keystore import KeyDecryptionError
from keystore.service_keys import ServiceKeys
from tokensvc.web import appkeys
from tokensvc.web.app import create_app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint_service(client: Client, admin_token: str, ttl: Any = "200d") -> Any:
    return await client.post(
        "/v1/tokens",
        json={"subject": "ci-bot", "ttl": ttl, "service": True, "description": "CI"},
        headers=bearer(admin_token),
    )


async def test_a_service_token_outlives_the_rotating_keys(
    client: Client, admin_token: str, clock: Any
) -> None:
    """service=true with a 200-day TTL: 201, key id t-<token id>, verifies, and still does after 100 days."""
    resp = await mint_service(client, admin_token)
    minted = await resp.json()
    expires = datetime.strptime(minted["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

    now_ok = await client.post("/v1/verify", json={"token": minted["token"]})
    clock.advance(days=100)
    later_ok = await client.post("/v1/verify", json={"token": minted["token"]})

    assert resp.status == 201, minted
    assert minted["kind"] == "service"
    assert minted["key_id"] == "t-" + minted["token_id"]
    assert abs(expires - (clock.now - timedelta(days=100) + timedelta(days=200))) < timedelta(
        seconds=5
    )
    assert now_ok.status == 200 and later_ok.status == 200


async def test_service_ttl_limits(client: Client, admin_token: str) -> None:
    """Beyond the rotating limit without service=true is a 400, and so is beyond the service maximum."""
    plain = await client.post(
        "/v1/tokens", json={"subject": "ci-bot", "ttl": "200d"}, headers=bearer(admin_token)
    )
    too_long = await mint_service(client, admin_token, ttl="400d")
    bad_flag = await client.post(
        "/v1/tokens", json={"subject": "x", "service": "yes"}, headers=bearer(admin_token)
    )

    assert plain.status == 400 and too_long.status == 400 and bad_flag.status == 400


async def test_the_key_is_stored_sealed_and_bound_to_its_token(
    client: Client, admin_token: str
) -> None:
    """The service_keys row holds ciphertext (not the key), and it does not open under another token id."""
    minted = await (await mint_service(client, admin_token)).json()
    service_keys: ServiceKeys = client.app[appkeys.SERVICE_KEYS]
    key = await service_keys.get(minted["key_id"])
    assert key is not None
    engine = client.app[appkeys.ENGINE]
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT ciphertext, token_id FROM service_keys WHERE id = :id"),
                {"id": minted["key_id"]},
            )
        ).one()
    kek = client.app[appkeys.KEK]

    assert key.secret.reveal() not in bytes(row.ciphertext)
    assert row.token_id == minted["token_id"]
    exp = int(key.expires_at.timestamp())
    opened = kek.decrypt(
        bytes(row.ciphertext), aad=f"service|{key.id}|{row.token_id}|{exp}".encode()
    )
    assert opened == key.secret.reveal()
    with pytest.raises(KeyDecryptionError):
        kek.decrypt(bytes(row.ciphertext), aad=f"service|t-{'0' * 32}|{'0' * 32}|{exp}".encode())


async def test_revoking_a_service_token_deletes_its_key(client: Client, admin_token: str) -> None:
    """DELETE /v1/tokens/{id} of a service token: 401 on verify, and its key row is gone."""
    minted = await (await mint_service(client, admin_token)).json()

    resp = await client.delete(f"/v1/tokens/{minted['token_id']}", headers=bearer(admin_token))
    verify = await client.post("/v1/verify", json={"token": minted["token"]})
    async with client.app[appkeys.ENGINE].connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM service_keys"))).scalar_one()

    assert resp.status == 204
    assert verify.status == 401
    assert left == 0


async def test_deleting_the_registry_row_revokes_it(
    client: Client, admin_token: str, aiohttp_client: Any, app_config: Any, clock: Any
) -> None:
    """Deleting the tokens row cascades to the key: another process can no longer verify the token."""
    minted = await (await mint_service(client, admin_token)).json()
    async with client.app[appkeys.ENGINE].begin() as conn:
        await conn.execute(
            text("DELETE FROM tokens WHERE token_id = :id"), {"id": minted["token_id"]}
        )
        left = (await conn.execute(text("SELECT count(*) FROM service_keys"))).scalar_one()
    other = await aiohttp_client(create_app(app_config, clock=clock))

    resp = await other.post("/v1/verify", json={"token": minted["token"]})

    assert left == 0
    assert resp.status == 401
    assert "service token" in (await resp.json())["reason"]
