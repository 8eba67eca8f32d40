"""The aiohttp middleware (with @require and @public) and the ASGI middleware, in front of small
apps, deciding with a client of a real `tokensvc serve`."""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from caveats import MFA_REQUIRED
from tests.client.served_tokensvc import Served, tokensvc_for_module
from tests.tokensvc.test_api_mfa import ALICE
from tokensvc_client import PUBLIC, Requirement, TokensvcClient
from tokensvc_client.asgi import PRINCIPAL as ASGI_PRINCIPAL
from tokensvc_client.asgi import TokensvcASGIMiddleware
from tokensvc_client.web import TokensvcGuard, principal, public, require, tokensvc_middleware


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One tokensvc for the module's tests (each mints its own tokens and users)."""
    with tokensvc_for_module(tmp_path_factory.mktemp("tokensvc")) as s:
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


@pytest.fixture
async def mfa_tokens(served: Served) -> dict[str, str]:
    """A new user's login tokens (the module's tests share one tokensvc): with the password only
    (before the enrolment), and with a TOTP code; and the user's name, their `subject`."""
    name = "alice-" + secrets.token_hex(4)
    async with aiohttp.ClientSession() as session:
        password, mfa = await served.user_with_mfa(session, name, ALICE)
    return {"password": password, "mfa": mfa, "subject": name}


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


async def test_aiohttp_a_remembered_allow_serves_only_the_request_it_was_made_for(
    app_client: Any, tokens: dict[str, str], client: TokensvcClient, served: Served
) -> None:
    """Once a token's allow for GET /docs/1 is remembered, it is reused for that request alone:
    another method, path or route is checked afresh (and refused where the token does not
    reach), and a revocation ends the reuse at once."""
    reader = bearer(tokens["reader"])
    for _ in range(3):  # fetch, hit (remembered), reused
        assert (await app_client.get("/docs/1", headers=reader)).status == 200
    hits = client.metrics.hits

    assert (await app_client.get("/docs/1", headers=reader)).status == 200
    assert client.metrics.hits == hits + 1
    assert (await app_client.post("/docs/1", headers=reader)).status == 403
    assert (await app_client.get("/docs/../admin/report", headers=reader)).status in (403, 404)
    assert (await app_client.get("/admin/report", headers=reader)).status == 403
    async with aiohttp.ClientSession() as session:
        context = {"operation": "read", "resource": "/docs/1", "audience": "files"}
        status, body = await served.verify(session, tokens["reader"], context)
        assert status == 200
        await served.revoke(session, body["token_id"])
    for _ in range(400):  # the revocation arrives over the stream (bounded: 20 s)
        if body["token_id"] in client.state.revoked_tokens:
            break
        await asyncio.sleep(0.05)

    after = await app_client.get("/docs/1", headers=reader)

    assert after.status == 401


async def test_guard_protects_the_routes_it_wraps_as_the_middleware_does(
    aiohttp_client: Any, client: TokensvcClient, tokens: dict[str, str]
) -> None:
    """TokensvcGuard, per route and with no middleware: the same answers as the middleware — the
    subject for the handler, 401 without a token, 403 outside the token's caveats (a remembered
    allow for one route never serves another) — and undecorated routes stay open."""
    guard = TokensvcGuard(client, audience="files")

    @guard.protect
    async def doc(request: web.Request) -> web.Response:
        return web.json_response({"subject": principal(request).subject})

    @guard.require(operation="report:read", resource="/admin")
    async def report(request: web.Request) -> web.Response:
        return web.json_response({"subject": principal(request).subject})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/docs/{name}", doc)
    app.router.add_get("/admin/report", report)
    app.router.add_get("/healthz", health)
    http = await aiohttp_client(app)
    reader, reporter = bearer(tokens["reader"]), bearer(tokens["reporter"])

    allowed = [await http.get("/docs/1", headers=reader) for _ in range(3)]
    write = await http.post("/docs/1", headers=reader)
    none = await http.get("/docs/1")
    report_by_reader = await http.get("/admin/report", headers=reader)
    report_by_reporter = await http.get("/admin/report", headers=reporter)

    assert [r.status for r in allowed] == [200, 200, 200]
    assert await allowed[2].json() == {"subject": "alice"}
    assert write.status == 403 and none.status == 401
    assert report_by_reader.status == 403 and report_by_reporter.status == 200
    assert (await http.get("/healthz")).status == 200


async def test_guard_routes_protects_a_whole_route_table_by_default(
    aiohttp_client: Any, client: TokensvcClient, tokens: dict[str, str], tmp_path: Any
) -> None:
    """TokensvcGuard.routes: every route of a table protected as the middleware protects it
    (the forward-auth mapping, a class-based view included), `@require` and `@public` honoured;
    a route the guard cannot wrap (static files) is refused rather than left open."""
    guard = TokensvcGuard(client, audience="files")
    routes = web.RouteTableDef()

    @routes.route("*", "/docs/{name}")
    async def doc(request: web.Request) -> web.Response:
        return web.json_response({"subject": principal(request).subject})

    @routes.get("/admin/report")
    @require(operation="report:read", resource="/admin")
    async def report(request: web.Request) -> web.Response:
        return web.json_response({"subject": principal(request).subject})

    @routes.get("/healthz")
    @public
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    @routes.view("/docs/view/{name}")
    class DocView(web.View):
        async def get(self) -> web.Response:
            return web.json_response({"view": principal(self.request).subject})

    app = web.Application()
    app.add_routes(guard.routes(routes))
    http = await aiohttp_client(app)
    reader, reporter = bearer(tokens["reader"]), bearer(tokens["reporter"])

    allowed = [await http.get("/docs/1", headers=reader) for _ in range(3)]
    write = await http.post("/docs/1", headers=reader)
    none = await http.get("/docs/1")
    view = await http.get("/docs/view/2", headers=reader)
    view_none = await http.get("/docs/view/2")
    view_write = await http.post("/docs/view/2", headers=reader)

    assert [r.status for r in allowed] == [200, 200, 200]
    assert await allowed[2].json() == {"subject": "alice"}
    assert write.status == 403 and none.status == 401
    assert view.status == 200 and await view.json() == {"view": "alice"}
    assert view_none.status == 401 and view_write.status == 403
    assert (await http.get("/admin/report", headers=reader)).status == 403
    assert (await http.get("/admin/report", headers=reporter)).status == 200
    assert (await http.get("/healthz")).status == 200
    with pytest.raises(TypeError, match="cannot be protected"):
        guard.routes([web.static("/files", tmp_path)])


async def raw_get(server: Any, target: str, token: str) -> int:
    """The status of a GET with `target` sent as is (an HTTP client would normalise it)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        return int((await reader.readline()).split()[1])
    finally:
        writer.close()


@pytest.mark.parametrize("protection", ["middleware", "guard.routes"])
async def test_a_path_token_cannot_reach_another_route_through_encoded_separators(
    aiohttp_server: Any, client: TokensvcClient, tokens: dict[str, str], protection: str
) -> None:
    """Red team: aiohttp routes `/admin/x%2F..%2F..%2Fdocs%2Fy` to /admin/{name}, while decoding
    it first names /docs/y, which a /docs/* token may read. Such paths (and `//`, `..`) are
    refused, so the token reaches only the routes its resources name."""
    routes = web.RouteTableDef()

    @routes.get("/admin/{name}")
    async def admin(request: web.Request) -> web.Response:
        return web.json_response({"admin": True})

    @routes.get("/docs/{name}")
    async def doc(request: web.Request) -> web.Response:
        return web.json_response({"subject": principal(request).subject})

    if protection == "middleware":
        app = web.Application(middlewares=[tokensvc_middleware(client, audience="files")])
        app.add_routes(routes)
    else:
        app = web.Application()
        app.add_routes(TokensvcGuard(client, audience="files").routes(routes))
    server = await aiohttp_server(app)
    reader = tokens["reader"]

    assert await raw_get(server, "/docs/y", reader) == 200
    for target in (
        "/admin/x%2F..%2F..%2Fdocs%2Fy",
        "/admin/..%2Fdocs%2Fy",
        "/admin/%2E%2E%2Fdocs%2Fy",
        "/admin//../docs/y",
        "/admin/x",
    ):
        # 403 from the check; 404 where aiohttp's own normalisation finds no route at all.
        assert await raw_get(server, target, reader) in (403, 404), target
    assert await raw_get(server, "/admin/x%2F..%2F..%2Fdocs%2Fy", reader) == 403


@pytest.mark.parametrize("protection", ["middleware", "middleware, opt-in", "guard.routes"])
async def test_marks_on_view_methods_and_partials_are_honoured(
    aiohttp_client: Any,
    client: TokensvcClient,
    tokens: dict[str, str],
    protection: str,
) -> None:
    """Red team: marks used to be read only from a route's handler, which for a class-based view
    is the class — so `@require(...)` on a view's method was dropped (the weaker forward-auth
    mapping checked instead; with protect_all=False the method was open to anyone), and so was a
    mark on a handler wrapped in functools.partial. Each is now honoured."""
    routes = web.RouteTableDef()

    @routes.view("/admin/report")
    class Report(web.View):
        @require(operation="report:read", resource="/admin")
        async def get(self) -> web.Response:
            return web.json_response({"subject": principal(self.request).subject})

        @public
        async def options(self) -> web.Response:
            return web.json_response({"allow": "GET"})

    @require(operation="report:read", resource="/admin")
    async def report_for(request: web.Request, *, kind: str) -> web.Response:
        return web.json_response({"subject": principal(request).subject, "kind": kind})

    routes.get("/admin/partial")(functools.partial(report_for, kind="p"))

    if protection == "guard.routes":
        app = web.Application()
        app.add_routes(TokensvcGuard(client, audience="files").routes(routes))
    else:
        opt_in = protection == "middleware, opt-in"
        middleware = tokensvc_middleware(client, audience="files", protect_all=not opt_in)
        app = web.Application(middlewares=[middleware])
        app.add_routes(routes)
    http = await aiohttp_client(app)
    reader, reporter = bearer(tokens["reader"]), bearer(tokens["reporter"])

    for path in ("/admin/report", "/admin/partial"):
        assert (await http.get(path)).status == 401, path
        assert (await http.get(path, headers=reader)).status == 403, path
        allowed = await http.get(path, headers=reporter)
        assert allowed.status == 200 and (await allowed.json())["subject"] == "rita", path
    assert (await http.options("/admin/report")).status == 200  # its own @public mark


def asgi_scope(
    kind: str, path: str, headers: dict[str, str], *, method: str | None = None
) -> dict[str, Any]:
    """An ASGI `http` or `websocket` scope for `path`, as a server hands it over."""
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5555),
    }
    if method is not None:
        scope["method"] = method
    return scope


async def asgi_call(
    app: Any, path: str, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str], bytes, dict[str, Any]]:
    """One HTTP request through an ASGI app: status, headers, body, and the scope it saw."""
    scope = asgi_scope("http", path, headers, method=method)
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


async def test_asgi_checks_websocket_handshakes_and_refuses_unknown_scopes(
    client: TokensvcClient, tokens: dict[str, str]
) -> None:
    """Red team: WebSocket scopes used to pass through unchecked, so a websocket route behind the
    middleware was open to anyone. A handshake is now checked as a GET of its path: allowed with
    the principal, or closed before it is accepted (1008; the server answers 403) without the
    inner app ever running. A scope type the middleware has no rule for raises."""
    reached: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})

    app = TokensvcASGIMiddleware(inner, client, audience="files")

    async def handshake(path: str, headers: dict[str, str]) -> list[dict[str, Any]]:
        scope = asgi_scope("websocket", path, headers)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: Any) -> None:
            sent.append(dict(message))

        await app(scope, receive, send)
        return sent

    anonymous = await handshake("/docs/1", {})
    elsewhere = await handshake("/admin/ws", bearer(tokens["reader"]))
    assert reached == []
    assert anonymous[0]["type"] == elsewhere[0]["type"] == "websocket.close"
    assert anonymous[0]["code"] == elsewhere[0]["code"] == 1008

    allowed = await handshake("/docs/1", bearer(tokens["reader"]))
    assert allowed == [{"type": "websocket.accept"}]
    assert reached[0][ASGI_PRINCIPAL].subject == "alice"

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: Any) -> None:
        return None

    with pytest.raises(RuntimeError, match="no rule for ASGI scope type"):
        await app({"type": "webtransport", "path": "/docs/1"}, nothing, ignore)


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


@pytest.fixture
async def mfa_app(aiohttp_client: Any, client: TokensvcClient) -> Any:
    """/refund needs MFA (`@require(mfa=True)`); /docs/{name} does not."""

    @require(operation="refund", mfa=True)
    async def refund(request: web.Request) -> web.Response:
        who = principal(request)
        return web.json_response({"subject": who.subject, "mfa": who.mfa})

    async def doc(request: web.Request) -> web.Response:
        return web.json_response({"mfa": principal(request).mfa})

    app = web.Application(middlewares=[tokensvc_middleware(client)])
    app.router.add_post("/refund", refund)
    app.router.add_get("/docs/{name}", doc)
    return await aiohttp_client(app)


async def test_aiohttp_require_mfa_refuses_a_password_only_token(
    mfa_app: Any, mfa_tokens: dict[str, str], client: TokensvcClient
) -> None:
    """An @require(mfa=True) route answers a password-only token 403 JSON naming MFA, and admits
    alice's MFA token with `mfa` on its principal; an unmarked route admits both, saying which."""
    plain = await mfa_app.post("/refund", headers=bearer(mfa_tokens["password"]))
    strong = await mfa_app.post("/refund", headers=bearer(mfa_tokens["mfa"]))
    plain_doc = await mfa_app.get("/docs/1", headers=bearer(mfa_tokens["password"]))
    strong_doc = await mfa_app.get("/docs/1", headers=bearer(mfa_tokens["mfa"]))

    assert plain.status == 403
    assert await plain.json() == {
        "error": {"code": "caveat_denied", "message": MFA_REQUIRED.reason}
    }
    assert "MFA" in MFA_REQUIRED.reason
    assert strong.status == 200
    assert await strong.json() == {"subject": mfa_tokens["subject"], "mfa": True}
    assert (plain_doc.status, await plain_doc.json()) == (200, {"mfa": False})
    assert (strong_doc.status, await strong_doc.json()) == (200, {"mfa": True})
    assert client.metrics.hits > 0  # decided from cached verdicts, not by asking tokensvc


async def test_aiohttp_require_mfa_leaves_a_revoked_token_a_401(
    mfa_app: Any, mfa_tokens: dict[str, str], client: TokensvcClient, served: Served
) -> None:
    """MFA is judged after revocation and the caveats, as /v1/verify judges it: a revoked
    password-only token on an MFA route is a 401 (bad everywhere), not a 403."""
    before = await mfa_app.post("/refund", headers=bearer(mfa_tokens["password"]))
    async with aiohttp.ClientSession() as session:
        status, body = await served.verify(session, mfa_tokens["password"], {})
        assert status == 200
        await served.revoke(session, body["token_id"])
    assert client.stream is not None
    for _ in range(100):  # the revocation arrives over the stream
        if body["token_id"] in client.state.revoked_tokens:
            break
        await asyncio.sleep(0.05)

    after = await mfa_app.post("/refund", headers=bearer(mfa_tokens["password"]))

    assert before.status == 403
    assert after.status == 401 and (await after.json())["error"]["code"] == "invalid_token"


async def test_asgi_mfa_per_route_and_per_app(
    client: TokensvcClient, mfa_tokens: dict[str, str]
) -> None:
    """ASGI: Requirement(mfa=True) from the requirements function guards one route;
    `require_mfa=True` guards every checked route; the principal in scope says `mfa`."""

    def requirements(scope: Any) -> Requirement:
        return Requirement(mfa=True) if scope["path"] == "/refund" else Requirement()

    per_route = TokensvcASGIMiddleware(inner_app, client, requirements=requirements)
    per_app = TokensvcASGIMiddleware(inner_app, client, require_mfa=True)

    route_plain = await asgi_call(per_route, "/refund", bearer(mfa_tokens["password"]))
    route_strong = await asgi_call(per_route, "/refund", bearer(mfa_tokens["mfa"]))
    other_plain = await asgi_call(per_route, "/docs/1", bearer(mfa_tokens["password"]))
    app_plain = await asgi_call(per_app, "/docs/1", bearer(mfa_tokens["password"]))
    app_strong = await asgi_call(per_app, "/docs/1", bearer(mfa_tokens["mfa"]))

    assert route_plain[0] == 403
    assert orjson.loads(route_plain[2])["error"]["message"] == MFA_REQUIRED.reason
    assert route_strong[0] == 200 and route_strong[3][ASGI_PRINCIPAL].mfa is True
    assert other_plain[0] == 200 and other_plain[3][ASGI_PRINCIPAL].mfa is False
    assert app_plain[0] == 403 and app_strong[0] == 200
