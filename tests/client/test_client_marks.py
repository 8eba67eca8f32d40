"""Red team: a route's `@require`/`@public` mark holds wherever tokensvc's aiohttp middleware sits.

aiohttp hands a middleware the next middleware (a cached partial of it) when one follows, in the
app or in a sub-app, not the route's handler. Reading the mark through that lost it (helper-44):
a token that only reads reached a route marked `@require(operation="admin:delete")`, an
`@require(mfa=True)` route took a password-only token, and with `protect_all=False` a marked
route was open to a request with no token. Each test is that attack; a pass means it failed.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from caveats import Operations, Resources, Subject, encode
from tests.client.test_client_reuse import TOKEN, client_with
from tokensvc_client.web import require, tokensvc_middleware

# A token that may only read under /admin (its verdict: no MFA).
READER = [encode(Subject("alice")), encode(Operations(("read",))), encode(Resources(("/admin/*",)))]
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@web.middleware
async def passing(request: web.Request, handler: Any) -> web.StreamResponse:
    """Any other middleware: a logger, a timer."""
    return await handler(request)


@require(operation="admin:delete", resource="/admin")
async def delete_all(request: web.Request) -> web.Response:
    return web.Response(text="deleted")


@require(mfa=True)
async def refund(request: web.Request) -> web.Response:
    return web.Response(text="refunded")


class Docs(web.View):
    @require(operation="docs:audit")  # a GET the forward-auth mapping (read) would allow
    async def get(self) -> web.Response:
        return web.Response(text="audit log")


async def status(
    aiohttp_client: Any, app: web.Application, path: str, *, method: str = "GET", token: bool = True
) -> int:
    http = await aiohttp_client(app)
    response = await http.request(method, path, headers=BEARER if token else {})
    return int(response.status)


async def test_operation_mark_holds_with_a_middleware_after_tokensvcs(aiohttp_client: Any) -> None:
    for middlewares in ([], [passing], [passing, passing]):
        app = web.Application(middlewares=[tokensvc_middleware(client_with(READER)), *middlewares])
        app.router.add_get("/admin/all", delete_all)

        assert await status(aiohttp_client, app, "/admin/all") == 403, middlewares


async def test_mfa_mark_holds_with_a_middleware_after_tokensvcs(aiohttp_client: Any) -> None:
    app = web.Application(middlewares=[tokensvc_middleware(client_with(READER)), passing])
    app.router.add_get("/admin/refund", refund)

    assert await status(aiohttp_client, app, "/admin/refund") == 403


async def test_opt_in_mark_holds_with_a_middleware_after_tokensvcs(aiohttp_client: Any) -> None:
    """protect_all=False checks only marked routes: a lost mark would leave this one open."""
    app = web.Application(
        middlewares=[tokensvc_middleware(client_with(READER), protect_all=False), passing]
    )
    app.router.add_get("/admin/all", delete_all)

    assert await status(aiohttp_client, app, "/admin/all", token=False) == 401
    assert await status(aiohttp_client, app, "/admin/all") == 403


async def test_mark_holds_in_a_sub_app_with_its_own_middleware(aiohttp_client: Any) -> None:
    app = web.Application(middlewares=[tokensvc_middleware(client_with(READER))])
    admin = web.Application(middlewares=[passing])
    admin.router.add_get("/all", delete_all)
    app.add_subapp("/admin", admin)

    assert await status(aiohttp_client, app, "/admin/all") == 403


async def test_a_views_method_mark_holds_with_a_middleware_after_tokensvcs(
    aiohttp_client: Any,
) -> None:
    app = web.Application(middlewares=[tokensvc_middleware(client_with(READER)), passing])
    app.router.add_view("/admin/docs", Docs)

    assert await status(aiohttp_client, app, "/admin/docs") == 403


async def test_asgi_reads_a_raw_path_as_utf8_like_the_other_doors() -> None:
    """Red team (helper-45): the ASGI middleware decoded raw_path as latin-1, so a raw `/docs/é`
    named `/docs/Ã©` there and `/docs/é` at the aiohttp middleware and forward-auth. The same
    request names one resource at every door; a byte that is not UTF-8 names none (403)."""
    from tokensvc_client.asgi import TokensvcASGIMiddleware

    client = client_with(
        [encode(Subject("alice")), encode(Operations(("read",))), encode(Resources(("/docs/é",)))]
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    async def status_of(raw_path: bytes) -> int:
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/docs/é",
            "raw_path": raw_path,
            "query_string": b"",
            "headers": [(b"authorization", f"Bearer {TOKEN}".encode())],
            "client": ("192.0.2.1", 1),
        }
        await TokensvcASGIMiddleware(app, client)(scope, receive, send)
        return int(sent[0]["status"])

    assert await status_of("/docs/é".encode()) == 200
    assert await status_of(b"/docs/%C3%A9") == 200
    assert await status_of(b"/docs/\xff") == 403


async def _handle(request: web.Request, *, kind: str) -> web.Response:
    return web.Response(text=kind)


async def test_a_mark_on_a_partial_holds_at_every_door(aiohttp_client: Any) -> None:
    """Red team (helper-57): a mark put on a `functools.partial` route handler (the way to mark
    one route of a shared function) was read through to the unmarked function: with the
    middleware the route was checked as a plain `read` (200 to a reader), with
    protect_all=False it was open, and TokensvcGuard weakened it the same way."""
    import functools

    from tokensvc_client.web import TokensvcGuard, public

    def marked() -> Any:
        return require(operation="admin:delete")(functools.partial(_handle, kind="admin"))

    for protect_all in (True, False):
        app = web.Application(
            middlewares=[tokensvc_middleware(client_with(READER), protect_all=protect_all)]
        )
        app.router.add_get("/admin/partial", marked())
        assert await status(aiohttp_client, app, "/admin/partial") == 403, protect_all
        assert await status(aiohttp_client, app, "/admin/partial", token=False) == 401

    guard = TokensvcGuard(client_with(READER))
    app = web.Application()
    app.router.add_get("/admin/protected", guard.protect(marked()))
    table = web.RouteTableDef()
    table.get("/admin/routed")(marked())
    table.get("/admin/open")(public(functools.partial(_handle, kind="open")))
    app.add_routes(guard.routes(table))
    assert await status(aiohttp_client, app, "/admin/protected") == 403
    assert await status(aiohttp_client, app, "/admin/routed") == 403
    assert await status(aiohttp_client, app, "/admin/open", token=False) == 200


async def test_a_views_class_mark_is_not_inherited(aiohttp_client: Any) -> None:
    """Red team (helper-70): `@public` on a base `web.View` was read through to a subclass
    (class attributes are inherited), so a `post` the subclass added was served with no token,
    with the middleware and with TokensvcGuard alike."""
    from tokensvc_client.web import TokensvcGuard, public

    @public
    class Open(web.View):
        async def get(self) -> web.Response:
            return web.Response(text="open")

    class Admin(Open):
        async def post(self) -> web.Response:
            return web.Response(text="admin")

    app = web.Application(middlewares=[tokensvc_middleware(client_with(READER))])
    app.router.add_view("/admin/view", Admin)
    app.router.add_view("/admin/open", Open)
    guard = TokensvcGuard(client_with(READER))
    guarded = web.Application()
    guarded.router.add_route("*", "/admin/view", guard.protect(Admin))

    assert await status(aiohttp_client, app, "/admin/view", method="POST", token=False) == 401
    assert await status(aiohttp_client, app, "/admin/view", method="POST") == 403  # reads only
    assert await status(aiohttp_client, app, "/admin/open", token=False) == 200
    assert await status(aiohttp_client, guarded, "/admin/view", method="POST", token=False) == 401
