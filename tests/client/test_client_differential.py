"""Differential property test (issue 20): over tokens attenuated with random caveats and random
request contexts, tokensvc-client's local decision equals POST /v1/verify's — allow, or the same
401/403 and reason — against a real `tokensvc serve` on PostgreSQL. The tokens are minted by an
admin, by a password-only login and by a login with a TOTP code (issue 19); the contexts may
require MFA. A second client that never trusts a cache (the stale-stream fallback) must agree too."""

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
    MFA_REQUIRED,
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
from tests.tokensvc.test_api_mfa import ALICE
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
        "require_mfa": st.booleans(),
    }
)
#: Who minted the base token: an admin (POST /v1/tokens), alice with her password only (before
#: she enrolled), alice with her password and a TOTP code.
BASES = ("minted", "password", "mfa")


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
        self.base_tokens: dict[str, str] = {}
        self.client: TokensvcClient | None = None
        self.fallback: TokensvcClient | None = None
        self.session: aiohttp.ClientSession | None = None
        self.seen: set[tuple[int, bool, bool]] = set()  # (status, require_mfa, token has MFA)
        self.mfa_refusals = 0

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        password, mfa = await self.served.user_with_mfa(self.session, "alice", ALICE)
        minted = await self.served.mint(self.session, subject="alice", ttl="2h")
        self.base_tokens = {"minted": minted["token"], "password": password, "mfa": mfa}
        for name, token in self.base_tokens.items():  # all live: the cases test the context
            status, body = await self.served.verify(self.session, token, {})
            assert status == 200 and body["mfa"] is (name == "mfa"), (name, body)
        self.client = TokensvcClient(
            self.served.base, self.served.service_token, verify_url=self.served.verify_base
        )
        await self.client.start()
        assert self.client.stream is not None and await self.client.stream.wait_live(20)
        self.fallback = TokensvcClient(
            self.served.base,
            self.served.service_token,
            verify_url=self.served.verify_base,
            subscribe=False,  # never a live stream: every check is the /v1/verify fallback
        )
        await self.fallback.start()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.fallback is not None:
            await self.fallback.close()
        if self.session is not None:
            await self.session.close()

    async def answers(self, token: str, ctx: dict[str, Any]) -> tuple[Any, Any, Any]:
        """(status, reason or subject, mfa) from /v1/verify, the caching client and the fallback."""
        assert self.session is not None and self.client is not None
        assert self.fallback is not None
        status, body = await self.served.verify(self.session, token, ctx)
        server = (
            (status, body["subject"], body["mfa"]) if status == 200 else (status, body["reason"])
        )
        return (
            server,
            await _check(self.client, token, ctx),
            await _check(self.fallback, token, ctx),
        )


async def _check(client: TokensvcClient, token: str, ctx: dict[str, Any]) -> tuple[Any, ...]:
    try:
        found = await client.check(token, **ctx)
    except Denied as exc:
        return (exc.status, exc.reason)
    return (200, found.subject, found.mfa)


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
    # The cached path was exercised, not only fetches; and so was the fallback.
    assert h.client is not None and h.client.metrics.hits > 0, h.client.metrics.snapshot()
    assert h.fallback is not None and h.fallback.metrics.fallbacks > 0
    # MFA mattered: required and refused (decided locally), required and allowed.
    assert h.mfa_refusals > 0 and (200, True, True) in h.seen, h.seen


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    base=st.sampled_from(BASES),
    caveats=st.lists(caveat, max_size=4),
    ctx=context,
    repeat=st.booleans(),
)
def test_client_decides_exactly_as_v1_verify(
    harness: Harness, base: str, caveats: list[Any], ctx: dict[str, Any], repeat: bool
) -> None:
    """For any attenuated token, with or without a second factor, and any context, requiring MFA
    or not, the client's answer is /v1/verify's — allow (with the same `mfa`), 401 or 403, with the
    same reason when decided locally — fetched, cached, and through the /v1/verify fallback."""
    token = attenuate(harness.base_tokens[base], [_predicate(c) for c in caveats])

    for attempt in ("fetched", "cached") if repeat else ("fetched",):
        server, mine, fallback = harness.loop.run(harness.answers(token, ctx))

        assert mine[0] == server[0], (attempt, base, caveats, ctx, server, mine)
        # Allowed and 403 answers are decided locally and carry the same subject or reason. A 401
        # for a token bad everywhere (expired, unknown caveat…) comes from /v1/verdict, which
        # checks an empty context: its reason lists that context's failures, not this request's.
        if server[0] != 401:
            assert mine == server, (attempt, base, caveats, ctx)
        assert fallback == server, (attempt, base, caveats, ctx)
        harness.seen.add((server[0], ctx["require_mfa"], base == "mfa"))
        harness.mfa_refusals += server == (403, MFA_REQUIRED.reason)
