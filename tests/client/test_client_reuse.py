"""Remembered allows (TokensvcClient.allowed): reused only while every input of the decision is
what it was: no stream event since, the stream live, the verdict valid, no expiry passed, and no
caveat that reads the client address. Each test is an attack on the shortcut: a request it
would have let through that a full check refuses."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web

from caveats import (
    Audience,
    ClientCIDR,
    Expiry,
    Generation,
    NotBefore,
    Operations,
    Subject,
    encode,
)
from tests.client.test_client_units import verdict_body
from tokensvc_client import TokensvcClient
from tokensvc_client.errors import CaveatDenied, InvalidToken
from tokensvc_client.verdicts import parse_verdict
from tokensvc_client.web import principal, tokensvc_middleware

TOKEN = "t0ken"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def client_with(
    caveats: list[bytes], *, now: float = 1000.0, ttl: float = 60, **options: Any
) -> Any:
    """A client whose cache holds TOKEN's verdict, with a live stream (a stand-in that only
    says until when it is live: these tests are about the decision, not the connection)."""
    clock = Clock(now)
    client = TokensvcClient("http://tokensvc.invalid", "svc", clock=clock, **options)
    verdict = parse_verdict(verdict_body(caveats, ttl=ttl), now=now, key_bytes=len(TOKEN))
    client.cache.put(TOKEN, verdict)
    client.state.advance("5")
    client.state.trusted_until = time.monotonic() + 3600
    return client


READ = [encode(Subject("alice")), encode(Operations(("read",)))]


async def remembered(client: Any, key: object = "k", **context: Any) -> object:
    """Check TOKEN from the cache with `reuse_as`, then what `allowed` answers for the key."""
    principal = await client.check(TOKEN, operation="read", reuse_as=key, **context)
    assert principal.subject == "alice"
    return client.allowed(key)


async def test_an_allow_is_reused_and_counted_as_a_hit() -> None:
    client = client_with(READ)

    found = await remembered(client)

    assert found is not None and found.subject == "alice"
    assert client.metrics.hits == 2 and client.metrics.allowed == 2
    assert client.allowed("another key") is None


@pytest.mark.parametrize(
    "event",
    [
        lambda c: c.state.revoke_token("some-other-token", None, now=0),
        lambda c: c.state.raise_generation("alice", 1),
        lambda c: c.state.revoke_key("key-1"),
        lambda c: c._reset(),  # the stream lost events
    ],
    ids=["token", "generation", "key", "reset"],
)
async def test_any_stream_event_forgets_every_remembered_allow(event: Any) -> None:
    """A revocation of anything (this token, its subject, its key, or another token) and a reset
    all forget: nothing remembered outlives a change of what the stream says."""
    client = client_with(READ)
    assert await remembered(client) is not None

    event(client)

    assert client.allowed("k") is None


async def test_the_revoked_token_itself_is_refused_after_its_allow_was_remembered() -> None:
    client = client_with(READ)
    assert await remembered(client) is not None

    client.state.revoke_token("aa", None, now=0)  # verdict_body's token id

    assert client.allowed("k") is None
    with pytest.raises(InvalidToken):
        await client.check(TOKEN, operation="read")


async def test_not_reused_once_the_expiry_caveat_has_passed() -> None:
    client = client_with([*READ, encode(Expiry(1010))])
    assert await remembered(client) is not None

    client._clock.now = 1010.0

    assert client.allowed("k") is None
    with pytest.raises(InvalidToken):
        await client.check(TOKEN, operation="read")


async def test_not_reused_once_the_verdict_is_no_longer_valid() -> None:
    client = client_with(READ, ttl=5)
    assert await remembered(client) is not None

    client._clock.now = 1005.0

    assert client.allowed("k") is None


async def test_a_token_with_a_not_before_caveat_is_never_remembered() -> None:
    """Red team (helper-44): a not-before that held fails again when the host's wall clock is
    stepped back (an NTP correction); a remembered allow would outlive it. Checked every time."""
    client = client_with([*READ, encode(NotBefore(995))])

    assert await remembered(client) is None
    client._clock.now = 990.0  # stepped back 10 s
    with pytest.raises(InvalidToken):
        await client.check(TOKEN, operation="read", reuse_as="k")
    assert client.allowed("k") is None


async def test_not_reused_when_the_stream_is_no_longer_live() -> None:
    client = client_with(READ)
    assert await remembered(client) is not None

    client.state.trusted_until = time.monotonic() - 1

    assert client.allowed("k") is None


async def test_a_token_bound_to_client_addresses_is_never_remembered() -> None:
    """The key does not hold the client address, so an allow for 10.0.0.1 must not be reused
    for an address the token's CIDR caveat refuses: such a token is checked every time."""
    client = client_with([*READ, encode(ClientCIDR(("10.0.0.0/8",)))])

    assert await remembered(client, client_ip="10.0.0.1") is None
    with pytest.raises(CaveatDenied):
        await client.check(TOKEN, operation="read", client_ip="192.0.2.1", reuse_as="k")


async def test_a_refusal_is_never_remembered() -> None:
    client = client_with([*READ, encode(Audience(("files",)))])

    with pytest.raises(CaveatDenied):
        await client.check(TOKEN, operation="read", audience="orders", reuse_as="k")

    assert client.allowed("k") is None


async def test_remembered_allows_are_bounded() -> None:
    """Past max_entries the remembered allows are dropped (they are re-made on the next hit)."""
    client = client_with(READ)
    client._max_allowed_entries = 3

    for i in range(3):
        await remembered(client, key=i)
    assert client.allowed(0) is not None
    await remembered(client, key=3)

    assert client.allowed(0) is None and client.allowed(3) is not None


def _expire_token(client: Any) -> None:
    client._clock.now = 1010.0


def _expire_verdict(client: Any) -> None:
    client._clock.now = 1005.0


def _raise_generation(client: Any) -> None:
    client.state.raise_generation("alice", 1)


def _stream_stale(client: Any) -> None:
    client.state.trusted_until = time.monotonic() - 1


# What ends a remembered allow, each with the status the full check then answers: 401 for a
# refusal from the cached verdict; 503 where the client must ask tokensvc (here unreachable).
ENDINGS = [
    ("another token revoked", READ, 60, lambda c: c.state.revoke_token("x", None, now=0), 200),
    ("this token revoked", READ, 60, lambda c: c.state.revoke_token("aa", None, now=0), 401),
    ("generation raised", [*READ, encode(Generation(0))], 60, _raise_generation, 401),
    ("another subject's generation", READ, 60, lambda c: c.state.raise_generation("bob", 1), 200),
    ("key revoked", READ, 60, lambda c: c.state.revoke_key("key-1"), 401),
    ("reset", READ, 60, lambda c: c._reset(), 503),
    ("expiry caveat passed", [*READ, encode(Expiry(1010))], 60, _expire_token, 401),
    ("verdict no longer valid", READ, 5, _expire_verdict, 503),
    ("stream not live", READ, 60, _stream_stale, 503),
]


@pytest.mark.parametrize(
    ("caveats", "ttl", "event", "then"),
    [pytest.param(*case[1:], id=case[0]) for case in ENDINGS],
)
async def test_the_aiohttp_middleware_reuses_exactly_what_allowed_reuses(
    aiohttp_client: Any, caveats: list[bytes], ttl: float, event: Any, then: int
) -> None:
    """The aiohttp middleware runs `allowed`'s rule inline (its hot path): each way a remembered
    allow ends must end the middleware's reuse too, and its next answer must be the full
    check's. Counted: `metrics.reused` moves only for a request served by a remembered allow."""
    client = client_with(caveats, ttl=ttl, subscribe=False, request_timeout=2)
    await client.start()  # a session for the requests the client must make once untrusted

    async def doc(request: web.Request) -> web.Response:
        return web.json_response({"subject": principal(request).subject})

    app = web.Application(middlewares=[tokensvc_middleware(client)])
    app.router.add_get("/docs/{name}", doc)
    http = await aiohttp_client(app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for _ in range(2):  # decided from the cached verdict (remembered), then reused
            response = await http.get("/docs/1", headers=headers)
            assert response.status == 200 and (await response.json())["subject"] == "alice"
        assert client.metrics.reused == 1

        event(client)
        reused_before = client.metrics.reused
        response = await http.get("/docs/1", headers=headers)

        assert client.metrics.reused == reused_before  # decided afresh, not reused
        assert response.status == then
        if then == 200:  # and remembered again: the next one is reused
            await http.get("/docs/1", headers=headers)
            assert client.metrics.reused == reused_before + 1
    finally:
        await client.close()
