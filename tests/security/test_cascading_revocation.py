"""Attacks on revocation through delegation: a token minted with a leaked token must die with it.

Before lineage, an admin token could mint tokens for *other* subjects (a service's token, say)
that survived every revocation of the minting token: revoking it by id, reporting it leaked,
revoke-all of its subject, changing its owner's password or deleting the owner. An attacker who
held a leaked admin token for a minute kept access for as long as the children lived (up to the
longest TTL, 23 h for a rotating key, a year for a service token). Now every mint with a token
records its parent, and each of those revocations revokes the token's descendants, recursively,
as Vault revokes a token's children. Each test runs on the embedded shape and on PostgreSQL +
Redis.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, make_config
from tests.security.attack import call, create_user, login, token_id_of, verify
from tests.security.races import dsn, open_transaction, pg_client

PASSWORD = "first long copper passphrase"


async def mint(client: Any, token: str, **body: Any) -> tuple[str, str]:
    """(token, token id) of a token minted with `token`."""
    status, answer = await call(client, "POST", "/v1/tokens", token, json=body)
    assert status == 201, answer
    return str(answer["token"]), str(answer["token_id"])


async def listed(client: Any, admin: str, token_id: str) -> dict[str, Any]:
    status, body = await call(client, "GET", "/v1/tokens?include_revoked=true&limit=1000", admin)
    assert status == 200, body
    (row,) = [t for t in body["tokens"] if t["token_id"] == token_id]
    return dict(row)


async def leak_and_persist(client: Any, leaked: str) -> dict[str, str]:
    """What an attacker with a leaked admin token makes to keep access: a long service-style
    token for another subject, a service token (its own root key), and a grandchild through an
    admin child of the same subject."""
    child, _ = await mint(client, leaked, subject="svc-a", ttl="20h")
    service, _ = await mint(client, leaked, subject="svc-b", ttl="30d", service=True)
    admin_child, _ = await mint(client, leaked, subject="admin", admin=True, ttl="20h")
    grandchild, _ = await mint(client, admin_child, subject="svc-c", ttl="20h")
    tokens = {
        "child": child,
        "service": service,
        "admin child": admin_child,
        "grandchild": grandchild,
    }
    for name, token in tokens.items():
        assert (await verify(client, token))[0] == 200, name
    return tokens


async def statuses(client: Any, tokens: dict[str, str]) -> dict[str, int]:
    return {name: (await verify(client, token))[0] for name, token in tokens.items()}


async def test_revoking_a_leaked_token_revokes_every_token_minted_with_it(
    shaped: Any, root: str
) -> None:
    """The reproduction: revoke the leaked token by id; what it minted for others dies with it,
    and the registry says so (parent, revoked), while the operator's own token lives on."""
    leaked = await login(shaped, "admin", ADMIN_PASSWORD)
    persisted = await leak_and_persist(shaped, leaked)
    leaked_id = await token_id_of(shaped, leaked)

    assert (await call(shaped, "DELETE", f"/v1/tokens/{leaked_id}", root))[0] == 204

    assert await statuses(shaped, persisted) == dict.fromkeys(persisted, 401)
    child_row = await listed(shaped, root, await _id_in_audit(shaped, root, "svc-a"))
    assert (child_row["parent_id"], child_row["status"]) == (leaked_id, "revoked")
    assert (await verify(shaped, root))[0] == 200


async def _id_in_audit(client: Any, admin: str, subject: str) -> str:
    """The id of the token minted for `subject` (from the audit trail)."""
    status, body = await call(client, "GET", "/v1/audit?action=token_minted&limit=1000", admin)
    assert status == 200, body
    (entry,) = [e for e in body["entries"] if e["details"].get("subject") == subject]
    return str(entry["target"])


async def test_reporting_a_token_leaked_revokes_what_it_minted(shaped: Any, root: str) -> None:
    """POST /v1/tokens/revoke (whoever holds the token burns it) cascades the same way."""
    leaked = await login(shaped, "admin", ADMIN_PASSWORD)
    persisted = await leak_and_persist(shaped, leaked)

    resp = await shaped.post("/v1/tokens/revoke", json={"token": leaked})
    assert resp.status in (200, 204), await resp.text()

    assert await statuses(shaped, persisted) == dict.fromkeys(persisted, 401)


@pytest.mark.parametrize("event", ["revoke-all", "password", "delete"])
async def test_every_subject_revocation_revokes_what_its_tokens_minted(
    shaped: Any, root: str, event: str
) -> None:
    """Revoke-all of the leaked token's subject, a password change and deleting the user each
    kill the subject's tokens and, now, every token minted with one of them."""
    await create_user(shaped, root, "ops", PASSWORD, roles=["admin"])
    leaked = await login(shaped, "ops", PASSWORD)
    persisted = await leak_and_persist_as(shaped, leaked, "ops")

    if event == "revoke-all":
        status, _ = await call(shaped, "POST", "/v1/subjects/ops/revoke-all", root)
        assert status == 200
    elif event == "password":
        status, _ = await call(
            shaped, "PATCH", "/v1/users/ops", root, json={"password": "second long copper pass"}
        )
        assert status == 200
    else:
        assert (await call(shaped, "DELETE", "/v1/users/ops", root))[0] == 204

    assert await statuses(shaped, persisted) == dict.fromkeys(persisted, 401)
    assert (await verify(shaped, root))[0] == 200


async def leak_and_persist_as(client: Any, leaked: str, subject: str) -> dict[str, str]:
    child, _ = await mint(client, leaked, subject="svc-a", ttl="20h")
    admin_child, _ = await mint(client, leaked, subject=subject, admin=True, ttl="20h")
    grandchild, _ = await mint(client, admin_child, subject="svc-c", ttl="20h")
    tokens = {"child": child, "admin child": admin_child, "grandchild": grandchild}
    for name, token in tokens.items():
        assert (await verify(client, token))[0] == 200, name
    return tokens


async def test_each_cascaded_revocation_is_audited_with_its_cause(shaped: Any, root: str) -> None:
    """The audit trail names every token the cascade took, and why."""
    leaked = await login(shaped, "admin", ADMIN_PASSWORD)
    _, child_id = await mint(shaped, leaked, subject="svc-a", ttl="1h")
    leaked_id = await token_id_of(shaped, leaked)

    assert (await call(shaped, "DELETE", f"/v1/tokens/{leaked_id}", root))[0] == 204

    status, body = await call(shaped, "GET", "/v1/audit?action=token_revoked", root)
    assert status == 200
    by_target = {e["target"]: e["details"] for e in body["entries"]}
    assert by_target[leaked_id]["descendants"] == 1
    assert by_target[child_id] == {
        "via": "cascade",
        "cause": leaked_id,
        "by_token": await token_id_of(shaped, root),  # the token the revocation was done with
    }


async def test_a_cascade_reaches_a_replica_that_only_polls(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """Replicas without Redis learn a cascade from the registry like any revocation: the child,
    cached as valid on the other replica, is refused there within the refresh bound."""
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    config = make_config(database_url=pg_url, data_dir=data_dir)
    one = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    two = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    operator = await login(one, "admin", ADMIN_PASSWORD)
    leaked = await login(one, "admin", ADMIN_PASSWORD)
    child, _ = await mint(one, leaked, subject="svc-a", ttl="20h")
    assert (await verify(two, child))[0] == 200  # cached on `two`
    leaked_id = await token_id_of(one, leaked)

    assert (await call(one, "DELETE", f"/v1/tokens/{leaked_id}", operator))[0] == 204

    for _ in range(300):
        if (await verify(two, child))[0] == 401:
            break
        await asyncio.sleep(0.01)
    assert (await verify(two, child))[0] == 401


# ---- the race between a mint and the revocation of its parent (PostgreSQL row locks) ----------


async def test_a_mint_racing_its_parents_revocation_is_refused(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """The parent's revocation has updated its row but not committed when a mint with it checks
    the parent (and finds it live): the mint's transaction waits on the parent's row and, once
    the revocation commits, refuses, instead of committing a child the revocation never saw."""
    client = await pg_client(aiohttp_client, pg_url, data_dir, clock)
    leaked = await login(client, "admin", ADMIN_PASSWORD)
    leaked_id = await token_id_of(client, leaked)
    async with open_transaction(pg_url) as (revoker, revoking):
        await revoker.execute(
            "UPDATE tokens SET revoked_at = $1 WHERE token_id = $2", datetime.now(UTC), leaked_id
        )
        minting = asyncio.ensure_future(
            call(client, "POST", "/v1/tokens", leaked, json={"subject": "svc-a", "ttl": "20h"})
        )
        await asyncio.sleep(0.5)
        assert not minting.done(), "the mint did not wait for the parent's row"

        await revoking.commit()
        status, body = await minting

    assert status == 401, body
    rows = await _children(pg_url, leaked_id)
    assert rows == []


async def test_a_revocation_racing_a_mint_with_the_parent_revokes_the_child(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """A mint holds its parent's row (share lock) and has written its child, not yet committed,
    when the parent is revoked: the revocation waits for the mint, then its walk finds the
    child and revokes it too."""
    client = await pg_client(aiohttp_client, pg_url, data_dir, clock)
    operator = await login(client, "admin", ADMIN_PASSWORD)
    leaked = await login(client, "admin", ADMIN_PASSWORD)
    leaked_id = await token_id_of(client, leaked)
    async with open_transaction(pg_url) as (minter, minting):
        await minter.execute("SELECT 1 FROM tokens WHERE token_id = $1 FOR SHARE", leaked_id)
        now = datetime.now(UTC)
        await minter.execute(
            "INSERT INTO tokens (token_id, subject, description, created_by, created_at,"
            " expires_at, admin, kind, parent_id)"
            " VALUES ($1, 'svc-a', '', 'admin', $2, $3, false, 'rotating', $4)",
            "c" * 32,
            now,
            now.replace(year=now.year + 1),
            leaked_id,
        )
        revoking = asyncio.ensure_future(
            call(client, "DELETE", f"/v1/tokens/{leaked_id}", operator)
        )
        await asyncio.sleep(0.5)
        assert not revoking.done(), "the revocation did not wait for the mint"

        await minting.commit()
        status, _ = await revoking

    assert status == 204
    assert await _children(pg_url, leaked_id) == [("c" * 32, True)]


async def _children(pg_url: str, parent_id: str) -> list[tuple[str, bool]]:
    import asyncpg

    conn = await asyncpg.connect(dsn(pg_url))
    try:
        rows = await conn.fetch(
            "SELECT token_id, revoked_at IS NOT NULL AS revoked FROM tokens WHERE parent_id = $1",
            parent_id,
        )
    finally:
        await conn.close()
    return [(r["token_id"], r["revoked"]) for r in rows]


def key_id_of(token: str) -> str:
    from tokensvc.macaroons.identifier import decode_identifier
    from tokensvc.macaroons.tokenformat import decode_token

    macaroon = decode_token(token, max_bytes=16384, max_caveats=128)
    return decode_identifier(macaroon.identifier).key_id


async def test_revoking_a_root_key_revokes_what_its_tokens_minted(shaped: Any, root: str) -> None:
    """A compromised root key: every token it signed dies, and now so does every token minted
    with one of them, though signed by a newer key or a service token's own."""
    leaked = await login(shaped, "admin", ADMIN_PASSWORD)
    leaked_key = key_id_of(leaked)
    assert (await call(shaped, "POST", "/v1/keys/rotate", root))[0] in (200, 201)
    persisted = {
        "child": (await mint(shaped, leaked, subject="svc-a", ttl="20h"))[0],
        "service": (await mint(shaped, leaked, subject="svc-b", ttl="30d", service=True))[0],
    }
    operator = await login(shaped, "admin", ADMIN_PASSWORD)  # signed by the new key
    assert key_id_of(operator) != leaked_key

    status, body = await call(shaped, "POST", f"/v1/keys/{leaked_key}/revoke", operator)
    assert status in (200, 204), body

    assert await statuses(shaped, persisted) == dict.fromkeys(persisted, 401)
    assert (await verify(shaped, operator))[0] == 200
