"""The aiohttp middleware (with @require and @public) and the ASGI middleware, in front of small
apps, deciding with a client of a real `tokensvc serve`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.client.served_tokensvc import Served, serve_tokensvc
from tokensvc_client import PUBLIC, Requirement, TokensvcClient
from tokensvc_client.asgi import PRINCIPAL as ASGI_PRINCIPAL
from tokensvc_client.asgi import TokensvcASGIMiddleware
from tokensvc_client.web import principal, public, require, tokensvc_middleware


@pytest.fixture
async def served(
    pg_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Served]:
    async with serve_tokensvc(
        tmp_path, pg_url=pg_url, redis_url=redis_url, redis_prefix=redis_prefix
    ) as s:
        yield s


@pytest.fixture
async def client(served: Served) -> AsyncIterator[TokensvcClient]:
    c = TokensvcClient(served.base, served.service_token, verify_url=served.verify_base)
    await c.start()
    try:
        assert c.stream is not None and await c.stream.wait_live(20)
        yield c
    finally:
        await c.close()


@pytest.fixture
async def tokens(served: Served) -> dict[str, str]:
    """A reader of /docs/* for audience `files`, and a holder of `report:read` on /admin."""
    async with aiohttp.ClientSession() as session:
        reader = await served.mint(
            session, subject="alice", operations=["read"], resources=["/docs/*"], audience=["files"]
        )
        reporter = await served.mint(
            session, subject="rita", operations=["report:read"], resources=["/admin"]
        )
    return {"reader": reader["token"], "reporter": reporter["token"]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def app_client(aiohttp_client: Any, client: TokensvcClient) -> Any:
    async def doc(request: web.Request) -> web.Response:
        return web.json_response({"subject": principal(request).subject})

    @require(operation="report:read", resource="/admin")
    async def report(request: web.Request) -> web.Response:
        return web.json_response({"subject": principal(request).subject})

    @public
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[tokensvc_middleware(client, audience="files")])
    app.router.add_route("*", "/docs/{name}", doc)
    app.router.add_get("/admin/report", report)
    app.router.add_get("/healthz", health)
    return await aiohttp_client(app)


async def test_aiohttp_allows_with_the_subject_for_the_handler(
    app_client: Any, tokens: dict[str, str]
) -> None:
    """GET on a path the token covers reaches the handler, which reads the subject."""
    resp = await app_client.get("/docs/1", headers=bearer(tokens["reader"]))

    assert resp.status == 200
    assert await resp.json() == {"subject": "alice"}


async def test_aiohttp_refusals_are_json_with_the_reason(
    app_client: Any, tokens: dict[str, str]
) -> None:
    """No token → 401 with WWW-Authenticate; a write with a read token, or a path outside its
    resources (even through `..`), → 403 naming why."""
    none = await app_client.get("/docs/1")
    write = await app_client.post("/docs/1", headers=bearer(tokens["reader"]))
    escape = await app_client.get("/docs/../admin/x", headers=bearer(tokens["reader"]))

    assert none.status == 401 and "WWW-Authenticate" in none.headers
    assert (await none.json())["error"]["code"] == "invalid_token"
    assert write.status == 403
    body = await write.json()
    assert body["error"]["code"] == "caveat_denied" and "operation" in body["error"]["message"]
    assert escape.status in (403, 404)


async def test_aiohttp_require_and_public(app_client: Any, tokens: dict[str, str]) -> None:
    """@require checks its own operation/resource; @public needs no token."""
    reporter = await app_client.get("/admin/report", headers=bearer(tokens["reporter"]))
    reader = await app_client.get("/admin/report", headers=bearer(tokens["reader"]))
    health = await app_client.get("/healthz")

    assert reporter.status == 200 and (await reporter.json())["subject"] == "rita"
    assert reader.status == 403
    assert health.status == 200


async def asgi_call(
    app: Any, path: str, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str], bytes, dict[str, Any]]:
    """One HTTP request through an ASGI app: status, headers, body, and the scope it saw."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5555),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    start = sent[0]
    out_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], out_headers, b"".join(m.get("body", b"") for m in sent[1:]), scope


async def inner_app(scope: Any, receive: Any, send: Any) -> None:
    body = orjson.dumps({"subject": scope[ASGI_PRINCIPAL].subject})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def test_asgi_allows_and_refuses_like_forward_auth(
    client: TokensvcClient, tokens: dict[str, str]
) -> None:
    """Plain ASGI: an allowed request carries the principal in scope and state; a denied one is
    answered 403 JSON by the middleware; no token is a 401."""
    app = TokensvcASGIMiddleware(inner_app, client, audience="files")

    ok = await asgi_call(app, "/docs/1", bearer(tokens["reader"]))
    denied = await asgi_call(app, "/docs/1", bearer(tokens["reader"]), method="DELETE")
    missing = await asgi_call(app, "/docs/1", {})

    assert ok[0] == 200 and orjson.loads(ok[2]) == {"subject": "alice"}
    assert ok[3]["state"]["principal"].subject == "alice"
    assert denied[0] == 403 and orjson.loads(denied[2])["error"]["code"] == "caveat_denied"
    assert missing[0] == 401 and "www-authenticate" in missing[1]


async def test_asgi_requirements_per_request(
    client: TokensvcClient, tokens: dict[str, str]
) -> None:
    """A requirements function sets the operation/resource per route, or opens a route."""

    def requirements(scope: Any) -> Requirement:
        if scope["path"] == "/healthz":
            return PUBLIC
        if scope["path"].startswith("/admin"):
            return Requirement(operation="report:read", resource="/admin")
        return Requirement()

    async def open_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = TokensvcASGIMiddleware(open_app, client, requirements=requirements)

    health = await asgi_call(guarded, "/healthz", {})
    report = await asgi_call(guarded, "/admin/report", bearer(tokens["reporter"]))
    reader = await asgi_call(guarded, "/admin/report", bearer(tokens["reader"]))

    assert health[0] == 204
    assert report[0] == 204
    assert reader[0] == 403
