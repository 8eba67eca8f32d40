"""The discharger over HTTP: /discharge/info, /publickey and /discharge, with hostile input too.

Caveats are made by the real macaroonbakery codec from the public key /discharge/info serves;
discharges are checked with pymacaroons. Every test runs against tokensvc on real PostgreSQL.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import pymacaroons
import pytest
from aiohttp import ClientResponse
from macaroonbakery import bakery, checkers

from caveats import format_rfc3339
from tests.bakery.conftest import ALICE_PASSWORD, PREFIX, Client, bearer, login
from tests.conftest import FakeClock, basic_auth, make_config
from tokensvc.bakery.config import BakeryConfig
from tokensvc.errors import LockedOut
from tokensvc.web import appkeys
from tokensvc.web.app import create_app
from tokensvc.web.handlers.bakery import TOKEN_COOKIE

ROOT_KEY = b"discharge root key of 24b"[:24]
# `account-active alice` is answered to alice herself (or an admin): the caller's credentials.
ALICE = basic_auth("alice", ALICE_PASSWORD)


async def public_key(client: Client) -> bakery.PublicKey:
    """tokensvc's discharger key, as /discharge/info tells it."""
    resp = await client.get(f"{PREFIX}/discharge/info")
    return bakery.PublicKey.deserialize((await resp.json())["PublicKey"])


async def caveat(
    client: Client,
    condition: str,
    version: int = 3,
    *,
    ns: checkers.Namespace | None = None,
    to: bakery.PublicKey | None = None,
) -> tuple[bytes, bytes | None]:
    """(id, payload) of a caveat a bakery first party addresses to tokensvc; payload only in v3."""
    info = bakery.ThirdPartyInfo(version=version, public_key=to or await public_key(client))
    namespace = ns if ns is not None else checkers.Namespace({"std": ""})
    encoded = bytes(
        bakery.encode_caveat(condition, ROOT_KEY, info, bakery.generate_key(), namespace)
    )
    if version < 3:
        return encoded, None
    return b"\x03\x00", encoded


def form(fields: dict[str, bytes | str]) -> bytes:
    """An urlencoded form whose values are exactly these bytes."""
    return "&".join(
        f"{name}={quote_from_bytes(v.encode() if isinstance(v, str) else v, safe='')}"
        for name, v in fields.items()
    ).encode()


def b64(data: bytes, *, url: bool = True, pad: bool = False) -> str:
    text = (base64.urlsafe_b64encode if url else base64.b64encode)(data).decode()
    return text if pad else text.rstrip("=")


def fields_for(caveat_id: bytes, payload: bytes | None) -> dict[str, bytes | str]:
    """What httpbakery's client sends: id (raw when UTF-8, else id64) and caveat64."""
    fields: dict[str, bytes | str] = {}
    try:
        caveat_id.decode("utf-8")
        fields["id"] = caveat_id
    except UnicodeDecodeError:
        fields["id64"] = b64(caveat_id, url=False, pad=True)
    if payload is not None:
        fields["caveat64"] = b64(payload)
    return fields


async def post_discharge(
    client: Client, fields: dict[str, bytes | str], headers: dict[str, str] | None = None
) -> ClientResponse:
    return await client.post(
        f"{PREFIX}/discharge",
        data=form(fields),
        headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
    )


async def discharge_for(
    client: Client, condition: str, version: int = 3, headers: dict[str, str] | None = None
) -> ClientResponse:
    return await post_discharge(
        client, fields_for(*await caveat(client, condition, version)), headers
    )


async def discharged(resp: ClientResponse) -> pymacaroons.Macaroon:
    """The discharge macaroon of a 200 answer, as the bakery client reads it."""
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/json"
    return bakery.Macaroon.from_dict((await resp.json())["Macaroon"]).macaroon


def predicates(macaroon: pymacaroons.Macaroon) -> list[str]:
    return [c.caveat_id_bytes.decode() for c in macaroon.caveats]


def signature_holds(macaroon: pymacaroons.Macaroon) -> bool:
    """pymacaroons agrees the discharge is signed with the caveat's root key."""
    verifier = pymacaroons.Verifier()
    verifier.satisfy_general(lambda _: True)
    return bool(verifier.verify(macaroon, ROOT_KEY))


async def assert_bakery_error(resp: ClientResponse, status: int, *fragments: str) -> str:
    """A bakery error: this status, exactly application/json, exactly {"Code", "Message"}."""
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"] == "application/json"
    body = await resp.json()
    assert set(body) == {"Code", "Message"}, body
    assert body["Code"] and body["Message"]
    for fragment in fragments:
        assert fragment in body["Message"], body
    return str(body["Code"])


# ---- the public key ------------------------------------------------------------------------------


async def test_discharge_info_and_publickey_serve_one_key_as_the_bakery_reads_it(
    client: Client,
) -> None:
    """/discharge/info gives {PublicKey, Version: 3}, /publickey the same key; both exactly application/json."""
    info = await client.get(f"{PREFIX}/discharge/info")
    legacy = await client.get(f"{PREFIX}/publickey")

    body, legacy_body = await info.json(), await legacy.json()
    assert info.status == legacy.status == 200
    assert info.headers["Content-Type"] == legacy.headers["Content-Type"] == "application/json"
    assert body["Version"] == 3 and set(body) == {"PublicKey", "Version"}
    assert legacy_body == {"PublicKey": body["PublicKey"]}
    assert len(base64.b64decode(body["PublicKey"], validate=True)) == 32
    assert bakery.PublicKey.deserialize(body["PublicKey"]).serialize() == body["PublicKey"].encode()


# ---- discharging ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_a_held_condition_is_discharged_short_lived_and_signed_with_the_caveat_key(
    client: Client, users: dict[str, str], clock: FakeClock, version: int
) -> None:
    """`account-active alice` at each caveat version: the discharge has the caveat's id, a 5-minute time-before, and verifies with its root key."""
    caveat_id, payload = await caveat(client, "account-active alice", version)

    macaroon = await discharged(await post_discharge(client, fields_for(caveat_id, payload), ALICE))

    assert macaroon.identifier_bytes == caveat_id
    assert predicates(macaroon) == [
        f"time-before {format_rfc3339((clock.now + timedelta(minutes=5)).timestamp())}"
    ]
    assert signature_holds(macaroon)


@pytest.mark.parametrize(
    "encode",
    [
        lambda d: b64(d, url=False, pad=True),
        lambda d: b64(d, url=False, pad=False),
        lambda d: b64(d, url=True, pad=True),
        lambda d: b64(d, url=True, pad=False),
    ],
    ids=["std-padded", "std-raw", "url-padded", "url-raw"],
)
async def test_id64_and_caveat64_are_read_in_every_base64_variant(
    client: Client, users: dict[str, str], encode: Any
) -> None:
    """id64 (v2) and caveat64 (v3, beside a raw NUL-bearing id) decode in all four base64 variants."""
    v2_id, _ = await caveat(client, "account-active alice", 2)
    v3_id, v3_payload = await caveat(client, "account-active alice", 3)
    assert v3_payload is not None

    as_id64 = await post_discharge(client, {"id64": encode(v2_id)}, ALICE)
    as_caveat64 = await post_discharge(client, {"id": v3_id, "caveat64": encode(v3_payload)}, ALICE)

    assert (await discharged(as_id64)).identifier_bytes == v2_id
    assert (await discharged(as_caveat64)).identifier_bytes == b"\x03\x00"


async def test_fields_may_come_in_the_query_string(client: Client, users: dict[str, str]) -> None:
    """id and caveat64 in the URL's query string work as in the body."""
    caveat_id, payload = await caveat(client, "account-active alice")
    assert payload is not None

    resp = await client.post(
        f"{PREFIX}/discharge?" + form({"id": caveat_id, "caveat64": b64(payload)}).decode(),
        headers=ALICE,
    )

    assert (await discharged(resp)).identifier_bytes == caveat_id


async def test_need_declared_declares_every_listed_key(
    client: Client, users: dict[str, str]
) -> None:
    """`need-declared username,group user-is alice` declares username alice and an empty group."""
    resp = await discharge_for(
        client,
        "need-declared username,group user-is alice",
        headers=basic_auth("alice", ALICE_PASSWORD),
    )

    macaroon = await discharged(resp)
    assert predicates(macaroon)[1:] == ["declared group ", "declared username alice"]
    assert checkers.infer_declared([macaroon]) == {"username": "alice", "group": ""}


async def test_a_v3_namespace_prefix_is_put_on_the_discharge_caveats(
    client: Client, users: dict[str, str]
) -> None:
    """When the first party maps the std namespace to prefix `s`, the discharge says `s:time-before`."""
    caveat_id, payload = await caveat(
        client, "account-active alice", ns=checkers.Namespace({"std": "s", "other": ""})
    )

    resp = await post_discharge(client, fields_for(caveat_id, payload), ALICE)

    body = await resp.json()
    assert body["Macaroon"]["ns"] == "other: std:s"
    assert predicates(await discharged(resp))[0].startswith("s:time-before ")


# ---- user-is / has-role / account-active ---------------------------------------------------------


async def test_user_is_holds_for_that_user_by_basic_bearer_or_cookie(
    client: Client, users: dict[str, str]
) -> None:
    """`user-is alice` is discharged for alice by HTTP Basic, a bearer token or the token cookie, declaring her."""
    token = await login(client, "alice", ALICE_PASSWORD)
    by_basic = await discharge_for(
        client, "user-is alice", headers=basic_auth("alice", ALICE_PASSWORD)
    )
    by_bearer = await discharge_for(client, "user-is Alice", headers=bearer(token))
    client.session.cookie_jar.update_cookies({TOKEN_COOKIE: token})
    by_cookie = await discharge_for(client, "user-is alice")
    client.session.cookie_jar.clear()

    for resp in (by_basic, by_bearer, by_cookie):
        assert predicates(await discharged(resp))[1:] == ["declared username alice"]


async def test_user_is_refuses_anyone_else(
    client: Client, users: dict[str, str], admin_token: str
) -> None:
    """Nobody, bob, a wrong password, a forged token, a token for another audience, a non-user subject: refused."""
    bob = await login(client, "bob", users["bob"])
    narrowed = await client.post(
        "/v1/tokens", json={"subject": "alice", "audience": "files"}, headers=bearer(admin_token)
    )
    service = await client.post("/v1/tokens", json={"subject": "svc"}, headers=bearer(admin_token))
    cases = {
        "nobody": ({}, 401, "authenticate"),
        "bob": (bearer(bob), 403, "not 'alice'"),
        "wrong password": (basic_auth("alice", "not her password"), 401, "invalid"),
        "forged": (bearer(bob[:-12] + "AAAA" + bob[-8:]), 401, ""),
        "other audience": (bearer((await narrowed.json())["token"]), 403, "audience"),
        "odd scheme": ({"Authorization": "Digest x"}, 401, "Basic or Bearer"),
        "bad basic": ({"Authorization": "Basic %%%"}, 401, "malformed"),
    }
    svc_case = await discharge_for(
        client, "user-is svc", headers=bearer((await service.json())["token"])
    )

    for name, (headers, status, fragment) in cases.items():
        resp = await discharge_for(client, "user-is alice", headers=headers)
        code = await assert_bakery_error(resp, status, fragment)
        assert code == "permission denied", name
    await assert_bakery_error(svc_case, 403, "not an enabled user")


async def test_only_a_users_own_credential_vouches_for_them(
    client: Client, users: dict[str, str], admin_token: str
) -> None:
    """Red team: an admin token narrowed to `tokens:mint` and `discharge` (too weak to take
    over a role-holder) minted a plain token for alice and was vouched for as her, `has-role
    dev` included. A token someone else issued for a user vouches for nothing here; her login,
    and an admin's token of its own, do."""

    async def minted_by(token: str, **body: Any) -> str:
        resp = await client.post("/v1/tokens", json=body, headers=bearer(token))
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["token"])

    narrowed = await minted_by(admin_token, admin=True, operations=["tokens:mint", "discharge"])
    for_alice = {
        "by a narrowed admin": await minted_by(narrowed, subject="alice"),
        "by the admin": await minted_by(admin_token, subject="alice"),
    }
    own = await login(client, "alice", ALICE_PASSWORD)
    admins_own = await minted_by(admin_token, subject="admin")

    for name, token in for_alice.items():
        for condition in ("has-role dev", "user-is alice"):
            resp = await discharge_for(client, condition, headers=bearer(token))
            assert await assert_bakery_error(resp, 403, "by someone else") == "permission denied", (
                name
            )
    assert (await discharge_for(client, "has-role dev", headers=bearer(own))).status == 200
    assert (await discharge_for(client, "user-is admin", headers=bearer(admins_own))).status == 200


async def test_basic_guesses_through_the_discharger_are_locked_out_like_logins(
    client: Client, users: dict[str, str]
) -> None:
    """Wrong passwords sent to the discharger count in the lockout: then 429 there, and on /v1/login too."""
    statuses = []
    for _ in range(6):
        resp = await discharge_for(client, "user-is alice", headers=basic_auth("alice", "guess"))
        statuses.append(resp.status)
    locked = await discharge_for(
        client, "user-is alice", headers=basic_auth("alice", ALICE_PASSWORD)
    )
    login_now = await client.post("/v1/login", headers=basic_auth("alice", ALICE_PASSWORD))

    assert statuses[:5] == [401] * 5 and statuses[5] == 429
    assert await assert_bakery_error(locked, 429) == "too many requests"
    assert "Retry-After" in locked.headers
    assert login_now.status == 429


async def test_has_role_holds_only_for_holders_of_the_role(
    client: Client, users: dict[str, str]
) -> None:
    """`has-role dev` is discharged for alice (declaring her) and refused to bob."""
    alice = await discharge_for(client, "has-role dev", headers=basic_auth("alice", ALICE_PASSWORD))
    bob = await discharge_for(client, "has-role dev", headers=basic_auth("bob", users["bob"]))

    assert predicates(await discharged(alice))[1:] == ["declared username alice"]
    await assert_bakery_error(bob, 403, "does not have role")


async def test_account_active_refuses_unknown_disabled_and_locked_accounts_alike(
    client: Client, users: dict[str, str], admin_token: str, clock: FakeClock
) -> None:
    """An unknown, a disabled and a locked-out account all get one message; an active one is discharged."""
    await client.patch("/v1/users/bob", json={"disabled": True}, headers=bearer(admin_token))
    lockout = client.app[appkeys.LOCKOUT]
    for i in range(12):
        # Failures from twelve addresses lock the identity itself; the last ones are refused.
        with contextlib.suppress(LockedOut):
            await lockout.begin_attempt(
                identity="alice", client_ip=f"10.0.0.{i}", now=clock.now.timestamp()
            )

    answers = {
        name: await discharge_for(client, f"account-active {name}", headers=bearer(admin_token))
        for name in ("nobody", "bob", "alice", "admin", "Not A Name!")
    }

    await discharged(answers["admin"])
    messages = {await assert_bakery_error(answers[n], 403) for n in ("nobody", "bob", "alice")}
    bodies = {
        (await answers[n].json())["Message"] for n in ("nobody", "bob", "alice", "Not A Name!")
    }
    assert messages == {"permission denied"}
    assert bodies == {"account-active: the account is not active"}


async def test_an_unknown_condition_is_refused_as_not_recognized(client: Client) -> None:
    """A condition tokensvc does not know is a 403 naming it, never a discharge."""
    resp = await discharge_for(client, "is-root please")

    await assert_bakery_error(resp, 403, "caveat not recognized", "is-root please")


# ---- hostile input ---------------------------------------------------------------------------------


async def test_malformed_discharge_requests_are_4xx_bakery_errors_never_500(
    client: Client, users: dict[str, str]
) -> None:
    """Empty, bad base64, ambiguous or repeated fields, wrong version bytes, tampering, another key, huge or odd bodies: a clear 4xx each."""
    good_id, _ = await caveat(client, "account-active alice", 2)
    v3_id, v3_payload = await caveat(client, "account-active alice", 3)
    assert v3_payload is not None
    elsewhere, _ = await caveat(
        client, "account-active alice", 2, to=bakery.generate_key().public_key
    )
    tampered = bytearray(good_id)
    tampered[-3] ^= 0x10
    bodies: dict[str, tuple[bytes, str, int, str]] = {
        "empty": (b"", "application/x-www-form-urlencoded", 400, "no caveat id"),
        "blank id": (b"id=", "application/x-www-form-urlencoded", 400, "no caveat id"),
        "bad id64": (b"id64=%%%%", "application/x-www-form-urlencoded", 400, "not base64"),
        "bad caveat64": (
            form({"id": v3_id, "caveat64": "**"}),
            "application/x-www-form-urlencoded",
            400,
            "not base64",
        ),
        "id and id64": (
            form({"id": good_id, "id64": b64(good_id)}),
            "application/x-www-form-urlencoded",
            400,
            "not both",
        ),
        "id twice": (
            form({"id": good_id}) + b"&" + form({"id": good_id}),
            "application/x-www-form-urlencoded",
            400,
            "more than once",
        ),
        "version 4": (
            form({"id64": b64(b"\x04" + good_id[1:])}),
            "application/x-www-form-urlencoded",
            400,
            "unknown",
        ),
        "version 0": (
            form({"id64": b64(b"\x00" + good_id[1:])}),
            "application/x-www-form-urlencoded",
            400,
            "unknown",
        ),
        "v3 id alone": (form({"id": v3_id}), "application/x-www-form-urlencoded", 400, "caveat64"),
        "truncated": (
            form({"id64": b64(good_id[:60])}),
            "application/x-www-form-urlencoded",
            400,
            "too short",
        ),
        "tampered": (
            form({"id64": b64(bytes(tampered))}),
            "application/x-www-form-urlencoded",
            400,
            "altered",
        ),
        "other key": (
            form({"id64": b64(elsewhere)}),
            "application/x-www-form-urlencoded",
            400,
            "another",
        ),
        "random": (
            form({"id64": b64(os.urandom(200))}),
            "application/x-www-form-urlencoded",
            400,
            "",
        ),
        "too long": (
            form({"id64": "A" * 20000}),
            "application/x-www-form-urlencoded",
            413,
            "too long",
        ),
        "huge body": (b"id=" + b"A" * 70000, "application/x-www-form-urlencoded", 413, "too large"),
        "json body": (b'{"id": "x"}', "application/json", 415, "x-www-form-urlencoded"),
        "many fields": (
            b"&".join([b"a=1"] * 40),
            "application/x-www-form-urlencoded",
            400,
            "form fields",
        ),
        "binary junk": (os.urandom(300), "application/x-www-form-urlencoded", 400, ""),
    }

    for name, (body, content_type, status, fragment) in bodies.items():
        resp = await client.post(
            f"{PREFIX}/discharge", data=body, headers={"Content-Type": content_type}
        )
        code = await assert_bakery_error(resp, status, fragment)
        assert code == "bad request", name


# ---- wiring ----------------------------------------------------------------------------------------


async def test_embedded_mode_keeps_one_key_across_restarts(
    aiohttp_client: Any, sqlite_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """On SQLite with a generated KEK, a restarted service serves the same discharger key, under
    a configured prefix."""
    config = make_config(database_url=sqlite_url, data_dir=data_dir, kek=None)
    config = config.model_copy(update={"bakery": BakeryConfig(prefix="/auth/bakery")})

    first = await aiohttp_client(create_app(config, clock=clock))
    key_before = await (await first.get("/auth/bakery/discharge/info")).json()
    await first.close()
    second = await aiohttp_client(create_app(config, clock=clock))
    key_after = await (await second.get("/auth/bakery/publickey")).json()

    assert key_before["PublicKey"] == key_after["PublicKey"]
    assert (data_dir / "kek").exists()


async def test_random_and_mutated_discharge_requests_never_reach_a_500(
    client: Client, users: dict[str, str]
) -> None:
    """Three hundred random or bit-flipped ids, payloads and bodies: every answer is a 4xx bakery error or a 200."""
    rng = random.Random(4)
    v2_id, _ = await caveat(client, "account-active alice", 2)
    v3_id, v3_payload = await caveat(client, "account-active alice", 3)
    assert v3_payload is not None

    def flipped(data: bytes) -> bytes:
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        return bytes(mutated)

    def random_request() -> bytes:
        kind = rng.randrange(5)
        if kind == 0:
            return form({"id": rng.randbytes(rng.randrange(1, 300))})
        if kind == 1:
            return form({"id64": b64(flipped(v2_id), url=rng.random() < 0.5)})
        if kind == 2:
            return form({"id": v3_id, "caveat64": b64(flipped(v3_payload))})
        if kind == 3:
            return form({"id": flipped(v3_id), "caveat64": b64(v3_payload[: rng.randrange(80)])})
        return rng.randbytes(rng.randrange(500))

    statuses = []
    for _ in range(300):
        resp = await client.post(
            f"{PREFIX}/discharge",
            data=random_request(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        statuses.append(resp.status)
        if resp.status != 200:
            await assert_bakery_error(resp, resp.status)

    assert all(s == 200 or 400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert 400 in statuses


async def test_a_discharge_vouched_on_a_token_ends_when_the_token_does(
    client: Client, users: dict[str, str], clock: FakeClock
) -> None:
    """Red team: a token narrowed to expire in 3 s got a 5-minute discharge declaring its
    subject, which outlived it (a discharge is self-contained: nothing done to the token later
    reaches it). A discharge vouched on a token now ends no later than the token; one vouched on
    a password keeps the discharger's lifetime."""
    from caveats import Expiry, encode
    from tokensvc.macaroons.attenuation import attenuate

    token = await login(client, "alice", ALICE_PASSWORD)
    ends = int(clock.now.timestamp()) + 60
    short = attenuate(token, [encode(Expiry(ends))])

    by_token = await discharged(await discharge_for(client, "user-is alice", headers=bearer(short)))
    by_password = await discharged(await discharge_for(client, "user-is alice", headers=ALICE))

    assert predicates(by_token)[0] == f"time-before {format_rfc3339(ends)}"
    assert predicates(by_password)[0] == (
        f"time-before {format_rfc3339((clock.now + timedelta(minutes=5)).timestamp())}"
    )
