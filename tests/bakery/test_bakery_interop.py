"""Acceptance with the real macaroonbakery package, both ways, over loopback HTTP.

(a) A bakery service (Bakery/Oven with its own key) adds a third-party caveat addressed to
    tokensvc's discharger; an unmodified `httpbakery.Client` gets the discharge from tokensvc and
    the service lets the request through — for caveat versions 1, 2 and 3. A refused condition
    reaches the client as a `DischargeError`.
(b) tokensvc adds a third-party caveat addressed to a bakery discharger (`httpbakery.discharge`
    behind a loopback server); the discharge, bound, makes /v1/verify say valid; without it,
    unbound, or bound to another token, 401.

The bakery client uses `requests`, so it runs in a thread (`asyncio.to_thread`) while this
event loop keeps serving tokensvc and the other loopback servers.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pymacaroons
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from macaroonbakery import bakery, checkers, httpbakery

from tests.bakery.conftest import ALICE_PASSWORD, Client, login, mint, with_third_party
from tests.conftest import FakeClock
from tokensvc.web.handlers.bakery import TOKEN_COOKIE

OP = bakery.Op(entity="doc", action="read")
VERSIONS = [bakery.VERSION_1, bakery.VERSION_2, bakery.VERSION_3]

MakeServer = Callable[..., Awaitable[TestServer]]


# ---- (a) a bakery service whose macaroons need tokensvc's discharge -------------------------------


def protected_service(
    service: bakery.Bakery, location: str, condition: str, caveat_ids: list[bytes]
) -> web.Application:
    """A bakery-protected resource: macaroons in cookies, else a discharge-required error.

    The third-party caveat ids it hands out are appended to `caveat_ids`.
    """

    async def resource(request: web.Request) -> web.Response:
        macaroons = httpbakery.extract_macaroons(request.headers)
        try:
            service.checker.auth(macaroons).allow(checkers.AuthContext(), [OP])
        except (bakery.DischargeRequiredError, bakery.PermissionDenied, bakery.VerificationError):
            minted = service.oven.macaroon(
                version=bakery.LATEST_VERSION,
                # The bakery wants naive UTC datetimes.
                expiry=datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=10),
                caveats=[checkers.Caveat(location=location, condition=condition)],
                ops=[OP],
            )
            caveat_ids.extend(c.caveat_id_bytes for c in minted.macaroon.third_party_caveats())
            content, headers = httpbakery.discharge_required_response(minted, "/", "svc")
            return web.Response(body=content, status=401, headers=headers)
        declared = checkers.infer_declared([m for ms in macaroons for m in ms])
        return web.Response(text=f"done {declared.get('username')}")

    app = web.Application()
    app.router.add_get("/resource", resource)
    return app


def bakery_client_with_token(token: str) -> httpbakery.Client:
    """An unmodified httpbakery.Client whose cookie jar carries a tokensvc token."""
    client = httpbakery.Client()
    client.cookies.set_cookie(requests.cookies.create_cookie(TOKEN_COOKIE, token))
    return client


async def bakery_service_for(
    aiohttp_server: MakeServer,
    discharger_url: str,
    condition: str,
    version: int,
    caveat_ids: list[bytes] | None = None,
) -> str:
    """Serve a bakery service whose caveat for `discharger_url` is of `version`; its resource URL.

    tokensvc's key is learnt by the bakery's own `httpbakery.ThirdPartyLocator` from
    /discharge/info; the version is then pinned to the one under test.
    """
    learnt = await asyncio.to_thread(
        httpbakery.ThirdPartyLocator(allow_insecure=True).third_party_info, discharger_url
    )
    assert learnt.version == bakery.VERSION_3
    store = bakery.ThirdPartyStore()
    store.add_info(
        discharger_url, bakery.ThirdPartyInfo(version=version, public_key=learnt.public_key)
    )
    service = bakery.Bakery(location="svc", locator=store, key=bakery.generate_key())
    app = protected_service(
        service, discharger_url, condition, [] if caveat_ids is None else caveat_ids
    )
    server = await aiohttp_server(app)
    return str(server.make_url("/resource"))


@pytest.mark.parametrize("version", VERSIONS)
async def test_bakery_service_accepts_tokensvc_discharges_at_every_version(
    aiohttp_server: MakeServer,
    client: Client,
    users: dict[str, str],
    discharger_url: str,
    version: int,
) -> None:
    """An unmodified httpbakery.Client gets `user-is alice` discharged by tokensvc and the bakery service lets it in, declaring alice."""
    caveat_ids: list[bytes] = []
    resource = await bakery_service_for(
        aiohttp_server, discharger_url, "user-is alice", version, caveat_ids
    )
    alice = bakery_client_with_token(await login(client, "alice", ALICE_PASSWORD))

    resp = await asyncio.to_thread(alice.request, "GET", resource)

    assert resp.status_code == 200, resp.text
    assert resp.text == "done alice"
    # The caveat really was of the version under test: v1 base64 JSON, v2 binary, v3 a short id.
    first_bytes = {caveat_id[:1] for caveat_id in caveat_ids}
    assert first_bytes == {{1: b"e", 2: b"\x02", 3: b"\x03"}[version]}


async def test_refused_condition_reaches_the_bakery_client_as_a_discharge_error(
    aiohttp_server: MakeServer, client: Client, users: dict[str, str], discharger_url: str
) -> None:
    """A caveat alice cannot satisfy (`user-is bob`) makes the bakery client raise DischargeError with tokensvc's reason."""
    resource = await bakery_service_for(aiohttp_server, discharger_url, "user-is bob", 3)
    alice = bakery_client_with_token(await login(client, "alice", ALICE_PASSWORD))

    with pytest.raises(httpbakery.DischargeError, match="authenticated as 'alice', not 'bob'"):
        await asyncio.to_thread(alice.request, "GET", resource)


async def test_anonymous_bakery_client_gets_a_discharge_error_not_a_crash(
    aiohttp_server: MakeServer, client: Client, users: dict[str, str], discharger_url: str
) -> None:
    """Without any credential, `user-is alice` is refused to the bakery client as a DischargeError."""
    resource = await bakery_service_for(aiohttp_server, discharger_url, "user-is alice", 2)

    with pytest.raises(httpbakery.DischargeError, match="authenticate"):
        await asyncio.to_thread(httpbakery.Client().request, "GET", resource)


# ---- (b) tokensvc tokens whose caveat a bakery discharger discharges ------------------------------


class IsOk(bakery.ThirdPartyCaveatChecker):  # type: ignore[misc]
    """The bakery discharger's checker: `is-ok` holds and declares bob; anything else fails."""

    def check_third_party_caveat(self, ctx: Any, info: Any) -> list[checkers.Caveat]:
        if info.condition != "is-ok":
            raise bakery.ThirdPartyCaveatCheckFailed(f"{info.condition} does not hold")
        return [checkers.declared_caveat("username", "bob")]


def bakery_discharger(key: bakery.PrivateKey, version: int) -> web.Application:
    """A bakery discharger as httpbakery serves one; a v1 one has only /publickey."""

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"PublicKey": str(key.public_key), "Version": version})

    async def legacy(request: web.Request) -> web.Response:
        return web.json_response({"PublicKey": str(key.public_key)})

    async def discharge(request: web.Request) -> web.Response:
        content = dict(await request.post())
        try:
            macaroon = httpbakery.discharge(
                checkers.AuthContext(), content, key, bakery.ThirdPartyStore(), IsOk()
            )
        except bakery.ThirdPartyCaveatCheckFailed as exc:
            return web.json_response({"Code": "permission denied", "Message": str(exc)}, status=403)
        return web.json_response({"Macaroon": macaroon.to_dict()})

    app = web.Application()
    if version > 1:
        app.router.add_get("/discharge/info", info)
    app.router.add_get("/publickey", legacy)
    app.router.add_post("/discharge", discharge)
    return app


def as_pymacaroon(token: str) -> pymacaroons.Macaroon:
    return pymacaroons.Macaroon.deserialize(token[5:].rpartition(".")[0])


async def get_discharge(
    token: str, http_client: httpbakery.Client | None = None
) -> pymacaroons.Macaroon:
    """The discharge of the token's one third-party caveat, fetched by an unmodified bakery client."""
    (caveat,) = as_pymacaroon(token).third_party_caveats()
    discharge = await asyncio.to_thread(
        (http_client or httpbakery.Client()).acquire_discharge, caveat, None
    )
    return discharge.macaroon


async def verify(client: Client, token: str, discharges: list[str]) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/verify", json={"token": token, "discharges": discharges})
    return resp.status, dict(await resp.json())


@pytest.mark.parametrize("version", VERSIONS)
async def test_tokensvc_token_with_a_bakery_discharger_caveat_verifies_only_with_its_bound_discharge(
    aiohttp_server: MakeServer, client: Client, admin_token: str, version: int
) -> None:
    """Bound discharge from a bakery discharger (v1-v3): 200 with bob declared; none, unbound, or bound to another token: 401."""
    key = bakery.generate_key()
    location = str((await aiohttp_server(bakery_discharger(key, version))).make_url(""))
    token = await with_third_party(
        client, await mint(client, admin_token, subject="alice"), location, "is-ok"
    )
    other = await mint(client, admin_token, subject="alice")
    discharge = await get_discharge(token)
    narrowed = as_pymacaroon(token)
    narrowed.add_first_party_caveat("time-before 2100-01-01T00:00:00Z")

    results = {
        "bound": await verify(
            client, token, [as_pymacaroon(token).prepare_for_request(discharge).serialize()]
        ),
        "none": await verify(client, token, []),
        "unbound": await verify(client, token, [discharge.serialize()]),
        "bound to another token": await verify(
            client, token, [as_pymacaroon(other).prepare_for_request(discharge).serialize()]
        ),
        "bound to the token before attenuation": await verify(
            client,
            narrowed.serialize(),
            [as_pymacaroon(token).prepare_for_request(discharge).serialize()],
        ),
    }

    assert results["bound"][0] == 200, results["bound"]
    assert results["bound"][1]["subject"] == "alice"
    assert results["bound"][1]["declared"] == {"username": "bob"}
    for name in (
        "none",
        "unbound",
        "bound to another token",
        "bound to the token before attenuation",
    ):
        status, body = results[name]
        assert status == 401, (name, body)
        assert body["valid"] is False and body["reason"], name


async def test_the_caveat_id_matches_what_the_discharger_reads(
    aiohttp_server: MakeServer, client: Client, admin_token: str
) -> None:
    """A v1-only discharger gets a base64 JSON id, a v3 one a binary v2 id (tokens carry no cdata)."""
    ids = {}
    for version in (1, 3):
        location = str(
            (await aiohttp_server(bakery_discharger(bakery.generate_key(), version))).make_url("")
        )
        token = await with_third_party(
            client, await mint(client, admin_token, subject="alice"), location, "is-ok"
        )
        (caveat,) = as_pymacaroon(token).third_party_caveats()
        ids[version] = caveat.caveat_id_bytes

    assert json.loads(base64.b64decode(ids[1]))["Id"]
    assert ids[3][0] == 2


async def test_a_refusing_bakery_discharger_is_a_discharge_error(
    aiohttp_server: MakeServer, client: Client, admin_token: str
) -> None:
    """A condition the bakery discharger refuses reaches the bakery client as DischargeError."""
    location = str((await aiohttp_server(bakery_discharger(bakery.generate_key(), 3))).make_url(""))
    token = await with_third_party(
        client, await mint(client, admin_token, subject="alice"), location, "is-not-ok"
    )

    with pytest.raises(httpbakery.DischargeError, match="is-not-ok does not hold"):
        await get_discharge(token)


# ---- tokensvc discharging its own tokens: expiry and replay ------------------------------------------


async def test_a_tokensvc_discharge_expires_with_its_time_before(
    client: Client, admin_token: str, users: dict[str, str], discharger_url: str, clock: FakeClock
) -> None:
    """A token needing `user-is alice` from tokensvc itself: valid with the discharge, refused once the clock passes its time-before."""
    token = await with_third_party(
        client,
        await mint(client, admin_token, subject="alice", ttl=3600),
        discharger_url,
        "user-is alice",
    )
    alice = bakery_client_with_token(await login(client, "alice", ALICE_PASSWORD))
    bound = as_pymacaroon(token).prepare_for_request(await get_discharge(token, alice)).serialize()

    fresh = await verify(client, token, [bound])
    clock.advance(minutes=5, seconds=1)
    expired = await verify(client, token, [bound])

    assert fresh[0] == 200, fresh
    assert fresh[1]["declared"] == {"username": "alice"}
    # Today the Verifier reads a passed time-before as a context denial (403); 401 would do too.
    assert expired[0] in (401, 403), expired
    assert expired[1]["valid"] is False and "expired" in expired[1]["reason"]


async def test_a_tokensvc_discharge_replayed_on_another_token_is_refused(
    client: Client, admin_token: str, users: dict[str, str], discharger_url: str
) -> None:
    """Alice's discharge for token A, bound to token B (which has its own caveat for tokensvc), is 401."""
    a = await with_third_party(
        client, await mint(client, admin_token, subject="alice"), discharger_url, "user-is alice"
    )
    b = await with_third_party(
        client, await mint(client, admin_token, subject="mallory"), discharger_url, "user-is alice"
    )
    alice = bakery_client_with_token(await login(client, "alice", ALICE_PASSWORD))
    discharge_a = await get_discharge(a, alice)

    status, body = await verify(
        client, b, [as_pymacaroon(b).prepare_for_request(discharge_a).serialize()]
    )

    assert status == 401, body
    assert body["valid"] is False
