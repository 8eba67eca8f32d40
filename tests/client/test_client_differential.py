"""Differential property test (issue 20): over tokens attenuated with random caveats and random
request contexts, tokensvc-client's local decision equals POST /v1/verify's — allow, or the same
401/403 and reason — against a real `tokensvc serve` on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caveats import (
    Audience,
    ClientCIDR,
    Expiry,
    NotBefore,
    Operations,
    Resources,
    Subject,
    encode,
    format_rfc3339,
)
from tests.client.served_tokensvc import LoopThread, Served, serve_tokensvc
from tokensvc.macaroons.attenuation import attenuate
from tokensvc_client import Denied, TokensvcClient

OPS = ("read", "write", "delete")
PATHS = ("/docs/*", "/docs/1", "/admin/*", "/", "/docs/")
AUDIENCES = ("files", "shop")
CIDRS = ("127.0.0.0/8", "10.0.0.0/8", "::1/128", "192.168.0.0/16")
# Far enough from the boundary that the seconds between the two decisions cannot flip them.
OFFSETS = (-3600, -120, 120, 3600)


def _subset(items: tuple[str, ...]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(items), min_size=1, max_size=len(items), unique=True).map(tuple)


def _rfc3339(offset: int) -> str:
    return format_rfc3339(int(time.time()) + offset)


caveat = st.one_of(
    _subset(OPS).map(lambda v: encode(Operations(v))),
    _subset(PATHS).map(lambda v: encode(Resources(v))),
    _subset(AUDIENCES).map(lambda v: encode(Audience(v))),
    _subset(CIDRS).map(lambda v: encode(ClientCIDR(v))),
    st.sampled_from(OFFSETS).map(lambda o: ("expiry", o)),
    st.sampled_from(OFFSETS).map(lambda o: ("not-before", o)),
    st.sampled_from(OFFSETS).map(lambda o: ("time-before", o)),
    st.sampled_from(
        [
            b"declared team blue",
            b"allow read write",
            b"deny delete",
            b"error not today",
            encode(Subject("alice")),
            encode(Subject("mallory")),  # conflicts with the token's own subject
            b'[999,"from the future"]',  # an unknown typed caveat
            b"frobnicate x",  # an unknown bakery condition
            b"[3]",  # a malformed one
        ]
    ),
)
context = st.fixed_dictionaries(
    {
        "operation": st.sampled_from((None, *OPS)),
        "resource": st.sampled_from((None, "/docs/1", "/docs/2", "/admin/x", "/")),
        "audience": st.sampled_from((None, *AUDIENCES)),
        "client_ip": st.sampled_from((None, "127.0.0.1", "10.1.2.3", "::1", "192.168.1.1")),
    }
)


def _predicate(item: bytes | tuple[str, int]) -> bytes:
    """Times are drawn as offsets and made absolute when the example runs."""
    if isinstance(item, bytes):
        return item
    kind, offset = item
    at = int(time.time()) + offset
    if kind == "expiry":
        return encode(Expiry(at))
    if kind == "not-before":
        return encode(NotBefore(at))
    return f"time-before {_rfc3339(offset)}".encode()


class Harness:
    """The served tokensvc, a live client and a plain HTTP session, on a loop in a thread."""

    def __init__(self, served: Served, loop: LoopThread) -> None:
        self.served = served
        self.loop = loop
        self.base_token = ""
        self.client: TokensvcClient | None = None
        self.session: aiohttp.ClientSession | None = None
        self.cases = 0

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        minted = await self.served.mint(self.session, subject="alice", ttl="2h")
        self.base_token = minted["token"]
        self.client = TokensvcClient(
            self.served.base, self.served.service_token, verify_url=self.served.verify_base
        )
        await self.client.start()
        assert self.client.stream is not None and await self.client.stream.wait_live(20)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.session is not None:
            await self.session.close()

    async def both(self, token: str, ctx: dict[str, Any]) -> tuple[Any, Any]:
        """(status, reason) from /v1/verify and from the client."""
        assert self.session is not None and self.client is not None
        status, body = await self.served.verify(self.session, token, ctx)
        server = (status, body.get("reason") if status != 200 else body["subject"])
        try:
            found = await self.client.check(token, **ctx)
        except Denied as exc:
            mine: tuple[int, str] = (exc.status, exc.reason)
        else:
            mine = (200, found.subject)
        return server, mine


@pytest.fixture
def harness(pg_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Harness]:
    loop = LoopThread()
    cm = serve_tokensvc(tmp_path, pg_url=pg_url, redis_url=redis_url, redis_prefix=redis_prefix)
    served = loop.run(cm.__aenter__(), timeout=120)
    h = Harness(served, loop)
    try:
        loop.run(h.start())
        yield h
    finally:
        loop.run(h.close())
        loop.run(cm.__aexit__(None, None, None))
        loop.close()
    # The cached path was exercised, not only fetches.
    assert h.client is not None and h.client.metrics.hits > 0, h.client.metrics.snapshot()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(caveats=st.lists(caveat, max_size=4), ctx=context, repeat=st.booleans())
def test_client_decides_exactly_as_v1_verify(
    harness: Harness, caveats: list[Any], ctx: dict[str, Any], repeat: bool
) -> None:
    """For any attenuated token and context, the client's answer is /v1/verify's — allow, 401 or
    403, with the same reason when decided locally — on the first (fetched) and on a cached decision."""
    token = attenuate(harness.base_token, [_predicate(c) for c in caveats])

    for attempt in ("fetched", "cached") if repeat else ("fetched",):
        server, mine = harness.loop.run(harness.both(token, ctx))

        assert mine[0] == server[0], (attempt, caveats, ctx, server, mine)
        # Allowed and 403 answers are decided locally and carry the same subject or reason. A 401
        # for a token bad everywhere (expired, unknown caveat…) comes from /v1/verdict, which
        # checks an empty context: its reason lists that context's failures, not this request's.
        if server[0] != 401:
            assert mine == server, (attempt, caveats, ctx)
