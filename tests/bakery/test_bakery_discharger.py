"""The discharge service and its conditions, in process, with in-memory users and lockout."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from macaroonbakery import bakery, checkers

from caveats import format_rfc3339
from keystore.discharger_key import DischargerKey
from tokensvc.accounts.lockout import MemoryLockoutStore
from tokensvc.accounts.users import User
from tokensvc.bakery import codec
from tokensvc.bakery.conditions import Conditions
from tokensvc.bakery.discharger import Discharger, DischargeRequest
from tokensvc.bakery.errors import ConditionNotRecognized, ConditionRefused, MalformedCaveat
from tokensvc.errors import Unauthenticated
from tokensvc.macaroons import chain
from tokensvc.macaroons.macaroon import Caveat

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = DischargerKey.generate()
ROOT = os.urandom(24)


class Users:
    """The two methods of UserStore the conditions use, over a dict."""

    def __init__(self, *users: User) -> None:
        self._users = {u.name: u for u in users}

    async def get(self, name: str) -> User | None:
        return self._users.get(name.lower())


def user(name: str, *roles: str, disabled: bool = False) -> User:
    return User(name, roles, disabled, NOW, NOW, password_hash="$argon2id$x")


class Caller:
    """A caller who is `name` (or nobody), counting how often it was asked."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.asked = 0

    async def authenticate(self) -> str:
        self.asked += 1
        if self.name is None:
            raise Unauthenticated("who are you?")
        return self.name

    def not_after(self) -> float | None:
        return None

    def token_id(self) -> str | None:
        return None  # authenticated as with a password


async def _no_token_is_asked_about(token_id: str) -> str | None:
    raise AssertionError("these callers authenticate as with a password")


def discharger(*users: User) -> Discharger:
    conditions = Conditions(
        users=Users(*users),  # type: ignore[arg-type]
        lockout=MemoryLockoutStore(),
        clock=lambda: NOW,
        issuer_of=_no_token_is_asked_about,
    )
    return Discharger(KEY, conditions=conditions, clock=lambda: NOW, ttl=timedelta(minutes=5))


def request(condition: str, version: int = 2, namespace: str = "std:") -> DischargeRequest:
    cav = codec.encode_caveat(
        condition,
        ROOT,
        version=version,
        third_party_public_key=KEY.public,
        key=DischargerKey.generate(),
        namespace=namespace,
    )
    return DischargeRequest(b"\x03\x01", cav) if version == 3 else DischargeRequest(cav)


async def test_the_discharge_is_a_macaroon_over_the_caveat_root_key() -> None:
    """Id = caveat id, caveats = time-before now+ttl and the declarations, signature from the root key."""
    req = request("user-is alice")

    result = await discharger(user("alice")).discharge(req, Caller("alice"))

    expected = chain.sign(
        derived_key=chain.derive_key(ROOT),
        identifier=req.id,
        caveats=[
            Caveat(
                f"time-before {format_rfc3339((NOW + timedelta(minutes=5)).timestamp())}".encode()
            ),
            Caveat(b"declared username alice"),
        ],
        location=None,
    )
    assert result.macaroon == expected and result.macaroon.signature == expected.signature
    assert result.declared == {"username": "alice"}
    assert result.expires_at == (NOW + timedelta(minutes=5)).timestamp()


async def test_the_caller_is_authenticated_only_when_a_condition_needs_it() -> None:
    """A condition the discharger does not know asks nothing of the caller; user-is asks once."""
    caller = Caller("alice")
    d = discharger(user("alice"))

    with pytest.raises(ConditionNotRecognized):
        await d.discharge(request("frobnicate alice"), caller)
    asked_after_unknown = caller.asked
    await d.discharge(request("user-is alice"), caller)

    assert asked_after_unknown == 0
    assert caller.asked == 1


@pytest.mark.parametrize(
    ("condition", "caller", "error", "message"),
    [
        ("user-is alice", None, Unauthenticated, "who are you"),
        ("user-is alice", "bob", ConditionRefused, "not 'alice'"),
        ("user-is NOT A NAME", "alice", ConditionRefused, "not a user name"),
        ("user-is carol", "carol", ConditionRefused, "not an enabled user"),
        ("user-is ghost", "ghost", ConditionRefused, "not an enabled user"),
        ("has-role dev", "bob", ConditionRefused, "does not have role"),
        ("has-role Bad Role", "alice", ConditionRefused, "not a role name"),
        ("account-active carol", "admin", ConditionRefused, "not active"),
        ("account-active ghost", "admin", ConditionRefused, "not active"),
        ("account-active bob", "alice", ConditionRefused, "only the account itself or an admin"),
        ("account-active ghost", "alice", ConditionRefused, "only the account itself or an admin"),
        ("account-active alice", None, Unauthenticated, "who are you"),
        ("frobnicate", "alice", ConditionNotRecognized, "not recognized"),
        ("need-declared username", "alice", MalformedCaveat, "need-declared"),
        ("need-declared a,,b user-is alice", "alice", MalformedCaveat, "need-declared"),
    ],
)
async def test_conditions_that_do_not_hold_are_refused_with_a_reason(
    condition: str, caller: str | None, error: type[Exception], message: str
) -> None:
    """Wrong or absent callers, disabled or unknown users, missing roles, unknown or malformed conditions."""
    d = discharger(
        user("alice", "dev"), user("bob"), user("carol", disabled=True), user("admin", "admin")
    )

    with pytest.raises(error, match=message):
        await d.discharge(request(condition), Caller(caller))


async def test_requests_that_cannot_be_discharged_are_malformed() -> None:
    """No id, an oversized id, a v1 caveat under a binary id, a namespace without std: MalformedCaveat."""
    d = discharger(user("alice"))
    v1 = request("account-active alice", version=1)

    cases = {
        "no id": DischargeRequest(b""),
        "oversized id": DischargeRequest(b"e" * (codec.MAX_CAVEAT_BYTES + 1)),
        "binary v1 id": DischargeRequest(b"\xff\x00", v1.id),
        "no std": request("account-active alice", version=3, namespace="other:"),
    }

    for name, req in cases.items():
        with pytest.raises(MalformedCaveat):
            await d.discharge(req, Caller("alice"))
        assert name


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_response_body_is_what_the_bakery_client_reads(version: int) -> None:
    """`{"Macaroon": …}` of each version is read by bakery.Macaroon.from_dict into the same signature."""
    result = await discharger(user("alice")).discharge(
        request("account-active alice", version), Caller("alice")
    )

    read: Any = bakery.Macaroon.from_dict(result.response_body()["Macaroon"])

    assert bytes.fromhex(read.macaroon.signature) == result.macaroon.signature
    assert checkers.infer_declared([read.macaroon]) == {}


def test_info_gives_the_public_key_and_version_3() -> None:
    """The /discharge/info body: standard base64 of the public key, Version 3."""
    info = discharger().info()

    assert info == {"PublicKey": base64.b64encode(KEY.public).decode(), "Version": 3}
    assert bakery.PublicKey.deserialize(info["PublicKey"]).serialize(raw=True) == KEY.public
