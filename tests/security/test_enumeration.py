"""Attacks that try to learn which accounts exist without credentials (hole B6).

No answer an unauthenticated caller (or a user asking about someone else) can get may depend on
whether an account exists: the bakery discharger's `account-active` condition, login failures, the
lockout's 429. Each test runs on the embedded shape and on PostgreSQL + Redis.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote_from_bytes

from macaroonbakery import bakery, checkers

from tests.conftest import basic_auth, mask_challenge
from tests.security.attack import bearer, create_user, login

ALICE = "her other lantern passphrase"
BOB = "his long lantern passphrase too"
ROOT_KEY = b"discharge root key of 24b"[:24]


async def discharge(client: Any, condition: str, headers: dict[str, str] | None = None) -> Any:
    """(status, body) of a discharge request for a caveat a bakery first party addressed to us,
    encoded with the public key anyone can read from /bakery/discharge/info."""
    info = await (await client.get("/bakery/discharge/info")).json()
    key = bakery.PublicKey.deserialize(info["PublicKey"])
    payload = bakery.encode_caveat(
        condition,
        ROOT_KEY,
        bakery.ThirdPartyInfo(version=2, public_key=key),
        bakery.generate_key(),
        checkers.Namespace({"std": ""}),
    )
    resp = await client.post(
        "/bakery/discharge",
        data=f"id64={quote_from_bytes(base64.urlsafe_b64encode(bytes(payload)))}",
        headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
    )
    return resp.status, await resp.json()


async def users(client: Any, root: str) -> None:
    await create_user(client, root, "alice", ALICE)
    await create_user(client, root, "bob", BOB)


async def test_account_active_tells_an_anonymous_caller_nothing(shaped: Any, root: str) -> None:
    """The reproduction: without credentials, `account-active NAME` gets the same answer for an
    existing, a disabled and an unknown account."""
    await users(shaped, root)
    await shaped.patch("/v1/users/bob", json={"disabled": True}, headers=bearer(root))

    answers = {
        name: await discharge(shaped, f"account-active {name}")
        for name in ("alice", "bob", "nobody", "admin")
    }

    assert len({str(a) for a in answers.values()}) == 1, answers
    assert answers["alice"][0] == 401


async def test_account_active_tells_another_user_nothing(shaped: Any, root: str) -> None:
    """A user authenticated as bob learns nothing about alice or anyone else: one refusal for
    every name but his own."""
    await users(shaped, root)
    as_bob = basic_auth("bob", BOB)

    answers = {
        name: await discharge(shaped, f"account-active {name}", as_bob)
        for name in ("alice", "nobody", "admin", "Not A Name!")
    }
    own = await discharge(shaped, "account-active bob", as_bob)

    assert len({str(a) for a in answers.values()}) == 1, answers
    assert answers["alice"][0] == 403
    assert own[0] == 200


async def test_account_active_answers_the_account_itself_and_admins(shaped: Any, root: str) -> None:
    """alice may discharge `account-active alice` (with her password or her token); an admin may
    ask about any account."""
    await users(shaped, root)
    alices_token = await login(shaped, "alice", ALICE)

    with_password = await discharge(shaped, "account-active alice", basic_auth("alice", ALICE))
    with_token = await discharge(shaped, "account-active alice", bearer(alices_token))
    admin_known = await discharge(shaped, "account-active alice", bearer(root))
    admin_unknown = await discharge(shaped, "account-active nobody", bearer(root))

    assert (with_password[0], with_token[0], admin_known[0]) == (200, 200, 200)
    assert admin_unknown[0] == 403


async def test_login_failures_look_alike_for_unknown_disabled_and_wrong(
    shaped: Any, root: str
) -> None:
    """Unknown user, disabled user and wrong password: the same status and body (the random
    MFA challenge aside, which has one length)."""
    await users(shaped, root)
    await shaped.patch("/v1/users/bob", json={"disabled": True}, headers=bearer(root))

    answers = []
    for name, password in (("nobody", "whatever pw"), ("bob", BOB), ("alice", "wrong pw!")):
        resp = await shaped.post("/v1/login", headers=basic_auth(name, password))
        answers.append((resp.status, mask_challenge(await resp.read())))

    assert len({str(a) for a in answers}) == 1, answers
    assert answers[0][0] == 401


async def test_lockout_locks_unknown_names_as_it_locks_real_ones(shaped: Any, root: str) -> None:
    """Guessing against an unknown name is locked out exactly like against a real one, so a 429
    does not reveal that an account exists."""
    await users(shaped, root)

    def statuses(name: str) -> Any:
        async def run() -> list[int]:
            out = []
            for i in range(8):
                resp = await shaped.post(
                    "/v1/login",
                    headers={**basic_auth(name, f"guess {i}"), "X-Forwarded-For": "203.0.113.9"},
                )
                out.append(resp.status)
            return out

        return run()

    assert await statuses("alice") == await statuses("nobody-here")
