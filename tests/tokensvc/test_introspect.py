"""POST /v1/introspect (RFC 7662): live tokens report their claims, anything else `active: false`.

Every test runs against the real app factory on PostgreSQL and on SQLite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pymacaroons
import pytest

from tests.conftest import FakeClock
from tokensvc.services.principals import LocalOperator
from tokensvc.web import appkeys
from tokensvc.web.app import create_app
from tokensvc.web.handlers import introspect

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(aiohttp_client: Any, app_config: Config, clock: FakeClock) -> Client:
    """The real app with the introspection route, whether or not create_app registers it yet."""
    app = create_app(app_config, clock=clock)
    if not any(r.canonical == "/v1/introspect" for r in app.router.resources()):
        introspect.setup(app)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint(client: Client, admin_token: str, **body: Any) -> dict[str, Any]:
    """Mint through POST /v1/tokens with the admin's token; the response body."""
    resp = await client.post("/v1/tokens", json=body, headers=bearer(admin_token))
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def introspect_as(
    client: Client, caller: str, token: str, **form: str
) -> tuple[int, dict[str, Any]]:
    """POST /v1/introspect as `caller`; the status and the JSON body."""
    resp = await client.post(
        "/v1/introspect", data={"token": token, **form}, headers=bearer(caller)
    )
    return resp.status, dict(await resp.json())


# ---- live tokens -------------------------------------------------------------------------------------


async def test_live_token_reports_rfc7662_claims(client: Client, admin_token: str) -> None:
    """A live token answers active with sub, exp, jti, token_type, iss, scope and aud."""
    minted = await mint(
        client, admin_token, subject="alice", operations=["read", "write"], audience="shop"
    )

    resp = await client.post(
        "/v1/introspect",
        data={"token": minted["token"], "token_type_hint": "access_token"},
        headers=bearer(admin_token),
    )

    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body == {
        "active": True,
        "sub": "alice",
        "exp": body["exp"],
        "jti": minted["token_id"],
        "token_type": "macaroon",
        "iss": client.app[appkeys.CONFIG].location,
        "scope": "read write",
        "aud": "shop",
    }
    assert isinstance(body["exp"], int)


async def test_unrestricted_token_has_no_scope_or_aud(client: Client, admin_token: str) -> None:
    """A token without Operations or Audience caveats reports neither `scope` nor `aud`."""
    minted = await mint(client, admin_token, subject="bob")

    status, body = await introspect_as(client, admin_token, minted["token"])

    assert status == 200
    assert body["active"] is True and body["sub"] == "bob"
    assert "scope" not in body and "aud" not in body


async def test_attenuated_scope_is_the_intersection(client: Client, admin_token: str) -> None:
    """An attenuation that narrows the operations narrows the reported scope too."""
    minted = await mint(client, admin_token, subject="carol", operations=["read", "write"])
    narrowed = pymacaroons.Macaroon.deserialize(minted["token"][5:].rpartition(".")[0])
    narrowed.add_first_party_caveat('[3,["read","delete"]]')

    status, body = await introspect_as(client, admin_token, narrowed.serialize())

    assert status == 200
    assert body["active"] is True
    assert body["scope"] == "read"


@pytest.mark.parametrize(("deny", "scope"), [("deny", None), ("deny write", "read")])
async def test_a_deny_narrows_the_scope_as_verify_reads_it(
    client: Client, admin_token: str, deny: str, scope: str | None
) -> None:
    """Red team (helper-33): an empty `deny` restricts nothing (bakery's reading, and
    /v1/verify's), but introspection reported an empty scope, as if nothing were allowed."""
    minted = await mint(client, admin_token, subject="carol", operations=["read", "write"])
    narrowed = pymacaroons.Macaroon.deserialize(minted["token"][5:].rpartition(".")[0])
    narrowed.add_first_party_caveat(deny)

    status, body = await introspect_as(client, admin_token, narrowed.serialize())

    assert status == 200 and body["active"] is True
    assert body["scope"] == (scope or "read write")


# ---- inactive tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["nonsense", "tsv1_AAAA.zzzz", "x" * 20_000, "AgEEdGVzdAIEdGVzdAAABiAAAAAAAAAAAAAAAAAAAAAAAAA"],
)
async def test_unknown_or_malformed_token_is_inactive(
    client: Client, admin_token: str, token: str
) -> None:
    """Garbage, a bad checksum, an oversized or unknown token: 200 with only `active: false`."""
    status, body = await introspect_as(client, admin_token, token)

    assert (status, body) == (200, {"active": False})


async def test_expired_token_is_inactive(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    """Once the fake clock passes a token's expiry, introspection calls it inactive."""
    minted = await mint(client, admin_token, subject="dave", ttl=60)
    clock.advance(seconds=61)

    status, body = await introspect_as(client, admin_token, minted["token"])

    assert (status, body) == (200, {"active": False})


async def test_passed_time_before_attenuation_is_inactive(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    """A bakery `time-before` that has passed (a denial, not an invalidity) still means inactive."""
    minted = await mint(client, admin_token, subject="erin")
    narrowed = pymacaroons.Macaroon.deserialize(minted["token"][5:].rpartition(".")[0])
    narrowed.add_first_party_caveat("time-before 2001-01-01T00:00:00Z")

    status, body = await introspect_as(client, admin_token, narrowed.serialize())

    assert (status, body) == (200, {"active": False})


async def test_revoked_token_is_inactive(client: Client, admin_token: str) -> None:
    """A token killed by revoke-all of its subject is inactive."""
    minted = await mint(client, admin_token, subject="frank")
    await client.app[appkeys.SERVICES].tokens.revoke_all(LocalOperator("test"), "frank")

    status, body = await introspect_as(client, admin_token, minted["token"])

    assert (status, body) == (200, {"active": False})


# ---- the caller ----------------------------------------------------------------------------------------


async def test_unauthenticated_caller_is_refused(client: Client) -> None:
    """Without a bearer token the caller gets 401 with WWW-Authenticate and a JSON error."""
    resp = await client.post("/v1/introspect", data={"token": "anything"})

    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await resp.json())["error"]["code"] == "unauthenticated"


async def test_caller_with_invalid_token_is_refused(client: Client) -> None:
    """A caller presenting a garbage token gets 401 invalid_token."""
    resp = await client.post(
        "/v1/introspect", data={"token": "anything"}, headers=bearer("garbage")
    )

    assert resp.status == 401
    assert "WWW-Authenticate" in resp.headers
    assert (await resp.json())["error"]["code"] == "invalid_token"


async def test_caller_without_introspect_operation_is_forbidden(
    client: Client, admin_token: str
) -> None:
    """A caller whose token allows only `read` may not introspect: 403."""
    caller = await mint(client, admin_token, subject="svc", operations=["read"])

    status, body = await introspect_as(client, caller["token"], admin_token)

    assert status == 403
    assert body["error"]["code"] == "caveat_denied"


async def test_caller_with_other_audience_is_forbidden(client: Client, admin_token: str) -> None:
    """A caller token for another audience may not introspect on tokensvc: 403."""
    caller = await mint(client, admin_token, subject="svc", audience="elsewhere")

    status, _ = await introspect_as(client, caller["token"], admin_token)

    assert status == 403


async def test_narrow_introspect_token_may_introspect(client: Client, admin_token: str) -> None:
    """A service token limited to `tokens:introspect` on audience `tokensvc` is enough."""
    caller = await mint(
        client, admin_token, subject="svc", operations=["tokens:introspect"], audience="tokensvc"
    )

    status, body = await introspect_as(client, caller["token"], admin_token)

    assert status == 200
    assert body["active"] is True and body["sub"] == "admin"


async def test_missing_token_field_is_bad_request(client: Client, admin_token: str) -> None:
    """A form without `token` is a 400, not an inactive answer."""
    resp = await client.post("/v1/introspect", data={"nope": "x"}, headers=bearer(admin_token))

    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"


async def test_json_body_is_bad_request(client: Client, admin_token: str) -> None:
    """RFC 7662 is form-encoded; a JSON body finds no `token` field and gets a 400."""
    resp = await client.post("/v1/introspect", json={"token": "x"}, headers=bearer(admin_token))

    assert resp.status == 400
