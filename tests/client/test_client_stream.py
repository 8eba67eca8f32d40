"""The revocation-stream subscriber against a scripted test double of GET /v1/revocations/stream:
resume with Last-Event-ID, reset, staleness. (The acceptance tests run against real tokensvc.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from tests.client.test_client_units import verdict_body
from tokensvc_client import TokensvcClient
from tokensvc_client.verdicts import parse_verdict


class StreamDouble:
    """Serves scripted events; records each connection's Last-Event-ID."""

    def __init__(self) -> None:
        self.seen_last_ids: list[str | None] = []
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.cursor = "10"
        self.ping_every: float | None = 0.05
        self.ping = b": ping\n\n"  # what is sent every ping_every
        self.connected = asyncio.Event()
        self.hang_reconnects = False  # later connections get no answer at all (a dead server)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert request.headers["Authorization"] == "Bearer svc"
        self.seen_last_ids.append(request.headers.get("Last-Event-ID"))
        if self.hang_reconnects and len(self.seen_last_ids) > 1:
            await asyncio.sleep(3600)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        hello = orjson.dumps({"cursor": self.cursor, "heartbeat": 1}).decode()
        await resp.write(f"event: hello\ndata: {hello}\n\n".encode())
        self.connected.set()
        while True:
            try:
                item = await asyncio.wait_for(self.queue.get(), self.ping_every)
            except TimeoutError:
                if self.ping_every is not None:
                    await resp.write(self.ping)
                continue
            if item is None:  # cut the connection
                return resp
            await resp.write(item.encode())

    def send(self, event_id: str, kind: str, data: dict[str, Any]) -> None:
        self.queue.put_nowait(
            f"id: {event_id}\nevent: {kind}\ndata: {orjson.dumps(data).decode()}\n\n"
        )


async def started(aiohttp_server: Any, double: StreamDouble, **options: Any) -> TokensvcClient:
    app = web.Application()
    app.router.add_get("/v1/revocations/stream", double.handle)
    server = await aiohttp_server(app)
    client = TokensvcClient(str(server.make_url("")), "svc", **options)
    await client.start()
    return client


async def test_fresh_subscription_is_live_at_the_hello_cursor(aiohttp_server: Any) -> None:
    """A fresh client starts at the server's cursor and is live once the hello arrives."""
    double = StreamDouble()
    client = await started(aiohttp_server, double)

    try:
        assert await client.stream.wait_live(5)  # type: ignore[union-attr]
        assert client.state.cursor == "10"
        assert double.seen_last_ids == [None]
    finally:
        await client.close()


async def test_the_trust_deadline_drops_to_zero_the_moment_the_link_does(
    aiohttp_server: Any,
) -> None:
    """state.trusted_until, which every cached decision reads as a plain attribute, is kept by the
    stream: stale_after ahead while live, and 0.0 as soon as the connection is cut (a reconnect
    that hangs does not restore it) or the client closes, not when stale_after has passed."""
    double = StreamDouble()
    double.hang_reconnects = True
    client = await started(aiohttp_server, double, stale_after=60)
    closing = await started(aiohttp_server, StreamDouble(), stale_after=60)
    try:
        for live in (client, closing):
            assert await live.stream.wait_live(5)  # type: ignore[union-attr]
            assert live.state.trusted_until > time.monotonic() + 50

        double.queue.put_nowait(None)  # the server ends the stream
        for _ in range(500):
            if client.state.trusted_until == 0.0:
                break
            await asyncio.sleep(0.01)
        await closing.close()

        assert client.state.trusted_until == 0.0
        assert closing.state.trusted_until == 0.0
    finally:
        await client.close()
        await closing.close()


async def test_events_apply_and_reconnect_resumes_from_last_event_id(aiohttp_server: Any) -> None:
    """Applied events move the cursor; after a cut the client reconnects with Last-Event-ID."""
    double = StreamDouble()
    client = await started(aiohttp_server, double)
    try:
        assert await client.stream.wait_live(5)  # type: ignore[union-attr]
        double.send("11", "token", {"token_id": "t1", "expires_at": 2e9})
        double.send("12", "generation", {"subject": "alice", "generation": 4})
        for _ in range(100):
            if client.state.cursor == "12":
                break
            await asyncio.sleep(0.01)

        double.connected.clear()
        double.queue.put_nowait(None)
        await asyncio.wait_for(double.connected.wait(), 5)

        assert "t1" in client.state.revoked_tokens
        assert client.state.generations == {"alice": 4}
        assert double.seen_last_ids == [None, "12"]
        assert client.metrics.stream_events == 2
    finally:
        await client.close()


async def test_key_event_and_reset_drop_cached_verdicts(aiohttp_server: Any) -> None:
    """A revoked key drops its verdicts; a reset drops every cached verdict."""
    double = StreamDouble()
    client = await started(aiohttp_server, double)
    try:
        assert await client.stream.wait_live(5)  # type: ignore[union-attr]
        client.cache.put("tok", parse_verdict(verdict_body(), now=0, key_bytes=3))
        double.send("11", "key", {"key_id": "key-1"})
        for _ in range(100):
            if not len(client.cache):
                break
            await asyncio.sleep(0.01)
        assert len(client.cache) == 0 and "key-1" in client.state.revoked_keys

        client.cache.put("tok", parse_verdict(verdict_body(), now=0, key_bytes=3))
        double.send("12", "reset", {"reason": "cursor too old"})
        for _ in range(100):
            if not len(client.cache):
                break
            await asyncio.sleep(0.01)

        assert len(client.cache) == 0
        assert client.metrics.stream_resets == 1
    finally:
        await client.close()


async def test_silent_stream_is_not_live_after_stale_after(aiohttp_server: Any) -> None:
    """With no byte for stale_after the stream stops being live, and stays so while the server
    does not answer the reconnect."""
    double = StreamDouble()
    double.ping_every = None  # say nothing after hello
    double.hang_reconnects = True
    client = await started(aiohttp_server, double, stale_after=0.3)
    try:
        assert await client.stream.wait_live(5)  # type: ignore[union-attr]

        await asyncio.sleep(0.4)

        assert not client.stream.live()  # type: ignore[union-attr]
        await asyncio.sleep(0.4)
        assert not client.stream.live()  # type: ignore[union-attr]
        assert len(double.seen_last_ids) >= 2  # it did try again
    finally:
        await client.close()


async def test_bytes_that_are_no_message_do_not_keep_the_stream_live(
    aiohttp_server: Any,
) -> None:
    """Red team: a stream that sent only blank lines, or a line it never ended (`: p`), kept
    the client live forever: any byte counted. Only an event or a whole heartbeat line does."""
    for filler in (b"\n", b": p"):
        double = StreamDouble()
        double.ping = filler
        client = await started(aiohttp_server, double, stale_after=0.3)
        try:
            assert await client.stream.wait_live(5)  # type: ignore[union-attr]

            await asyncio.sleep(0.5)

            assert not client.stream.live(), filler  # type: ignore[union-attr]
        finally:
            await client.close()


async def test_a_verdict_older_than_the_streams_start_is_not_cached(aiohttp_server: Any) -> None:
    """Red team: a fresh client (its stream starting at event 936) cached a lagging replica's
    verdict as of 935, issued before the revocation at 936, which the stream, starting after
    it, never sent: the client allowed a revoked token from its cache. A verdict is cached only
    if the stream covers everything after its cursor."""
    double = StreamDouble()
    double.cursor = "936"
    lagging = {**verdict_body(), "cursor": "935"}

    async def verdict(request: web.Request) -> web.Response:
        return web.json_response(lagging)

    app = web.Application()
    app.router.add_get("/v1/revocations/stream", double.handle)
    app.router.add_post("/v1/verdict", verdict)
    server = await aiohttp_server(app)
    client = TokensvcClient(str(server.make_url("")), "svc")
    await client.start()
    try:
        assert await client.stream.wait_live(5)  # type: ignore[union-attr]

        await client.check("tok")
        await client.check("tok")

        assert (client.metrics.uncacheable, len(client.cache)) == (2, 0)
        assert client.state.start == "936"
        assert client.state.covers("936") and not client.state.covers("937")  # not applied yet
    finally:
        await client.close()


async def test_an_event_the_client_cannot_apply_drops_its_cache(aiohttp_server: Any) -> None:
    """Red team (code review): the client moved past event kinds it did not know, so a newer
    tokensvc's new kind of revocation would have left verdicts it revoked cached and allowed.
    What it cannot apply drops every cached verdict, as a reset does."""
    double = StreamDouble()
    client = await started(aiohttp_server, double)
    try:
        assert await client.stream.wait_live(5)  # type: ignore[union-attr]
        for kind, data in (("scope", {"token_id": "aa", "scope": "read"}), ("token", {"x": 1})):
            client.cache.put("tok", parse_verdict(verdict_body(), now=0, key_bytes=3))
            double.send("11" if kind == "scope" else "12", kind, data)
            for _ in range(100):
                if not len(client.cache):
                    break
                await asyncio.sleep(0.01)

            assert len(client.cache) == 0, kind
        assert client.state.cursor == "12"
        assert client.stream.live()  # type: ignore[union-attr]
    finally:
        await client.close()
