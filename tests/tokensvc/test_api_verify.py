"""POST /v1/verify over HTTP: genuine, tampered, expired, purged, narrowed and discharged tokens.

Every test runs against the real app factory on PostgreSQL and on SQLite (the `client` fixture).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pymacaroons
from sqlalchemy import text

import caveats
from caveats import Operations, Subject
from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth
from tokensvc.macaroons import chain
from tokensvc.macaroons.macaroon import Caveat, Macaroon
from tokensvc.macaroons.tokenformat import decode_token, encode_token
from tokensvc.web import appkeys

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    Client = TestClient[web.Request, web.Application]

# ---- helpers ---------------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint(client: Any, admin_token: str, **body: Any) -> dict[str, Any]:
    """Mint through POST /v1/tokens with the admin's token; the response body."""
    resp = await client.post("/v1/tokens", json=body, headers=bearer(admin_token))
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def verify(
    client: Any, token: str, discharges: list[str] | None = None, /, **context: str
) -> tuple[int, dict[str, Any]]:
    """POST /v1/verify; the status and the JSON body."""
    body: dict[str, Any] = {"token": token}
    if discharges is not None:
        body["discharges"] = discharges
    if context:
        body["context"] = context
    resp = await client.post("/v1/verify", json=body)
    return resp.status, dict(await resp.json())


def pymacaroon(token: str) -> pymacaroons.Macaroon:
    """A `tsv1_` token as pymacaroons sees it: prefix and checksum stripped."""
    return pymacaroons.Macaroon.deserialize(token[5:].rpartition(".")[0])


def parse(token: str) -> Macaroon:
    return decode_token(token, max_bytes=1 << 20, max_caveats=1000)


def rfc3339(clock: FakeClock, **delta: float) -> str:
    return (clock.now + timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def assert_refused(status: int, body: dict[str, Any], expected_status: int) -> None:
    """The /v1/verify refusal shape: `valid: false`, a reason, and the uniform error object."""
    assert status == expected_status, body
    assert body["valid"] is False
    assert isinstance(body["reason"], str) and body["reason"]
    assert set(body["error"]) == {"code", "message"}


# ---- a genuine token -------------------------------------------------------------------------------


async def test_minted_token_verifies_with_what_it_says(client: Client, admin_token: str) -> None:
    """A fresh token verifies, as `tsv1_` and as plain pymacaroons, with subject, id, expiry, no declarations."""
    minted = await mint(client, admin_token, subject="alice", ttl=600)
    plain = pymacaroon(minted["token"]).serialize()

    status, body = await verify(client, minted["token"])
    plain_status, plain_body = await verify(client, plain)

    assert status == 200, body
    assert body == {
        "valid": True,
        "subject": "alice",
        "token_id": minted["token_id"],
        "expires_at": minted["expires_at"],
        "declared": {},
        "mfa": False,
    }
    assert (plain_status, plain_body) == (200, body)


# ---- tampering -------------------------------------------------------------------------------------


async def test_flipped_character_is_refused_by_the_checksum(
    client: Client, admin_token: str
) -> None:
    """A token with one payload character changed (checksum not recomputed) is a 401 naming the checksum."""
    token = (await mint(client, admin_token, subject="alice"))["token"]
    i = len(token) // 2
    tampered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]

    status, body = await verify(client, tampered)

    assert_refused(status, body, 401)
    assert "checksum" in body["reason"]


async def test_altered_or_dropped_caveat_is_refused_by_the_signature(
    client: Client, admin_token: str
) -> None:
    """Rewriting a caveat (alice → admin) or dropping one, then re-encoding well-formed, is a 401 signature mismatch."""
    token = (await mint(client, admin_token, subject="alice", operations=["read"]))["token"]
    macaroon = parse(token)
    alice, ops = caveats.encode(Subject("alice")), caveats.encode(Operations(("read",)))
    admin = Caveat(caveats.encode(Subject("admin")))
    altered = Macaroon(
        macaroon.identifier,
        tuple(admin if c.cid == alice else c for c in macaroon.caveats),
        macaroon.signature,
        macaroon.location,
    )
    dropped = Macaroon(
        macaroon.identifier,
        tuple(c for c in macaroon.caveats if c.cid != ops),
        macaroon.signature,
        macaroon.location,
    )
    assert altered.caveats != macaroon.caveats and dropped.caveats != macaroon.caveats

    altered_result = await verify(client, encode_token(altered), operation="read")
    dropped_result = await verify(client, encode_token(dropped), operation="write")

    assert_refused(*altered_result, 401)
    assert "signature" in altered_result[1]["reason"]
    assert_refused(*dropped_result, 401)
    assert "signature" in dropped_result[1]["reason"]


# ---- lifetime --------------------------------------------------------------------------------------


async def test_expired_token_is_refused(client: Client, admin_token: str, clock: FakeClock) -> None:
    """A token past its minted expiry is a 401 whose reason says it expired."""
    token = (await mint(client, admin_token, subject="alice", ttl=60))["token"]
    before, _ = await verify(client, token)
    clock.advance(seconds=61)

    status, body = await verify(client, token)

    assert before == 200
    assert_refused(status, body, 401)
    assert "expired" in body["reason"]


async def test_token_whose_key_was_purged_is_refused(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    """Once its root key is purged from the database, a token is a 401 whose reason names the key."""
    minted = await mint(client, admin_token, subject="alice", ttl=600)
    clock.advance(hours=25)

    await client.app[appkeys.KEYRING].maintain()

    async with client.app[appkeys.ENGINE].connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT count(*) FROM root_keys WHERE id = :id"), {"id": minted["key_id"]}
            )
        ).scalar_one()
    status, body = await verify(client, minted["token"])
    assert rows == 0
    assert_refused(status, body, 401)
    assert "key" in body["reason"]


# ---- narrowed with pymacaroons ---------------------------------------------------------------------


async def test_operations_narrowed_with_pymacaroons_deny_outside_the_smaller_set(
    client: Client, admin_token: str
) -> None:
    """A read+write token narrowed by pymacaroons (typed Operations or bakery `allow read`) allows read, 403s write."""
    token = (await mint(client, admin_token, subject="alice", operations=["read", "write"]))[
        "token"
    ]
    typed = pymacaroon(token)
    typed.add_first_party_caveat(caveats.encode(Operations(("read",))))
    bakery = pymacaroon(token)
    bakery.add_first_party_caveat("allow read")
    narrowed = {"typed": typed.serialize(), "bakery": bakery.serialize()}

    results = {
        (name, op): await verify(client, tok, operation=op)
        for name, tok in narrowed.items()
        for op in ("read", "write")
    }
    original_write = await verify(client, token, operation="write")

    assert {k: v[0] for k, v in results.items()} == {
        ("typed", "read"): 200,
        ("typed", "write"): 403,
        ("bakery", "read"): 200,
        ("bakery", "write"): 403,
    }, results
    for name in narrowed:
        assert_refused(*results[(name, "write")], 403)
        assert "write" in results[(name, "write")][1]["reason"]
    assert original_write[0] == 200, original_write


async def test_earlier_time_before_added_with_pymacaroons_ends_the_token_early(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    """A `time-before` 30 s ahead allows the token until then and 403s it after; one already past 403s at once."""
    token = (await mint(client, admin_token, subject="alice", ttl=3600))["token"]
    ahead = pymacaroon(token)
    limit = rfc3339(clock, seconds=30)
    ahead.add_first_party_caveat(f"time-before {limit}")
    past = pymacaroon(token)
    past.add_first_party_caveat(f"time-before {rfc3339(clock, minutes=-5)}")

    already_past = await verify(client, past.serialize())
    inside = await verify(client, ahead.serialize())
    clock.advance(seconds=31)
    outside = await verify(client, ahead.serialize())
    original = await verify(client, token)

    assert_refused(*already_past, 403)
    assert inside[0] == 200, inside
    assert inside[1]["expires_at"] == limit
    assert_refused(*outside, 403)
    assert original[0] == 200, original


async def test_unknown_caveat_added_with_pymacaroons_is_refused(
    client: Client, admin_token: str
) -> None:
    """A first-party caveat the service does not understand denies, with a reason."""
    token = (await mint(client, admin_token, subject="alice"))["token"]
    narrowed = pymacaroon(token)
    narrowed.add_first_party_caveat("color = blue")

    status, body = await verify(client, narrowed.serialize())

    assert status in (401, 403), body
    assert body["valid"] is False and body["reason"]


# ---- caveats against the request context ------------------------------------------------------------


async def test_each_restriction_allows_inside_and_denies_outside_with_403(
    client: Client, admin_token: str
) -> None:
    """Operations, resources (exact and `prefix*`), audience and client CIDR: inside 200, outside or unnamed 403."""
    tokens = {
        "op": await mint(client, admin_token, subject="alice", operations=["read", "list"]),
        "res": await mint(client, admin_token, subject="alice", resources=["/exact", "/docs/*"]),
        "aud": await mint(client, admin_token, subject="alice", audience=["files"]),
        "cidr": await mint(
            client, admin_token, subject="alice", cidrs=["10.0.0.0/8", "2001:db8::/32"]
        ),
    }
    cases: dict[tuple[str, str], tuple[dict[str, str], int]] = {
        ("op", "read"): ({"operation": "read"}, 200),
        ("op", "list"): ({"operation": "list"}, 200),
        ("op", "write"): ({"operation": "write"}, 403),
        ("op", "none"): ({}, 403),
        ("res", "exact"): ({"resource": "/exact"}, 200),
        ("res", "exact-child"): ({"resource": "/exact/1"}, 403),
        ("res", "prefix-child"): ({"resource": "/docs/1"}, 200),
        ("res", "prefix-deep"): ({"resource": "/docs/a/b"}, 200),
        ("res", "prefix-bare"): ({"resource": "/docs"}, 403),
        ("res", "other"): ({"resource": "/other"}, 403),
        ("res", "none"): ({}, 403),
        ("aud", "files"): ({"audience": "files"}, 200),
        ("aud", "mail"): ({"audience": "mail"}, 403),
        ("aud", "none"): ({}, 403),
        ("cidr", "inside4"): ({"client_ip": "10.1.2.3"}, 200),
        ("cidr", "inside6"): ({"client_ip": "2001:db8::5"}, 200),
        ("cidr", "outside4"): ({"client_ip": "192.168.1.1"}, 403),
        ("cidr", "outside6"): ({"client_ip": "2001:db9::5"}, 403),
        ("cidr", "not-an-ip"): ({"client_ip": "localhost"}, 403),
        ("cidr", "none"): ({}, 403),
    }

    got = {
        case: (await verify(client, tokens[case[0]]["token"], **ctx))[0]
        for case, (ctx, _) in cases.items()
    }

    assert got == {case: expected for case, (_, expected) in cases.items()}


async def test_all_caveats_of_a_token_must_hold_together(client: Client, admin_token: str) -> None:
    """With several restrictions, a request that satisfies all but one is a 403 naming that one."""
    token = (
        await mint(
            client,
            admin_token,
            subject="alice",
            operations=["read"],
            resources=["/docs/*"],
            audience=["files"],
            cidrs=["10.0.0.0/8"],
        )
    )["token"]
    good = {
        "operation": "read",
        "resource": "/docs/1",
        "audience": "files",
        "client_ip": "10.0.0.1",
    }

    ok = await verify(client, token, **good)
    denied = await verify(client, token, **{**good, "audience": "mail"})

    assert ok[0] == 200, ok
    assert_refused(*denied, 403)
    assert "audience" in denied[1]["reason"]


# ---- third-party caveats and discharges --------------------------------------------------------------


def with_third_party(token: str, *, caveat_key: bytes, caveat_id: bytes) -> str:
    """The token with a third-party caveat added by tokensvc.macaroons.chain (re-encoded as `tsv1_`)."""
    return encode_token(
        chain.add_third_party(
            parse(token),
            caveat_key=caveat_key,
            caveat_id=caveat_id,
            location=b"https://idp.example",
            nonce=os.urandom(24),
        )
    )


def discharge(caveat_key: bytes, caveat_id: bytes, *predicates: str) -> pymacaroons.Macaroon:
    """A discharge as a pymacaroons third party makes it."""
    m = pymacaroons.Macaroon(
        location="https://idp.example", identifier=caveat_id, key=caveat_key, version=2
    )
    for predicate in predicates:
        m.add_first_party_caveat(predicate)
    return m


async def test_bound_discharge_satisfies_the_third_party_caveat_and_its_caveats_apply(
    client: Client, admin_token: str
) -> None:
    """A bound discharge satisfies the caveat; its declarations come back and its `allow read` 403s write."""
    key, cid = os.urandom(32), b"idp-caveat-1"
    token = with_third_party(
        (await mint(client, admin_token, subject="alice"))["token"], caveat_key=key, caveat_id=cid
    )
    bound = (
        pymacaroon(token)
        .prepare_for_request(discharge(key, cid, "declared username bob", "allow read"))
        .serialize()
    )

    read = await verify(client, token, [bound], operation="read")
    write = await verify(client, token, [bound], operation="write")

    assert read[0] == 200, read
    assert read[1]["declared"] == {"username": "bob"}
    assert_refused(*write, 403)


async def test_third_party_caveat_without_its_bound_discharge_is_refused(
    client: Client, admin_token: str
) -> None:
    """No discharge, an unbound one, one with the wrong key, one bound elsewhere, one twice, a stray one: each 401."""
    key, cid = os.urandom(32), b"idp-caveat-1"
    token = with_third_party(
        (await mint(client, admin_token, subject="alice"))["token"], caveat_key=key, caveat_id=cid
    )
    other = with_third_party(
        (await mint(client, admin_token, subject="alice"))["token"], caveat_key=key, caveat_id=cid
    )
    unbound = discharge(key, cid)
    bound = pymacaroon(token).prepare_for_request(unbound).serialize()
    stray = pymacaroon(token).prepare_for_request(discharge(os.urandom(32), b"stray")).serialize()
    cases = {
        "missing": [],
        "unbound": [unbound.serialize()],
        "wrong-key": [
            pymacaroon(token).prepare_for_request(discharge(os.urandom(32), cid)).serialize()
        ],
        "bound-to-other": [pymacaroon(other).prepare_for_request(unbound).serialize()],
        "twice": [bound, bound],
        "stray": [bound, stray],
    }

    results = {name: await verify(client, token, discharges) for name, discharges in cases.items()}

    assert {name: r[0] for name, r in results.items()} == dict.fromkeys(cases, 401), results
    for result in results.values():
        assert_refused(*result, 401)
    assert (await verify(client, token, [bound]))[0] == 200


# ---- subject generations (password change revokes tokens) ------------------------------------------


async def change_admin_password(client: Any, new_password: str) -> int:
    """Set the admin's password through the user service; the new generation, known at once."""
    from tokensvc.services.principals import LocalOperator
    from tokensvc.services.users import UserChange

    services = client.app[appkeys.SERVICES]
    await services.users.update(LocalOperator("test"), "admin", UserChange(password=new_password))
    return client.app[appkeys.GENERATIONS].current("admin")


async def test_users_tokens_die_when_the_generation_is_bumped(
    client: Client, admin_token: str
) -> None:
    """After a password change the user's earlier tokens are 401, and so is what they minted
    (revocation follows lineage); other subjects' tokens live, a new login's verifies."""
    from datetime import timedelta

    from tokensvc.services.principals import LocalOperator
    from tokensvc.tokens.minting import MintRequest

    minted_by_admin = (await mint(client, admin_token, subject="alice"))["token"]
    alice = (
        await client.app[appkeys.SERVICES].tokens.mint(
            LocalOperator("test"), MintRequest("alice", timedelta(hours=1))
        )
    ).token
    before, _ = await verify(client, admin_token)

    generation = await change_admin_password(client, "a brand new password 1")

    after = await verify(client, admin_token)
    relogin = await client.post("/v1/login", headers=basic_auth("admin", "a brand new password 1"))
    old_password = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    assert before == 200
    assert generation == 1
    assert_refused(*after, 401)
    assert "revoked" in after[1]["reason"]
    assert (await verify(client, alice))[0] == 200
    assert (await verify(client, minted_by_admin))[0] == 401
    assert relogin.status == 200
    assert (await verify(client, (await relogin.json())["token"]))[0] == 200
    assert old_password.status == 401


async def test_token_minted_for_a_user_after_the_generation_bump_verifies(
    client: Client, admin_token: str
) -> None:
    """A token an admin mints for a user after that user's password change is alive, not born revoked."""
    await change_admin_password(client, "a brand new password 1")
    relogin = await client.post("/v1/login", headers=basic_auth("admin", "a brand new password 1"))
    new_admin_token = (await relogin.json())["token"]

    minted = await mint(client, new_admin_token, subject="admin", ttl=600)
    status, body = await verify(client, minted["token"])

    assert status == 200, body
    assert body["subject"] == "admin"


async def test_the_chain_cache_is_bounded_by_what_its_tokens_weigh(
    aiohttp_client: Any, sqlite_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """Red team (helper-38): the cache counted entries, and anyone could fill its 20,000 with
    15 KB tokens (a genuine token and 100 declared caveats added offline): ~41 KB each, 820 MB.
    An entry now weighs one plus one per 2 KB its decoded caveats keep (~31 KB here: 16), and
    the weights stay within the limit."""
    from tests.conftest import make_config
    from tests.security.attack import attenuated, login
    from tokensvc.tokens.verification import ChainCache
    from tokensvc.web.app import create_app

    config = make_config(database_url=sqlite_url, data_dir=data_dir, verify_cache_entries=100)
    client = await aiohttp_client(create_app(config, clock=clock))
    token = await login(client, "admin", ADMIN_PASSWORD)
    cache: ChainCache = client.app[appkeys.VERIFIER].cache
    padding = "x" * 90

    for n in range(40):
        heavy = attenuated(token, *(f"declared k{n}_{i} {padding}" for i in range(100)))
        resp = await client.post("/v1/verify", json={"token": heavy})
        assert resp.status == 200, await resp.text()
        assert len(cache) <= 100 // 15  # each weighs fifteen or more

    assert cache.weight <= 100
    for n in range(40):  # ordinary tokens weigh one apiece: the whole limit
        small = attenuated(token, f"declared k{n} v")
        assert (await client.post("/v1/verify", json={"token": small})).status == 200
    assert cache.weight <= 100
    assert len(cache) >= 40  # every ordinary token is in, beside what heavy ones are left


async def test_a_token_of_many_networks_weighs_what_it_decodes_to(
    aiohttp_client: Any, sqlite_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """Red team (helper-40): weighed by bytes, a token under 512 bytes with 15 networks (each an
    ip_network object, ~1 KB) cost ~9 KB per unit of weight, and a 1 KB list of IPv6 networks
    decodes to ~65 KB. The weight now counts networks (and listed values) as they decode."""
    import json

    from tests.conftest import make_config
    from tests.security.attack import attenuated, login
    from tokensvc.web.app import create_app

    config = make_config(database_url=sqlite_url, data_dir=data_dir, verify_cache_entries=200)
    client = await aiohttp_client(create_app(config, clock=clock))
    token = await login(client, "admin", ADMIN_PASSWORD)
    cache = client.app[appkeys.VERIFIER].cache
    networks = [f"2001:db8::{i:x}/128" for i in range(60)]

    for n in range(20):
        narrowed = attenuated(token, json.dumps([6, [f"2001:db8:{n:x}::/48", *networks]]))
        resp = await client.post("/v1/verify", json={"token": narrowed})
        assert resp.status == 403, await resp.text()  # the test client is not in those networks

    assert len(cache) <= 200 // 25  # ~61 KB decoded: each weighs about thirty
    assert cache.weight <= 200
