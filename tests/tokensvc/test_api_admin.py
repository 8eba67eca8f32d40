"""Admin endpoints over HTTP: who may mint and manage keys, and that key material never leaves.

Every test runs against the real app factory on PostgreSQL and on SQLite (the `client` fixture).
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pymacaroons

from tokensvc.tokens.minting import MintRequest
from tokensvc.web import appkeys

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tests.conftest import FakeClock

    Client = TestClient[web.Request, web.Application]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint(client: Any, admin_token: str, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/tokens", json=body, headers=bearer(admin_token))
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def verify(client: Any, token: str, **context: str) -> int:
    resp = await client.post("/v1/verify", json={"token": token, "context": context})
    return int(resp.status)


def narrowed(token: str, *predicates: str) -> str:
    """The token attenuated by hand with pymacaroons, sent as its plain serialization."""
    m = pymacaroons.Macaroon.deserialize(token[5:].rpartition(".")[0])
    for predicate in predicates:
        m.add_first_party_caveat(predicate)
    return str(m.serialize())


async def assert_json_error(resp: Any, status: int) -> dict[str, Any]:
    """The uniform error shape with `status`; the body."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = dict(await resp.json())
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] and body["error"]["message"]
    return body


def encodings(secret: bytes) -> list[str]:
    """The ways a 32-byte key could show up in text: hex either case, base64 either alphabet, padded or not."""
    forms = [secret.hex(), secret.hex().upper()]
    for b64 in (base64.b64encode(secret), base64.urlsafe_b64encode(secret)):
        forms += [b64.decode(), b64.decode().rstrip("=")]
    return forms


# ---- authorisation ---------------------------------------------------------------------------------


async def test_minting_without_a_token_is_401_json(client: Client) -> None:
    """POST /v1/tokens with no Authorization, or with Basic credentials, is a 401 JSON error."""
    no_header = await client.post("/v1/tokens", json={"subject": "alice"})
    basic = await client.post(
        "/v1/tokens", json={"subject": "alice"}, headers={"Authorization": "Basic YWRtaW46eA=="}
    )
    garbage = await client.post("/v1/tokens", json={"subject": "alice"}, headers=bearer("nope"))

    await assert_json_error(no_header, 401)
    await assert_json_error(basic, 401)
    await assert_json_error(garbage, 401)
    assert "WWW-Authenticate" in no_header.headers


async def test_minting_with_a_non_admin_token_is_403(client: Client, admin_token: str) -> None:
    """A genuine token that is not admin-capable, or admin-capable for a non-user, cannot mint (403)."""
    plain = (await mint(client, admin_token, subject="admin"))["token"]
    # No door makes an admin-capable token for a non-admin (the API refuses it for another
    # subject, tests/security/test_delegation.py; the break-glass door for a non-admin,
    # tests/tokensvc/test_cli.py): the minter itself makes one, as an older release's door did.
    flagged_stranger = (
        await client.app[appkeys.MINTER].mint(
            MintRequest(subject="mallory", ttl=timedelta(minutes=5), admin=True)
        )
    ).token

    as_plain = await client.post("/v1/tokens", json={"subject": "x"}, headers=bearer(plain))
    as_stranger = await client.post(
        "/v1/tokens", json={"subject": "x"}, headers=bearer(flagged_stranger)
    )
    keys_as_plain = await client.get("/v1/keys", headers=bearer(plain))

    await assert_json_error(as_plain, 403)
    await assert_json_error(as_stranger, 403)
    await assert_json_error(keys_as_plain, 403)


async def test_admin_token_narrowed_to_keys_read_can_list_keys_but_not_mint(
    client: Client, admin_token: str
) -> None:
    """An admin token narrowed with pymacaroons to `allow keys:read` lists keys (200) and cannot mint or rotate (403)."""
    read_only = narrowed(admin_token, "allow keys:read")

    minting = await client.post("/v1/tokens", json={"subject": "x"}, headers=bearer(read_only))
    rotating = await client.post("/v1/keys/rotate", headers=bearer(read_only))
    listing = await client.get("/v1/keys", headers=bearer(read_only))

    await assert_json_error(minting, 403)
    await assert_json_error(rotating, 403)
    assert listing.status == 200, await listing.text()
    assert (await listing.json())["keys"]


async def test_admin_token_narrowed_to_another_audience_cannot_call_the_api(
    client: Client, admin_token: str
) -> None:
    """An admin token minted for audience `files` only is refused by tokensvc's own API (403)."""
    files_only = (await mint(client, admin_token, subject="admin", admin=True, audience=["files"]))[
        "token"
    ]

    resp = await client.get("/v1/keys", headers=bearer(files_only))

    await assert_json_error(resp, 403)


async def test_expired_or_tampered_admin_token_is_401(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    """Admin calls with a tampered token, or after the token expired, are 401."""
    tampered = admin_token[:-1] + ("0" if admin_token[-1] != "0" else "1")
    short = (await mint(client, admin_token, subject="admin", admin=True, ttl=60))["token"]

    with_tampered = await client.get("/v1/keys", headers=bearer(tampered))
    clock.advance(seconds=61)
    with_expired = await client.get("/v1/keys", headers=bearer(short))

    await assert_json_error(with_tampered, 401)
    await assert_json_error(with_expired, 401)


# ---- keys --------------------------------------------------------------------------------------------


async def test_key_listing_never_contains_key_material(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    """GET /v1/keys shows metadata only: no root key (or its derived HMAC key) in any encoding."""
    clock.advance(minutes=1)
    rotated = await client.post("/v1/keys/rotate", headers=bearer(admin_token))
    keyring = client.app[appkeys.KEYRING]
    current = await keyring.current()

    resp = await client.get("/v1/keys", headers=bearer(admin_token))

    texts = {"listing": await resp.text(), "rotate": await rotated.text()}
    body = await resp.json()
    assert rotated.status == 201
    assert resp.status == 200
    assert {k["id"] for k in body["keys"]} >= {current.id}
    leaks = []
    for info in body["keys"]:
        assert set(info) == {"id", "created_at", "expires_at", "current"}
        key = await keyring.get(info["id"])
        assert key is not None
        for secret in (key.secret.reveal(), key.derived):
            leaks += [
                (name, info["id"])
                for form in encodings(secret)
                for name, text in texts.items()
                if form in text
            ]
    assert leaks == []


async def test_rotation_makes_a_new_current_key_and_old_tokens_keep_working(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    """POST /v1/keys/rotate is a 201 for a new key that becomes current; tokens minted before still verify."""
    before = await mint(client, admin_token, subject="alice")
    clock.advance(minutes=1)

    resp = await client.post("/v1/keys/rotate", headers=bearer(admin_token))

    rotated = await resp.json()
    assert resp.status == 201, rotated
    assert set(rotated) == {"id", "created_at", "expires_at", "current"}
    assert rotated["id"] != before["key_id"]
    listing = await (await client.get("/v1/keys", headers=bearer(admin_token))).json()
    current = [k["id"] for k in listing["keys"] if k["current"]]
    assert current == [rotated["id"]]
    after = await mint(client, admin_token, subject="alice")
    assert after["key_id"] == rotated["id"]
    assert await verify(client, before["token"]) == 200
    assert await verify(client, after["token"]) == 200
    assert await verify(client, admin_token) == 200


# ---- mint request validation ---------------------------------------------------------------------------


async def test_mint_rejects_a_ttl_beyond_what_a_key_can_back_and_other_bad_ttls(
    client: Client, admin_token: str
) -> None:
    """ttl of 24 h (longer than lifetime − interval), zero, negative, a non-duration or a boolean is a 400."""
    bad = ["24h", 86400, 23 * 3600 + 1, 0, -5, "banana", True, "1h-"]

    results = {
        repr(ttl): await client.post(
            "/v1/tokens", json={"subject": "alice", "ttl": ttl}, headers=bearer(admin_token)
        )
        for ttl in bad
    }
    longest = await client.post(
        "/v1/tokens", json={"subject": "alice", "ttl": "23h"}, headers=bearer(admin_token)
    )

    assert {k: r.status for k, r in results.items()} == dict.fromkeys(results, 400)
    for resp in results.values():
        await assert_json_error(resp, 400)
    assert longest.status == 201, await longest.text()


async def test_mint_rejects_unknown_fields_and_bad_values(client: Client, admin_token: str) -> None:
    """An unknown field (named in the message), a bad CIDR, a non-list, a non-boolean admin or a non-object body is a 400."""
    bodies: dict[str, Any] = {
        "unknown": {"subject": "alice", "sudo": True},
        "cidr": {"subject": "alice", "cidrs": ["10.0.0.0/33"]},
        "ops": {"subject": "alice", "operations": {"read": True}},
        "admin": {"subject": "alice", "admin": "yes"},
        "subject": {"subject": 42},
        "control": {"subject": "ali\nce"},
        "array": ["alice"],
    }

    results = {
        name: await client.post("/v1/tokens", json=body, headers=bearer(admin_token))
        for name, body in bodies.items()
    }

    assert {k: r.status for k, r in results.items()} == dict.fromkeys(bodies, 400)
    unknown = await assert_json_error(results["unknown"], 400)
    assert "sudo" in unknown["error"]["message"]
