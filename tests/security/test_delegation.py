"""Attacks on delegation: a token must never mint a token more powerful than itself (hole B1).

Each test runs on the embedded shape and on PostgreSQL + Redis (tests/security/conftest.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from tests.security.attack import attenuated, call, create_user, verify

ADMIN_READS = [
    ("GET", "/v1/users"),
    ("POST", "/v1/keys/rotate"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/tokens"),
]


async def mint(client: Any, token: str, **body: Any) -> tuple[int, Any]:
    return await call(client, "POST", "/v1/tokens", token, json=body)


async def minted(client: Any, token: str, **body: Any) -> dict[str, Any]:
    status, answer = await mint(client, token, **body)
    assert status == 201, answer
    return dict(answer)


def expiry(answer: dict[str, Any]) -> float:
    return datetime.fromisoformat(answer["expires_at"]).timestamp()


async def mint_only(client: Any, root: str) -> dict[str, Any]:
    """The reproduction's narrowed token: admin, tokens:mint only, on tokensvc, for 10 minutes."""
    return await minted(
        client,
        root,
        subject="admin",
        admin=True,
        operations=["tokens:mint"],
        audience="tokensvc",
        ttl="10m",
    )


async def test_a_mint_only_admin_token_cannot_mint_a_longer_lived_admin_token(
    shaped: Any, root: str
) -> None:
    """The reproduction: the narrowed token asking for a full 8-hour admin token is refused."""
    narrowed = (await mint_only(shaped, root))["token"]

    status, body = await mint(shaped, narrowed, subject="admin", admin=True, ttl="8h")

    assert status == 403, body
    assert "outlive" in body["error"]["message"]


async def test_an_admin_token_minted_by_a_mint_only_token_can_do_nothing_else(
    shaped: Any, root: str
) -> None:
    """Within its lifetime the narrowed token mints an admin token, but the child inherits the
    narrowing: no user list, no key rotation, no audit, no registry."""
    narrowed = (await mint_only(shaped, root))["token"]

    child = (await minted(shaped, narrowed, subject="admin", admin=True, ttl="5m"))["token"]
    results = {path: (await call(shaped, m, path, child))[0] for m, path in ADMIN_READS}

    assert results == {path: 403 for _, path in ADMIN_READS}
    assert (await mint(shaped, child, subject="admin", ttl="1m"))[0] == 201


async def test_a_holder_added_allow_condition_binds_every_child(shaped: Any, root: str) -> None:
    """A full admin token its holder narrowed with the bakery condition `allow tokens:mint` mints
    only children that are as narrow, and none that outlives it."""
    narrowed = attenuated(root, "allow tokens:mint", f"time-before {_rfc3339(time.time() + 600)}")

    too_long = await mint(shaped, narrowed, subject="admin", admin=True, ttl="8h")
    child = (await minted(shaped, narrowed, subject="admin", admin=True, ttl="5m"))["token"]
    results = {path: (await call(shaped, m, path, child))[0] for m, path in ADMIN_READS}

    assert too_long[0] == 403
    assert results == {path: 403 for _, path in ADMIN_READS}


async def test_a_narrowed_token_cannot_mint_for_others_beyond_its_own_lifetime(
    shaped: Any, root: str
) -> None:
    """For any subject, a TTL beyond the minting token's is refused, and the default TTL (1 h)
    is shortened to end with it."""
    narrowed = await mint_only(shaped, root)

    longer = await mint(shaped, narrowed["token"], subject="mallory", ttl="8h")
    defaulted = await minted(shaped, narrowed["token"], subject="mallory")
    service = await mint(shaped, narrowed["token"], subject="bot", service=True, ttl="30d")

    assert longer[0] == 403
    assert service[0] == 403
    assert expiry(defaulted) <= expiry(narrowed)


async def test_operations_outside_the_minting_token_are_refused_and_the_rest_inherited(
    shaped: Any, root: str
) -> None:
    """A child may not list an operation its parent lacks; a child that lists none inherits the
    parent's operations instead of getting all of them."""
    parent = (
        await minted(
            shaped,
            root,
            subject="admin",
            admin=True,
            operations=["tokens:mint", "read"],
            ttl="10m",
        )
    )["token"]

    wider = await mint(shaped, parent, subject="alice", operations=["write"], ttl="5m")
    inherited = (await minted(shaped, parent, subject="alice", ttl="5m"))["token"]

    assert wider[0] == 403
    assert (await verify(shaped, inherited, operation="read"))[0] == 200
    assert (await verify(shaped, inherited, operation="write"))[0] == 403
    assert (await verify(shaped, inherited))[0] == 403


async def test_a_deny_binds_a_child_as_verify_reads_it(shaped: Any, root: str) -> None:
    """A holder-added `deny write` refuses a child that names write; an empty `deny` denies
    nothing, as /v1/verify reads it (red team, helper-33: delegation read it as denying every
    operation, introspection as allowing none)."""
    parent = (
        await minted(
            shaped, root, subject="admin", admin=True, operations=["tokens:mint", "read", "write"]
        )
    )["token"]
    denying, empty = attenuated(parent, "deny write"), attenuated(parent, "deny")

    refused = await mint(shaped, denying, subject="alice", operations=["write"], ttl="5m")
    child = (await minted(shaped, empty, subject="alice", operations=["read"], ttl="5m"))["token"]

    assert refused[0] == 403, refused
    assert (await verify(shaped, empty, operation="read"))[0] == 200
    assert (await verify(shaped, child, operation="read"))[0] == 200


async def test_resources_audiences_and_networks_stay_within_the_parent(
    shaped: Any, root: str
) -> None:
    """Resources, audiences and client networks of a child must lie within the parent's, and a
    child that names none inherits the parent's."""
    parent = (
        await minted(
            shaped,
            root,
            subject="admin",
            admin=True,
            resources=["/v1/*", "/docs/*"],
            audience=["tokensvc", "files"],
            cidrs=["127.0.0.0/8", "10.0.0.0/8"],
            ttl="10m",
        )
    )["token"]

    refused = {
        "resources": await mint(shaped, parent, subject="a", resources=["/etc/*"], ttl="5m"),
        "resource prefix": await mint(shaped, parent, subject="a", resources=["/d*"], ttl="5m"),
        "audience": await mint(shaped, parent, subject="a", audience="billing", ttl="5m"),
        "cidrs": await mint(shaped, parent, subject="a", cidrs=["192.168.0.0/16"], ttl="5m"),
        "wider cidr": await mint(shaped, parent, subject="a", cidrs=["10.0.0.0/7"], ttl="5m"),
    }
    narrower = await minted(
        shaped,
        parent,
        subject="a",
        resources=["/docs/a/*"],
        audience="files",
        cidrs=["10.1.0.0/16"],
        ttl="5m",
    )
    inherited = (await minted(shaped, parent, subject="a", ttl="5m"))["token"]
    context = {"resource": "/docs/1", "audience": "files"}

    assert {k: v[0] for k, v in refused.items()} == dict.fromkeys(refused, 403), refused
    assert (
        await verify(
            shaped, narrower["token"], client_ip="10.1.2.3", resource="/docs/a/1", audience="files"
        )
    )[0] == 200
    assert (await verify(shaped, narrower["token"], client_ip="10.1.2.3", **context))[0] == 403
    assert (await verify(shaped, inherited, client_ip="10.9.9.9", **context))[0] == 200
    assert (await verify(shaped, inherited, client_ip="198.51.100.9", **context))[0] == 403
    assert (await verify(shaped, inherited, client_ip="10.9.9.9", resource="/etc/passwd"))[0] == 403


async def test_an_admin_token_cannot_be_minted_for_another_admin(shaped: Any, root: str) -> None:
    """An admin-capable child only for the minting token's own subject: no admin can mint a token
    that acts as another admin (and is recorded in the audit trail as them)."""
    await create_user(shaped, root, "bob", "his long lantern passphrase", roles=["admin"])

    status, body = await mint(shaped, root, subject="bob", admin=True, ttl="5m")

    assert status == 403, body


async def test_only_a_token_allowed_to_outlive_may_mint_beyond_its_own_expiry(
    shaped: Any, root: str
) -> None:
    """An unrestricted admin token may mint a long-lived service token; a narrowed one may only if
    its caveats list `tokens:outlive`, and its children then inherit the same narrowing."""
    outliving = (
        await minted(
            shaped,
            root,
            subject="admin",
            admin=True,
            operations=["tokens:mint", "tokens:outlive"],
            ttl="10m",
        )
    )["token"]

    from_root = await minted(shaped, root, subject="ci", service=True, ttl="30d")
    from_outliving = await minted(shaped, outliving, subject="admin", admin=True, ttl="20h")
    grandchild_reads = await call(shaped, "GET", "/v1/users", from_outliving["token"])

    assert from_root["kind"] == "service"
    assert expiry(from_outliving) > time.time() + 19 * 3600
    assert grandchild_reads[0] == 403


async def test_a_token_declaring_attributes_cannot_mint(shaped: Any, root: str) -> None:
    """Claims about the minting token's subject (`declared`) cannot be carried onto another
    subject's token, so a token carrying them cannot mint at all."""
    declaring = attenuated(root, "declared username admin")

    status, body = await mint(shaped, declaring, subject="alice", ttl="5m")

    assert status == 403, body


async def test_a_token_with_a_third_party_caveat_cannot_mint(shaped: Any, root: str) -> None:
    """A token that needs a discharge is not accepted by the API (it takes none), so it cannot
    mint children that would escape the third party's condition."""
    import pymacaroons

    macaroon = pymacaroons.Macaroon.deserialize(root[5:].rpartition(".")[0])
    macaroon.add_third_party_caveat("https://elsewhere.example", "k" * 32, "user-is alice")

    status, _ = await mint(shaped, macaroon.serialize(), subject="alice", ttl="5m")

    assert status == 401


def _rfc3339(ts: float) -> str:
    from caveats import format_rfc3339

    return format_rfc3339(ts)


async def test_a_token_narrowed_in_time_cannot_mint_past_that_time(shaped: Any, root: str) -> None:
    """An unrestricted admin token its holder narrowed only by time (`time-before` or a typed
    expiry) may not mint a child, admin or service, that lives beyond that time."""
    from caveats import Expiry, encode

    soon = time.time() + 600
    by_condition = attenuated(root, f"time-before {_rfc3339(soon)}")
    by_caveat = attenuated(root, encode(Expiry(int(soon))).decode())

    results = [
        (await mint(shaped, parent, subject="admin", admin=True, ttl="20h"))[0]
        for parent in (by_condition, by_caveat)
    ] + [
        (await mint(shaped, parent, subject="ci", service=True, ttl="300d"))[0]
        for parent in (by_condition, by_caveat)
    ]

    assert results == [403, 403, 403, 403]


async def test_introspection_reports_no_wider_scope_than_verify_enforces(
    shaped: Any, root: str
) -> None:
    """A token narrowed with the bakery conditions `allow` / `deny` introspects with exactly the
    operations /v1/verify would allow."""
    plain = (await minted(shaped, root, subject="svc", operations=["read", "write"]))["token"]
    allowed = attenuated(plain, "allow read")
    denied = attenuated(plain, "deny write")

    scopes = []
    for token in (plain, allowed, denied):
        resp = await shaped.post(
            "/v1/introspect", data={"token": token}, headers={"Authorization": f"Bearer {root}"}
        )
        scopes.append((await resp.json()).get("scope"))

    assert scopes == ["read write", "read", "read"]


def _narrowed(token: str, *items: Any) -> str:
    from caveats import encode

    return attenuated(token, *(encode(item).decode() for item in items))


def _in(seconds: int) -> int:
    return int(time.time()) + seconds


async def test_a_token_narrowed_in_time_cannot_outlive_through_a_short_child(
    shaped: Any, root: str
) -> None:
    """Red team: a holder narrowed the admin token to one minute; it correctly refused an 8-hour
    child, but minted a 50-second admin child, and that child — whose own expiry was never
    narrowed — minted an 8-hour admin token and a 30-day service token. A token minted by one
    that could not outlive itself is bounded the same way (the registry's `bounded`), and so are
    its descendants; the bakery's `time-before` narrowing likewise."""
    from caveats import Expiry

    stamp = datetime.fromtimestamp(_in(60), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for short in (
        _narrowed(root, Expiry(_in(60))),
        attenuated(root, f"time-before {stamp}"),
    ):
        child = (await minted(shaped, short, subject="admin", admin=True, ttl="50s"))["token"]

        long_admin = await mint(shaped, child, subject="admin", admin=True, ttl="8h")
        service = await mint(shaped, child, subject="ci", service=True, ttl="30d")
        grandchild = await minted(shaped, child, subject="admin", admin=True)

        assert (long_admin[0], service[0]) == (403, 403), (long_admin, service)
        assert expiry(grandchild) <= time.time() + 60


async def test_a_narrowed_admin_token_cannot_create_an_admin_more_powerful_than_itself(
    shaped: Any, root: str
) -> None:
    """Red team: a token narrowed to `users:write` on /v1/users for a minute created a user with
    the admin role, whose login then rotated keys and minted a 30-day admin service token. Now
    granting a role, or taking over an account that holds one (its password, its second factor),
    needs an unrestricted admin token; narrowed tokens still manage role-less users."""
    from caveats import Expiry, Operations, Resources

    await create_user(shaped, root, "opsadmin", "first long copper passphrase", roles=["admin"])
    narrowed_tokens = {
        "operations": _narrowed(
            root, Operations(("users:write",)), Resources(("/v1/users", "/v1/users/*"))
        ),
        "time": _narrowed(root, Expiry(_in(60))),
    }
    for why, narrowed in narrowed_tokens.items():
        attempts = {
            "create admin": await call(
                shaped,
                "POST",
                "/v1/users",
                narrowed,
                json={
                    "name": f"mallory-{why}",
                    "password": "Zq8-horse-staple-771",
                    "roles": ["admin"],
                },
            ),
            "grant admin": await call(
                shaped, "PATCH", "/v1/users/opsadmin", narrowed, json={"roles": ["admin", "ops"]}
            ),
            "take over": await call(
                shaped,
                "PATCH",
                "/v1/users/opsadmin",
                narrowed,
                json={"password": "Zq8-horse-staple-772"},
            ),
            "drop mfa": await call(shaped, "DELETE", "/v1/users/opsadmin/mfa", narrowed),
        }
        assert {k: v[0] for k, v in attempts.items()} == dict.fromkeys(attempts, 403), why
        status, body = await call(
            shaped,
            "POST",
            "/v1/users",
            narrowed,
            json={"name": f"plain-{why}", "password": "Zq8-horse-staple-773"},
        )
        assert status == 201, (why, body)

    status, body = await call(
        shaped,
        "POST",
        "/v1/users",
        root,
        json={"name": "second-admin", "password": "Zq8-horse-staple-774", "roles": ["admin"]},
    )
    assert status == 201, body


async def test_a_narrowed_admin_token_cannot_revive_or_unlock_an_admin(
    shaped: Any, root: str
) -> None:
    """Red team: a token narrowed to `users:write` could not grant the admin role, but it could
    re-enable a disabled admin (who then logged in as one), and clear an admin's lockout,
    which slows guesses at that admin's password. Both need an unrestricted token; a role-less
    user's are still a narrowed token's to manage."""
    from caveats import Operations

    await create_user(shaped, root, "oldadmin", "first long copper passphrase", roles=["admin"])
    await create_user(shaped, root, "plainuser", "first long copper passphrase")
    for name in ("oldadmin", "plainuser"):
        status, _ = await call(shaped, "PATCH", f"/v1/users/{name}", root, json={"disabled": True})
        assert status == 200
    narrowed = _narrowed(root, Operations(("users:write",)))

    revive_admin = await call(
        shaped, "PATCH", "/v1/users/oldadmin", narrowed, json={"disabled": False}
    )
    unlock_admin = await call(shaped, "DELETE", "/v1/users/oldadmin/lockout", narrowed)
    revive_plain = await call(
        shaped, "PATCH", "/v1/users/plainuser", narrowed, json={"disabled": False}
    )
    unlock_plain = await call(shaped, "DELETE", "/v1/users/plainuser/lockout", narrowed)

    assert (revive_admin[0], unlock_admin[0]) == (403, 403), (revive_admin, unlock_admin)
    assert (revive_plain[0], unlock_plain[0]) == (200, 204)
