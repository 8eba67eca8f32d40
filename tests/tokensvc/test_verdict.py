"""POST /v1/verdict: cacheable, signature-checked token facts for zero-hop clients (issue 20).

Every test runs against the real app factory on PostgreSQL and on SQLite.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING, Any

import pytest

from caveats import Context, Operations, Policy, decide, encode
from tests.conftest import ADMIN_PASSWORD, FakeClock, make_config
from tests.served import ServedTestServer
from tests.tokensvc.test_api_mfa import ALICE, answer, code, enrolled_user, password_login
from tests.tokensvc.test_api_verify import discharge, pymacaroon, with_third_party
from tokensvc.macaroons.attenuation import attenuate
from tokensvc.web.app import create_app

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]

VERDICT_FIELDS = {
    "subject",
    "token_id",
    "key_id",
    "admin",
    "mfa",
    "generation",
    "expires_at",
    "key_expires_at",
    "caveats",
    "described",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint(client: Client, admin_token: str, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/tokens", json=body, headers=bearer(admin_token))
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


@pytest.fixture
async def caller(client: Client, admin_token: str) -> str:
    """A service's token that may ask for verdicts (and nothing else)."""
    minted = await mint(
        client, admin_token, subject="svc-files", operations=["tokens:verdict"], ttl=3600
    )
    return str(minted["token"])


async def ask(
    client: Client, caller: str, token: str, discharges: list[str] | None = None
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"token": token}
    if discharges is not None:
        body["discharges"] = discharges
    resp = await client.post("/v1/verdict", json=body, headers=bearer(caller))
    return resp.status, dict(await resp.json())


def predicates(verdict: dict[str, Any]) -> list[bytes]:
    return [base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)) for c in verdict["caveats"]]


async def test_verdict_shape_and_local_decisions_match_the_scope(
    client: Client, admin_token: str, caller: str, clock: FakeClock
) -> None:
    """A live token's verdict has every contract field, and deciding on its caveats allows the
    token's scope and denies (403-kind) outside it."""
    minted = await mint(
        client,
        admin_token,
        subject="alice",
        operations=["read"],
        resources=["/docs/*"],
        audience="files",
        ttl=600,
    )

    status, body = await ask(client, caller, minted["token"])

    assert status == 200, body
    assert set(body) == {"verdict", "cache_ttl", "cursor"}
    verdict = body["verdict"]
    assert set(verdict) == VERDICT_FIELDS
    assert verdict["subject"] == "alice"
    assert verdict["token_id"] == minted["token_id"]
    assert verdict["admin"] is False
    assert verdict["mfa"] is False  # a password-only login
    assert verdict["generation"] == 0
    now = clock.now.timestamp()
    assert verdict["expires_at"] == pytest.approx(now + 600, abs=1)
    assert verdict["key_expires_at"] > verdict["expires_at"]
    assert body["cursor"].isdigit()
    assert 0 < body["cache_ttl"] <= 300
    assert {d["type"] for d in verdict["described"]} >= {"subject", "operations", "resources"}
    policy = Policy(predicates(verdict))
    allowed = Context(now, "read", "/docs/a", "files", None, verdict["generation"])
    assert decide(policy, allowed) is None
    denied = decide(policy, Context(now, "write", "/docs/a", "files", None, 0))
    assert denied is not None
    assert not denied.invalid


async def test_an_mfa_login_token_has_an_mfa_verdict(
    client: Client, caller: str, clock: FakeClock
) -> None:
    """A token from a login with a TOTP code has `"mfa": true` in its verdict, and keeps it when
    its holder attenuates it; a password-only login's token has `"mfa": false`."""
    secret, _ = await enrolled_user(client, clock)
    _, first = await password_login(client, "alice", ALICE)
    _, strong = await answer(client, first["challenge"], code(secret, clock))
    plain = await client.post("/v1/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    narrowed = attenuate(strong["token"], [encode(Operations(("read",)))])

    strong_status, strong_body = await ask(client, caller, strong["token"])
    narrowed_status, narrowed_body = await ask(client, caller, narrowed)
    plain_status, plain_body = await ask(client, caller, (await plain.json())["token"])

    assert strong["mfa"] is True
    assert strong_status == 200 and strong_body["verdict"]["mfa"] is True
    assert strong_body["verdict"]["subject"] == "alice"
    assert narrowed_status == 200 and narrowed_body["verdict"]["mfa"] is True
    assert plain_status == 200 and plain_body["verdict"]["mfa"] is False


async def test_verdict_reveals_nothing_of_the_registry(
    client: Client, admin_token: str, caller: str
) -> None:
    """Description, creator and use of a token stay out of its verdict: only what the token says."""
    minted = await mint(
        client, admin_token, subject="alice", description="quarterly-payroll-export", ttl=600
    )

    status, body = await ask(client, caller, minted["token"])

    assert status == 200
    text = str(body)
    assert "quarterly-payroll-export" not in text
    assert "admin" not in {d.get("subject") for d in body["verdict"]["described"]}
    assert set(body["verdict"]) == VERDICT_FIELDS


async def test_cache_ttl_is_bounded_by_the_token_expiry(
    client: Client, admin_token: str, caller: str
) -> None:
    """A token expiring in 30 s may be cached for at most 30 s."""
    minted = await mint(client, admin_token, subject="alice", ttl=30)

    status, body = await ask(client, caller, minted["token"])

    assert status == 200
    assert 0 < body["cache_ttl"] <= 30


async def test_cache_ttl_is_bounded_by_the_configured_maximum(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """TOKENSVC_VERDICT_MAX_CACHE_TTL caps every verdict's cache_ttl."""
    config = make_config(database_url=pg_url, data_dir=data_dir, verdict_max_cache_ttl=7)
    client = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    from tests.conftest import ADMIN_PASSWORD, basic_auth

    login = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    admin = str((await login.json())["token"])
    svc = (await mint(client, admin, subject="svc", operations=["tokens:verdict"]))["token"]
    target = (await mint(client, admin, subject="alice", ttl=3600))["token"]

    status, body = await ask(client, svc, target)

    assert status == 200
    assert body["cache_ttl"] == 7


async def test_discharge_caveats_are_part_of_the_verdict(
    client: Client, admin_token: str, caller: str
) -> None:
    """The verdict's caveats include the bound discharge's, so a local decision applies them."""
    key, cid = os.urandom(32), b"idp-caveat-verdict"
    token = with_third_party(
        (await mint(client, admin_token, subject="alice"))["token"], caveat_key=key, caveat_id=cid
    )
    bound = pymacaroon(token).prepare_for_request(discharge(key, cid, "allow read")).serialize()

    status, body = await ask(client, caller, token, [bound])
    missing, _ = await ask(client, caller, token)

    assert status == 200, body
    assert b"allow read" in predicates(body["verdict"])
    policy = Policy(predicates(body["verdict"]))
    now = body["verdict"]["expires_at"] - 10
    assert decide(policy, Context(now, "read")) is None
    assert decide(policy, Context(now, "write")) is not None
    assert missing == 401


async def test_revoked_token_is_refused_like_verify(
    client: Client, admin_token: str, caller: str
) -> None:
    """A revoked token gets 401 {"valid": false, "reason": "token revoked"}, as from /v1/verify."""
    minted = await mint(client, admin_token, subject="alice")
    resp = await client.delete(f"/v1/tokens/{minted['token_id']}", headers=bearer(admin_token))
    assert resp.status == 204

    status, body = await ask(client, caller, minted["token"])

    assert status == 401
    assert body["valid"] is False
    assert body["reason"] == "token revoked"


async def test_revoke_all_and_expiry_and_garbage_are_refused(
    client: Client, admin_token: str, caller: str, clock: FakeClock
) -> None:
    """After revoke-all, after expiry, and for a token that is not ours, the verdict is a 401."""
    gen = await mint(client, admin_token, subject="bob")
    short = await mint(client, admin_token, subject="carol", ttl=60)
    resp = await client.post("/v1/subjects/bob/revoke-all", headers=bearer(admin_token))
    assert resp.status == 200, await resp.text()

    after_revoke_all = await ask(client, caller, gen["token"])
    garbage = await ask(client, caller, "tsv1_notatoken.abc")
    clock.advance(seconds=120)
    expired = await ask(client, caller, short["token"])

    for status, body in (after_revoke_all, garbage, expired):
        assert status == 401, body
        assert body["valid"] is False
        assert body["reason"]


async def test_caller_must_hold_a_genuine_token(client: Client, admin_token: str) -> None:
    """No Authorization, or a bad token, is a 401 error object (not a verdict about the token)."""
    minted = await mint(client, admin_token, subject="alice")

    none = await client.post("/v1/verdict", json={"token": minted["token"]})
    bad = await client.post(
        "/v1/verdict", json={"token": minted["token"]}, headers=bearer("tsv1_bad.x")
    )

    for resp in (none, bad):
        assert resp.status == 401
        body = await resp.json()
        assert "error" in body
        assert "verdict" not in body
        assert "valid" not in body


async def test_caller_without_tokens_verdict_is_forbidden(client: Client, admin_token: str) -> None:
    """A genuine token that does not allow tokens:verdict is refused 403: holding a token is not
    enough to read another's facts."""
    reader = (await mint(client, admin_token, subject="svc", operations=["read"]))["token"]
    target = (await mint(client, admin_token, subject="alice"))["token"]

    status, body = await ask(client, reader, target)

    assert status == 403
    assert "error" in body
    assert "verdict" not in body


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"token": ""},
        {"token": 5},
        {"token": "x", "discharges": "y"},
        {"token": "x", "discharges": [1]},
        {"token": "x", "extra": 1},
    ],
)
async def test_bad_bodies_are_400(client: Client, caller: str, body: dict[str, Any]) -> None:
    """A malformed body is a 400 error object, never a 500."""
    resp = await client.post("/v1/verdict", json=body, headers=bearer(caller))

    assert resp.status == 400
    assert "error" in await resp.json()


def test_config_default_cache_ttl(app_config: Config) -> None:
    """The default longest cache time of a verdict is 300 s, as the contract says."""
    assert app_config.verdict_max_cache_ttl.total_seconds() == 300
