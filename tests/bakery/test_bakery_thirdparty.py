"""Learning dischargers' keys (allow-list, cache, fallback, bad answers) and adding caveats for them."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from macaroonbakery import bakery

from keystore.discharger_key import DischargerKey
from tokensvc.bakery.config import BakeryConfig, ThirdPartyKey
from tokensvc.bakery.errors import ThirdPartyNotAllowed, ThirdPartyUnavailable
from tokensvc.bakery.thirdparty import (
    ThirdPartyInfo,
    ThirdPartyLocator,
    ThirdPartyRequest,
    add_third_party_caveats,
    parse_third_party,
)
from tokensvc.errors import BadRequest
from tokensvc.macaroons import chain

MakeServer = Callable[..., Awaitable[TestServer]]
KEY = bakery.generate_key()
PUBLIC = KEY.public_key.serialize(raw=True)


class Discharger:
    """A loopback discharger whose key endpoints answer what a test wants, counting requests."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.info: tuple[int, Any] = (200, {"PublicKey": str(KEY.public_key), "Version": 3})
        self.legacy: tuple[int, Any] = (200, {"PublicKey": str(KEY.public_key)})
        self.delay = 0.0

    def app(self) -> web.Application:
        async def answer(request: web.Request) -> web.StreamResponse:
            self.hits.append(request.path)
            await asyncio.sleep(self.delay)
            status, body = self.info if request.path == "/discharge/info" else self.legacy
            if status in (301, 302):
                raise web.HTTPFound(body)
            if isinstance(body, bytes):
                return web.Response(status=status, body=body)
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_get("/discharge/info", answer)
        app.router.add_get("/publickey", answer)
        return app


@pytest.fixture
async def discharger(aiohttp_server: MakeServer) -> tuple[Discharger, str]:
    """A scriptable discharger and its location."""
    fake = Discharger()
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("")).rstrip("/")


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def locate(location: str, config: BakeryConfig, ticks: Ticks | None = None) -> ThirdPartyInfo:
    locator = ThirdPartyLocator(config, monotonic=ticks or Ticks())
    try:
        return await locator.info(location)
    finally:
        await locator.close()


# ---- the locator -----------------------------------------------------------------------------------


async def test_allow_listed_location_is_fetched_once_then_cached_until_the_ttl(
    discharger: tuple[Discharger, str],
) -> None:
    """/discharge/info is fetched on first use, served from the cache after, and fetched again past the TTL."""
    fake, location = discharger
    ticks = Ticks()
    locator = ThirdPartyLocator(
        BakeryConfig(third_party_locations=(location + "/",), info_cache_ttl=timedelta(minutes=1)),
        monotonic=ticks,
    )

    first = await locator.info(location)
    second = await locator.info(location + "/")
    ticks.now += 61
    third = await locator.info(location)
    await locator.close()

    assert first == second == third == ThirdPartyInfo(PUBLIC, 3)
    assert fake.hits == ["/discharge/info", "/discharge/info"]


async def test_concurrent_lookups_share_one_fetch(discharger: tuple[Discharger, str]) -> None:
    """Ten lookups at once of an uncached location make one request."""
    fake, location = discharger
    fake.delay = 0.2
    locator = ThirdPartyLocator(BakeryConfig(third_party_locations=(location,)))

    infos = await asyncio.gather(*(locator.info(location) for _ in range(10)))
    await locator.close()

    assert len(set(infos)) == 1
    assert fake.hits == ["/discharge/info"]


async def test_a_v1_discharger_is_found_through_publickey(
    discharger: tuple[Discharger, str],
) -> None:
    """A 404 on /discharge/info falls back to /publickey; no Version means version 1."""
    fake, location = discharger
    fake.info = (404, {"Code": "not found", "Message": "no"})

    info = await locate(location, BakeryConfig(third_party_locations=(location,)))

    assert info == ThirdPartyInfo(PUBLIC, 1)
    assert fake.hits == ["/discharge/info", "/publickey"]


async def test_unlisted_locations_are_refused_without_any_request(
    discharger: tuple[Discharger, str],
) -> None:
    """A location neither allow-listed nor configured is ThirdPartyNotAllowed, and nothing is fetched."""
    fake, location = discharger

    with pytest.raises(ThirdPartyNotAllowed, match="not allowed"):
        await locate(location, BakeryConfig(third_party_locations=("https://elsewhere.example",)))
    with pytest.raises(ThirdPartyNotAllowed):
        await locate(location + "/sub", BakeryConfig(third_party_locations=(location,)))

    assert fake.hits == []


async def test_configured_keys_are_used_without_fetching(
    discharger: tuple[Discharger, str],
) -> None:
    """A location with a configured key and version never causes a request."""
    fake, location = discharger
    configured = ThirdPartyKey(location, b"k" * 32, 1)

    info = await locate(location, BakeryConfig(third_party_keys=(configured,)))

    assert info == ThirdPartyInfo(b"k" * 32, 1)
    assert fake.hits == []


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ((500, {"Code": "x"}), "HTTP 500"),
        ((200, b"not json"), "did not answer JSON"),
        ((200, {"Version": 3}), "no PublicKey"),
        ((200, {"PublicKey": "!!"}), "not base64"),
        ((200, {"PublicKey": base64.b64encode(b"short").decode()}), "not 32 bytes"),
        ((200, {"PublicKey": str(KEY.public_key), "Version": "3"}), "invalid Version"),
        ((200, {"PublicKey": str(KEY.public_key), "Version": 0}), "invalid Version"),
        ((200, {"PublicKey": str(KEY.public_key), "Version": True}), "invalid Version"),
        ((200, b"[" * 70000), "oversized"),
        ((302, "https://evil.example/discharge/info"), "HTTP 302"),
    ],
)
async def test_bad_answers_are_unavailable_with_a_reason(
    discharger: tuple[Discharger, str], info: tuple[int, Any], message: str
) -> None:
    """Errors, non-JSON, missing or malformed keys and versions, huge bodies and redirects: ThirdPartyUnavailable."""
    fake, location = discharger
    fake.info = info

    with pytest.raises(ThirdPartyUnavailable, match=message):
        await locate(location, BakeryConfig(third_party_locations=(location,)))


async def test_an_unreachable_discharger_is_unavailable() -> None:
    """Nothing listening at an allow-listed location: ThirdPartyUnavailable, quickly."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    location = f"http://127.0.0.1:{port}"

    with pytest.raises(ThirdPartyUnavailable, match="cannot reach"):
        await locate(location, BakeryConfig(third_party_locations=(location,), fetch_timeout=2))


# ---- adding caveats --------------------------------------------------------------------------------


def a_macaroon() -> Any:
    return chain.sign(
        derived_key=chain.derive_key(os.urandom(32)),
        identifier=b"token",
        caveats=[],
        location=b"tokensvc",
    )


@pytest.mark.parametrize(("version", "first_byte"), [(1, b"e"), (2, b"\x02"), (3, b"\x02")])
async def test_added_caveats_are_what_the_discharger_decodes(
    version: int, first_byte: bytes
) -> None:
    """Each added caveat names its location and decodes with the discharger's key to its condition, in the version it reads (v3 → v2)."""
    me = DischargerKey.generate()
    location = "https://idm.example/"
    locator = ThirdPartyLocator(
        BakeryConfig(third_party_keys=(ThirdPartyKey(location, PUBLIC, version),))
    )
    base = a_macaroon()

    macaroon = await add_third_party_caveats(
        base,
        [ThirdPartyRequest(location, "user-is alice"), ThirdPartyRequest(location, "has-role x")],
        locator=locator,
        key=me,
    )

    added = macaroon.caveats
    assert [c.location for c in added] == [b"https://idm.example", b"https://idm.example"]
    decoded = [bakery.decode_caveat(KEY, c.cid) for c in added]
    assert [d.condition for d in decoded] == ["user-is alice", "has-role x"]
    assert {c.cid[:1] for c in added} == {first_byte}
    assert all(d.first_party_public_key.serialize(raw=True) == me.public for d in decoded)
    assert macaroon.signature != base.signature


@pytest.mark.parametrize(
    "requests",
    [
        [ThirdPartyRequest("https://idm.example", "")],
        [ThirdPartyRequest("https://idm.example", " leading space")],
        [ThirdPartyRequest("https://idm.example", "line\nbreak")],
        [ThirdPartyRequest("https://idm.example", "x" * 1025)],
        [ThirdPartyRequest("", "user-is alice")],
        [ThirdPartyRequest("https://idm.example", "user-is alice")] * 9,
        [
            ThirdPartyRequest("https://idm.example", "ok"),
            ThirdPartyRequest("https://no.example", "ok"),
        ],
    ],
)
async def test_bad_requests_add_nothing_and_fetch_nothing(
    requests: list[ThirdPartyRequest],
) -> None:
    """Empty, spaced, multi-line or long conditions, no location, too many, or one unlisted location: refused before any fetch."""
    locator = ThirdPartyLocator(
        BakeryConfig(third_party_keys=(ThirdPartyKey("https://idm.example", PUBLIC),))
    )

    with pytest.raises(BadRequest):
        await add_third_party_caveats(
            a_macaroon(), requests, locator=locator, key=DischargerKey.generate()
        )


def test_mint_bodies_third_party_field_is_validated() -> None:
    """`third_party` must be a list of {location, condition} objects, nothing more."""
    good = parse_third_party([{"location": "https://idm.example/", "condition": "user-is bob"}])

    assert good == (ThirdPartyRequest("https://idm.example", "user-is bob"),)
    assert parse_third_party(None) == ()
    for bad in (
        "x",
        [1],
        [{"location": "x"}],
        [{"location": "x", "condition": "y", "z": 1}],
        [{"location": 1, "condition": "y"}],
    ):
        with pytest.raises(BadRequest):
            parse_third_party(bad)
