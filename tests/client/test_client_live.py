"""tokensvc-client against a real `tokensvc serve` on PostgreSQL and Redis: cached verdicts
decided locally, revocations pushed through the stream, the stream cut by a real TCP proxy."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.client.served_tokensvc import Served, TcpProxy, tokensvc_for_module
from tokensvc_client import CaveatDenied, InvalidToken, TokensvcClient, Unavailable

READ_DOC = {"operation": "read", "resource": "/docs/1", "audience": "files"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One tokensvc for the module's tests (each mints its own tokens and users)."""
    with tokensvc_for_module(tmp_path_factory.mktemp("tokensvc")) as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def live_client(url: str, served: Served, **options: object) -> TokensvcClient:
    client = TokensvcClient(url, served.service_token, verify_url=served.verify_base, **options)  # type: ignore[arg-type]
    await client.start()
    assert client.stream is not None
    if not await client.stream.wait_live(20):
        await client.close()
        raise AssertionError(f"the stream did not go live: {client.metrics.snapshot()}")
    return client


async def until(predicate: object, limit: float = 5.0) -> float:
    """Poll `predicate()` every millisecond until true; the seconds it took (AssertionError after `limit`)."""
    started = time.perf_counter()
    while not predicate():  # type: ignore[operator]
        if time.perf_counter() - started > limit:
            raise AssertionError(f"not within {limit} s")
        await asyncio.sleep(0.001)
    return time.perf_counter() - started


async def mint_reader(
    served: Served, session: aiohttp.ClientSession, subject: str = "alice"
) -> dict:  # type: ignore[type-arg]
    return await served.mint(
        session,
        subject=subject,
        operations=["read"],
        resources=["/docs/*"],
        audience=["files"],
    )


async def test_first_check_fetches_then_hits_decide_locally(
    served: Served, session: aiohttp.ClientSession
) -> None:
    """One verdict per token; later checks are cache hits with local allow and 403 answers."""
    minted = await mint_reader(served, session)
    client = await live_client(served.base, served)
    try:
        first = await client.check(minted["token"], **READ_DOC)
        again = await client.check(minted["token"], **READ_DOC)
        with pytest.raises(CaveatDenied, match="operation"):
            await client.check(minted["token"], **{**READ_DOC, "operation": "write"})
    finally:
        await client.close()

    assert first.subject == again.subject == "alice"
    assert first.token_id == minted["token_id"]
    assert client.metrics.misses == 1 and client.metrics.hits == 2
    assert client.metrics.denied_403 == 1


async def test_concurrent_first_checks_share_one_verdict_request(
    served: Served, session: aiohttp.ClientSession
) -> None:
    """Twenty requests with one new token at once cost one POST /v1/verdict, and all are allowed."""
    minted = await mint_reader(served, session)
    client = await live_client(served.base, served)
    try:
        found = await asyncio.gather(
            *(client.check(minted["token"], **READ_DOC) for _ in range(20))
        )
    finally:
        await client.close()

    assert {p.subject for p in found} == {"alice"}
    assert client.metrics.misses == 1


async def test_forged_token_is_401_and_never_cached(
    served: Served, session: aiohttp.ClientSession
) -> None:
    """A token with a flipped signature byte is refused by tokensvc's verdict and not cached."""
    minted = await mint_reader(served, session)
    forged = (
        minted["token"][:-8] + ("A" if minted["token"][-8] != "A" else "B") + minted["token"][-7:]
    )
    client = await live_client(served.base, served)
    try:
        for _ in range(2):
            with pytest.raises(InvalidToken):
                await client.check(forged, **READ_DOC)
    finally:
        await client.close()

    assert len(client.cache) == 0
    assert client.metrics.misses == 2


async def test_a_cached_verdict_is_refused_once_its_revocation_arrives(
    served: Served, session: aiohttp.ClientSession
) -> None:
    """Revocation is checked on every decision: the cached entry itself is still there, and refused."""
    minted = await mint_reader(served, session)
    client = await live_client(served.base, served)
    try:
        await client.check(minted["token"], **READ_DOC)

        await served.revoke(session, minted["token_id"])
        await until(lambda: minted["token_id"] in client.state.revoked_tokens)

        assert len(client.cache) == 1
        with pytest.raises(InvalidToken, match="revoked"):
            await client.check(minted["token"], **READ_DOC)
    finally:
        await client.close()


async def test_revoke_all_raises_the_generation_and_refuses_older_tokens(
    served: Served, session: aiohttp.ClientSession
) -> None:
    """A subject's revoke-all reaches the client as a generation; tokens minted after it pass."""
    old = await mint_reader(served, session, subject="bob")
    client = await live_client(served.base, served)
    try:
        await client.check(old["token"], **READ_DOC)

        async with session.post(
            served.base + "/v1/subjects/bob/revoke-all", headers=served.auth()
        ) as resp:
            assert resp.status in (200, 204), await resp.text()
        await until(lambda: "bob" in client.state.generations)
        new = await mint_reader(served, session, subject="bob")

        with pytest.raises(InvalidToken):
            await client.check(old["token"], **READ_DOC)
        assert (await client.check(new["token"], **READ_DOC)).subject == "bob"
    finally:
        await client.close()


@pytest.mark.serial
async def test_revocation_reaches_the_client_within_100_ms(
    served: Served, session: aiohttp.ClientSession
) -> None:
    """Median of 50: from sending DELETE /v1/tokens/{id} to the client refusing the token ≤ 100 ms."""
    client = await live_client(served.base, served)
    latencies: list[float] = []
    try:
        for _ in range(50):
            minted = await mint_reader(served, session)
            await client.check(minted["token"], **READ_DOC)

            started = time.perf_counter()
            await served.revoke(session, minted["token_id"])
            await until(lambda m=minted: m["token_id"] in client.state.revoked_tokens)  # type: ignore[misc]
            latencies.append((time.perf_counter() - started) * 1000)

            with pytest.raises(InvalidToken):
                await client.check(minted["token"], **READ_DOC)
    finally:
        await client.close()

    median = statistics.median(latencies)
    print(
        f"\nrevocation -> client: median {median:.1f} ms, p90 "
        f"{statistics.quantiles(latencies, n=10)[-1]:.1f} ms, max {max(latencies):.1f} ms (n=50)"
    )
    assert median <= 100, latencies


@pytest.mark.parametrize("when_stale", ["verify", "fail-closed"])
async def test_with_the_stream_cut_a_revoked_token_is_refused_after_the_bound(
    served: Served, session: aiohttp.ClientSession, when_stale: str
) -> None:
    """Stream cut by a real TCP proxy, token revoked meanwhile: once stale_after has passed the
    client asks /v1/verify (401) or fails closed (503), never allows; after the proxy is back the
    stream resumes and the revocation is applied locally."""
    port = int(served.base.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    await proxy.start()
    minted = await mint_reader(served, session)
    client = await live_client(proxy.base, served, stale_after=1.0, when_stale=when_stale)
    try:
        await client.check(minted["token"], **READ_DOC)

        await proxy.cut()
        await served.revoke(session, minted["token_id"])
        await asyncio.sleep(1.2)

        assert client.stream is not None and not client.stream.live()
        expected = InvalidToken if when_stale == "verify" else Unavailable
        with pytest.raises(expected):
            await client.check(minted["token"], **READ_DOC)

        await proxy.start()
        assert await client.stream.wait_live(20)
        assert minted["token_id"] in client.state.revoked_tokens
        with pytest.raises(InvalidToken, match="revoked"):
            await client.check(minted["token"], **READ_DOC)
    finally:
        await client.close()
        await proxy.cut()

    assert client.metrics.stream_reconnects >= 1
    if when_stale == "verify":
        assert client.metrics.fallbacks == 1


async def test_too_many_discharges_is_the_servers_400(
    served: Served, session: aiohttp.ClientSession
) -> None:
    """Red team (helper-57): 17 discharges were a 401 from the client's own limit of 16, where
    /v1/verify says 400 (and a server configured for more would have allowed them). The client
    now leaves the limit to the server, and its 400 comes back as BadRequest."""
    from tokensvc_client.errors import BadRequest
    from tokensvc_client.mapping import discharges_from

    minted = await mint_reader(served, session)
    discharges = discharges_from(",".join(["not-a-discharge"] * 17))
    client = await live_client(served.base, served)
    try:
        with pytest.raises(BadRequest, match="at most 16 discharges"):
            await client.check(minted["token"], discharges, **READ_DOC)
    finally:
        await client.close()
    async with session.post(
        served.verify_base + "/v1/verify",
        json={"token": minted["token"], "discharges": list(discharges), "context": READ_DOC},
    ) as resp:
        assert resp.status == 400
    with pytest.raises(BadRequest):
        discharges_from(",".join(["d"] * 1025))
