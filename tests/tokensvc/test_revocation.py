"""Revocation: by id (admin or owner), by presenting the token, revoke-all, and by root key."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from aiohttp.test_utils import TestClient as Client

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tokensvc.macaroons.macaroon import Macaroon
from tokensvc.macaroons.tokenformat import decode_token, encode_token
from tokensvc.web import appkeys

BOB_PASSWORD = "his long lantern passphrase"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint(client: Client, admin_token: str, **body: Any) -> dict[str, Any]:
    resp = await client.post(
        "/v1/tokens", json={"subject": "alice", **body}, headers=bearer(admin_token)
    )
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def verify(client: Client, token: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/verify", json={"token": token})
    return resp.status, dict(await resp.json())


async def revoked_ids(client: Client, admin_token: str) -> set[str]:
    resp = await client.get(
        "/v1/tokens?include_revoked=true&include_expired=true&limit=1000",
        headers=bearer(admin_token),
    )
    return {r["token_id"] for r in (await resp.json())["tokens"] if r["revoked_at"]}


async def test_admin_revokes_by_id_and_verify_says_why(client: Client, admin_token: str) -> None:
    """DELETE /v1/tokens/{id} by an admin: 204, then /v1/verify answers 401 "token revoked"."""
    minted = await mint(client, admin_token)
    assert (await verify(client, minted["token"]))[0] == 200

    resp = await client.delete(f"/v1/tokens/{minted['token_id']}", headers=bearer(admin_token))
    again = await client.delete(f"/v1/tokens/{minted['token_id']}", headers=bearer(admin_token))
    status, body = await verify(client, minted["token"])
    unknown = await client.delete("/v1/tokens/" + "0" * 32, headers=bearer(admin_token))

    assert resp.status == 204 and again.status == 204
    assert status == 401
    assert body["valid"] is False and body["reason"] == "token revoked"
    assert unknown.status == 404


async def test_owner_revokes_own_tokens_but_not_others(client: Client, admin_token: str) -> None:
    """A plain user may DELETE their own token by id with their own token; another's is a 404."""
    created = await client.post(
        "/v1/users", json={"name": "bob", "password": BOB_PASSWORD}, headers=bearer(admin_token)
    )
    assert created.status == 201
    login = await client.post("/v1/login", headers=basic_auth("bob", BOB_PASSWORD))
    bob = await login.json()
    alices = await mint(client, admin_token)

    others = await client.delete(f"/v1/tokens/{alices['token_id']}", headers=bearer(bob["token"]))
    own = await client.delete(f"/v1/tokens/{bob['token_id']}", headers=bearer(bob["token"]))

    assert others.status == 404
    assert own.status == 204
    assert (await verify(client, bob["token"]))[0] == 401
    assert (await verify(client, alices["token"]))[0] == 200


async def test_self_revocation_with_only_the_token_twice_is_harmless(
    client: Client, admin_token: str
) -> None:
    """POST /v1/tokens/revoke with the token alone (no credentials) revokes it; twice is a 204 too."""
    minted = await mint(client, admin_token)

    first = await client.post("/v1/tokens/revoke", json={"token": minted["token"]})
    second = await client.post("/v1/tokens/revoke", json={"token": minted["token"]})
    status, body = await verify(client, minted["token"])
    audit = await client.get("/v1/audit?action=token_revoked", headers=bearer(admin_token))

    assert first.status == 204 and second.status == 204
    assert status == 401 and body["reason"] == "token revoked"
    entries = [e for e in (await audit.json())["entries"] if e["target"] == minted["token_id"]]
    assert len(entries) == 1 and entries[0]["details"]["via"] == "presented"


def _forged(token: str) -> str:
    """The same macaroon with one signature bit flipped."""
    m = decode_token(token, max_bytes=1 << 16, max_caveats=128)
    sig = bytes([m.signature[0] ^ 1]) + m.signature[1:]
    return encode_token(Macaroon(m.identifier, m.caveats, sig, m.location))


async def test_garbage_answers_204_and_changes_nothing(client: Client, admin_token: str) -> None:
    """Bodies that are not JSON, not a token, a bad checksum or a forged signature: 204, nothing revoked."""
    minted = await mint(client, admin_token)
    before = await revoked_ids(client, admin_token)
    bodies: list[Any] = [
        b"not json",
        b"",
        b"[1, 2]",
        {"token": 5},
        {"token": ""},
        {"token": "tsv1_" + "A" * 60 + ".00000000"},
        {"token": minted["token"][:-1] + ("0" if minted["token"][-1] != "0" else "1")},
        {"token": _forged(minted["token"])},
        {"token": base64.b64encode(b"\x02" * 64).decode()},
        {"token": "x" * 70_000},
    ]

    statuses = []
    for body in bodies:
        if isinstance(body, bytes):
            resp = await client.post(
                "/v1/tokens/revoke", data=body, headers={"Content-Type": "application/json"}
            )
        else:
            resp = await client.post("/v1/tokens/revoke", json=body)
        statuses.append(resp.status)

    assert statuses == [204] * len(bodies)
    assert await revoked_ids(client, admin_token) == before
    assert (await verify(client, minted["token"]))[0] == 200


async def test_an_expired_genuine_token_can_still_be_revoked(
    client: Client, admin_token: str, clock: Any
) -> None:
    """Expiry does not matter to self-revocation: a leaked, expired token is marked revoked."""
    minted = await mint(client, admin_token, ttl=60)
    clock.advance(seconds=120)

    resp = await client.post("/v1/tokens/revoke", json={"token": minted["token"]})

    assert resp.status == 204
    assert minted["token_id"] in await revoked_ids(client, admin_token)


async def test_revoke_all_kills_existing_tokens_not_later_ones(
    client: Client, admin_token: str
) -> None:
    """revoke-all for alice: her two tokens die, bob's lives, a token minted afterwards works."""
    first = await mint(client, admin_token)
    second = await mint(client, admin_token, operations=["read"])
    bobs = await mint(client, admin_token, subject="bob")

    resp = await client.post("/v1/subjects/alice/revoke-all", headers=bearer(admin_token))
    later = await mint(client, admin_token)

    assert resp.status == 200 and (await resp.json())["generation"] >= 1
    assert (await verify(client, first["token"]))[0] == 401
    assert (await verify(client, second["token"]))[0] == 401
    assert (await verify(client, bobs["token"]))[0] == 200
    assert (await verify(client, later["token"]))[0] == 200


async def test_revoke_all_needs_an_admin(client: Client, admin_token: str) -> None:
    """A plain token cannot revoke-all (403), nor can nobody (401)."""
    plain = await mint(client, admin_token, subject="carol")

    denied = await client.post("/v1/subjects/alice/revoke-all", headers=bearer(plain["token"]))
    anonymous = await client.post("/v1/subjects/alice/revoke-all")

    assert denied.status == 403 and anonymous.status == 401


async def test_revoking_a_root_key_kills_its_tokens_and_minting_moves_on(
    client: Client, admin_token: str
) -> None:
    """POST /v1/keys/{id}/revoke: tokens on that key get 401 "root key revoked"; new mints work."""
    minted = await mint(client, admin_token)
    assert (await verify(client, minted["token"]))[0] == 200

    resp = await client.post(f"/v1/keys/{minted['key_id']}/revoke", headers=bearer(admin_token))
    status, body = await verify(client, minted["token"])
    # The admin token was on the same key: log in again.
    login = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    fresh_admin = (await login.json())["token"]
    fresh = await mint(client, fresh_admin)
    unknown = await client.post("/v1/keys/nosuchkey/revoke", headers=bearer(fresh_admin))
    keys = await (await client.get("/v1/keys", headers=bearer(fresh_admin))).json()

    assert resp.status == 204
    assert status == 401 and body["reason"] == "root key revoked"
    assert fresh["key_id"] != minted["key_id"]
    assert (await verify(client, fresh["token"]))[0] == 200
    assert unknown.status == 404
    assert minted["key_id"] not in {k["id"] for k in keys["keys"]}


@pytest.mark.parametrize("path", ["/v1/tokens/revoke"])
async def test_revocations_survive_a_restart(
    aiohttp_client: Any, app_config: Any, clock: Any, path: str
) -> None:
    """A new process loads the revoked set at start: a revoked token stays denied."""
    from tokensvc.web.app import create_app

    first = await aiohttp_client(create_app(app_config, clock=clock))
    login = await first.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    admin = (await login.json())["token"]
    minted = await mint(first, admin)
    await first.post(path, json={"token": minted["token"]})
    await first.close()

    second = await aiohttp_client(create_app(app_config, clock=clock))
    status, body = await verify(second, minted["token"])

    assert status == 401 and body["reason"] == "token revoked"
    assert minted["token_id"] in second.app[appkeys.REVOCATIONS].tokens
