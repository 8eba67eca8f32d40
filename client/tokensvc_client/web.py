"""aiohttp: a middleware that checks every request's token with a TokensvcClient, and `@require`
to set a route's operation and resource (or `@public` to leave it open); or, without a middleware,
`TokensvcGuard`: per route, or over a whole route table (`app.add_routes(guard.routes(table))`).

    client = TokensvcClient("http://tokensvc:8080", service_token)
    app = web.Application(middlewares=[tokensvc_middleware(client, audience="orders")])

    @require(operation="orders:read")
    async def list_orders(request):
        who = principal(request)   # the Principal: subject, token_id, expires_at, declared, mfa

    @require(operation="orders:refund", mfa=True)   # only a token minted after a second factor
    async def refund(request): ...

Denials are JSON `{"error": {"code", "message"}}` with 401 (and `WWW-Authenticate`), 403, 400,
or 503 + Retry-After when tokensvc cannot be asked and the cache may not be trusted.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Hashable, Iterable
from time import monotonic
from typing import Any, Final, TypeVar

import orjson
from aiohttp import hdrs, web
from multidict import istr

from tokensvc_client.client import Principal, TokensvcClient
from tokensvc_client.errors import Denied, Unavailable
from tokensvc_client.mapping import (
    DEFAULT,
    DISCHARGES_HEADER,
    PUBLIC,
    Requirement,
    discharges_from,
    operation_for,
    resource_of,
    token_from,
)

#: Where the Principal of an allowed request is kept (`request[PRINCIPAL]`, or `principal(request)`):
#: a typed web.RequestKey where aiohttp has them (newer releases warn about plain string keys).
PRINCIPAL: Final[Any] = (
    web.RequestKey("tokensvc_client.principal", Principal)
    if hasattr(web, "RequestKey")
    else "tokensvc_client.principal"
)
_ATTR: Final = "__tokensvc_requirement__"
# Header names as istr: a case-insensitive lookup with an istr skips folding the name's case,
# which every request's cache hit would otherwise pay twice.
_AUTHORIZATION: Final = hdrs.AUTHORIZATION
_DISCHARGES: Final = istr(DISCHARGES_HEADER)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Any])


def require(
    *, operation: str | None = None, resource: str | None = None, mfa: bool = False
) -> Callable[[H], H]:
    """Mark a handler: its requests are checked with this operation and/or resource (None: the
    forward-auth mapping of the request for that one); `mfa=True` admits only tokens minted
    after a second factor (403 for any other, once its caveats allow the request)."""

    def mark(handler: H) -> H:
        setattr(handler, _ATTR, Requirement(operation=operation, resource=resource, mfa=mfa))
        return handler

    return mark


def public(handler: H) -> H:
    """Mark a handler as open: no token is asked for (health checks, login pages)."""
    setattr(handler, _ATTR, PUBLIC)
    return handler


def requirement_of(handler: object, method: str, default: Requirement) -> Requirement:
    """The requirement a route's handler carries for a request with `method`: the mark of
    `@require`/`@public` on the handler (through `functools.partial`), or for a class-based view
    (`web.View`) on its method for `method` (`get`, `post`, ...), else on the class itself (not
    a base class); else `default`. A method a subclass overrides carries its own mark or none. A mark must never be lost on the way: a lost `@require(operation=...)` would
    leave the route checked with the weaker forward-auth mapping, a lost one on a view method
    with `protect_all=False` would leave it open. A mark on a partial itself counts too, before
    one on what it wraps: the outermost is the route's own (red team, helper-57:
    `require(operation="admin")(functools.partial(h, ...))` was read through to `h`, unmarked,
    and the route was checked as `read`, or left open)."""
    while isinstance(handler, functools.partial):
        found = getattr(handler, _ATTR, None)
        if isinstance(found, Requirement):
            return found
        handler = handler.func
    if _is_view(handler):
        found = getattr(getattr(handler, method.lower(), None), _ATTR, None)
        if isinstance(found, Requirement):
            return found
        # A view class's mark is its own, not its subclasses': `@public` on a base view opened
        # every handler a subclass added (red team, helper-70: an unmarked `post` of a subclass
        # served requests with no token).
        found = vars(handler).get(_ATTR)
        return found if isinstance(found, Requirement) else default
    found = getattr(handler, _ATTR, None)
    return found if isinstance(found, Requirement) else default


def _always(requirement: Requirement) -> Callable[[web.Request], Requirement]:
    return lambda request: requirement


def _is_view(handler: object) -> bool:
    return isinstance(handler, type) and issubclass(handler, web.View)


def _view_requirement(view: object, request: web.Request) -> Requirement:
    return requirement_of(view, request.method, DEFAULT)


def principal(request: web.Request) -> Principal:
    """The Principal of a request the middleware allowed; KeyError on an open route."""
    return request[PRINCIPAL]  # type: ignore[no-any-return]


def error_response(exc: Denied | Unavailable) -> web.Response:
    """The JSON answer for a refusal: 401/403/400, or 503 + Retry-After."""
    if isinstance(exc, Unavailable):
        status, code, headers = 503, "unavailable", {"Retry-After": str(exc.retry_after)}
    else:
        status, code, headers = exc.status, exc.code, {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="tokensvc"'
    body = orjson.dumps({"error": {"code": code, "message": exc.reason}})
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


class _Gate:
    """One decision per request, shared by the middleware and `TokensvcGuard`: a remembered
    allow if there is one for exactly this request (TokensvcClient.allowed), else the check."""

    __slots__ = ("address", "allowed", "audience", "check", "require_mfa")

    def __init__(
        self,
        client: TokensvcClient,
        audience: str | None,
        client_ip: Callable[[web.Request], str | None] | None,
        require_mfa: bool,
    ) -> None:
        self.check = client.check
        self.allowed = client.allowed
        self.audience = audience
        self.address = client_ip or _peer
        self.require_mfa = require_mfa

    def key(self, request: web.Request, route: object) -> Hashable:
        """What an allow for `request` on `route` is remembered under: every input of the check
        but the client address (see TokensvcClient.allowed) — the header strings the token and
        discharges come from, the method and path the operation and resource come from, the
        route (its requirement: one object per protected route) and this gate (its audience
        and MFA rule)."""
        headers = request.headers
        return (
            headers.get(_AUTHORIZATION),
            headers.get(_DISCHARGES),
            request.method,
            request.raw_path,
            route,
            self,
        )

    async def admit(
        self, request: web.Request, key: Hashable, requirement: Requirement
    ) -> web.Response | None:
        """The full check, when `allowed(key)` had nothing: None with the Principal in
        `request[PRINCIPAL]`, or the refusal to answer."""
        headers = request.headers
        try:
            request[PRINCIPAL] = await self.check(
                token_from(headers.get(_AUTHORIZATION)),
                discharges_from(headers.get(_DISCHARGES)),
                operation=requirement.operation or operation_for(request.method),
                resource=requirement.resource or resource_of(request.raw_path),
                audience=self.audience,
                client_ip=self.address(request),
                require_mfa=self.require_mfa or requirement.mfa,
                reuse_as=key,
            )
        except (Denied, Unavailable) as exc:
            return error_response(exc)
        return None


def _peer(request: web.Request) -> str | None:
    return request.remote


def tokensvc_middleware(
    client: TokensvcClient,
    *,
    audience: str | None = None,
    protect_all: bool = True,
    client_ip: Callable[[web.Request], str | None] | None = None,
    require_mfa: bool = False,
) -> Any:
    """The middleware. `protect_all=False` checks only routes marked with `@require`;
    `require_mfa=True` asks every checked route for an MFA token (`@require(mfa=True)`: one route).

    `client_ip` picks the address client-CIDR caveats are checked against; the peer's address by
    default (behind a proxy, pass a function that applies your trusted-proxy rule).
    """
    gate = _Gate(client, audience, client_ip, require_mfa)
    admit = gate.admit
    default = DEFAULT if protect_all else PUBLIC
    # What TokensvcClient.allowed reads, for its rule inline below: the client's own table
    # (only ever cleared, never replaced), its revocation state, clock and counters.
    remembered, state, clock, metrics = client._allowed, client.state, client._clock, client.metrics

    async def check_then(
        request: web.Request, handler: Handler, key: Hashable
    ) -> web.StreamResponse:
        # The route's own handler, not `handler`: what aiohttp hands a middleware is the next
        # middleware when one follows (a partial of it, in a sub-app too), and a mark read
        # through that would be lost (red team: `@require(operation=...)` fell back to the
        # forward-auth mapping, and with protect_all=False the route was open).
        requirement = requirement_of(request.match_info.handler, request.method, default)
        if requirement.public:  # never remembered: open routes pay the lookup and this
            return await handler(request)
        refusal = await admit(request, key, requirement)
        if refusal is not None:
            return refusal
        return await handler(request)

    @web.middleware
    def middleware(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        # Not a coroutine function: aiohttp awaits what a middleware returns (its Middleware
        # type returns an Awaitable), so a remembered allow hands back the handler's own
        # awaitable, with no coroutine of the middleware's in between; the rest is check_then.
        # The handler aiohttp hands a middleware is one object per route (the route's handler,
        # or aiohttp's cached partial of the next middleware; an old-style middleware after
        # this one makes a new one per request, and then nothing is reused), so it stands for
        # the route's requirement in the key. A remembered allow costs a lookup and no more:
        # the key as _Gate.key builds it and the rule of TokensvcClient.allowed, both inline
        # (each call saved is ~1 % of a small request's time; tests/client/test_client_reuse.py
        # holds the middleware to the same answers as `allowed`).
        headers = request.headers
        key = (
            headers.get(_AUTHORIZATION),
            headers.get(_DISCHARGES),
            request.method,
            request.raw_path,
            handler,
            gate,
        )
        try:  # a subscript, not .get(): a hit is the common case, and a method call costs more
            found, until = remembered[key]
        except KeyError:
            return check_then(request, handler, key)
        if monotonic() < state.trusted_until and clock() < until:
            metrics.reused += 1
            request[PRINCIPAL] = found
            return handler(request)
        return check_then(request, handler, key)

    return middleware


class TokensvcGuard:
    """Per-route protection, for apps that would rather not run a middleware on every request:
    the same decision as `tokensvc_middleware`, made inside each handler it wraps (an app with
    no middleware at all skips aiohttp's middleware chain, a few µs per request).

        guard = TokensvcGuard(client, audience="orders")

        @guard.protect                                 # the forward-auth mapping
        async def read_doc(request): ...

        @guard.require(operation="orders:refund", mfa=True)
        async def refund(request): ...

    Undecorated handlers are open: use the middleware to protect every route by default.
    """

    def __init__(
        self,
        client: TokensvcClient,
        *,
        audience: str | None = None,
        client_ip: Callable[[web.Request], str | None] | None = None,
        require_mfa: bool = False,
    ) -> None:
        self._gate = _Gate(client, audience, client_ip, require_mfa)

    def require(
        self, *, operation: str | None = None, resource: str | None = None, mfa: bool = False
    ) -> Callable[[Handler], Handler]:
        """Protect a handler with this operation and/or resource (None: the forward-auth
        mapping of the request); `mfa=True` admits only tokens minted after a second factor."""
        requirement_for = _always(Requirement(operation=operation, resource=resource, mfa=mfa))
        return lambda handler: self._wrap(handler, requirement_for)

    def protect(self, handler: Handler) -> Handler:
        """Protect a handler with the forward-auth mapping (`read` for GET, the path), or with
        the `@require`/`@public` mark it carries — for a class-based view, the mark on the
        method each request calls (else on the class)."""
        if _is_view(handler):
            return self._wrap(handler, functools.partial(_view_requirement, handler))
        return self._wrap(handler, _always(requirement_of(handler, "", DEFAULT)))

    def routes(self, table: Iterable[web.AbstractRouteDef]) -> list[web.AbstractRouteDef]:
        """A route table (`web.RouteTableDef`, or `web.get(...)` and the like) with every route
        protected as `tokensvc_middleware` protects it — `@require(...)` for its requirement,
        `@public` left open, any other the forward-auth mapping — for `app.add_routes(...)`.
        Protection by default, at the guard's cost: no middleware chain.

            routes = web.RouteTableDef()

            @routes.get("/docs/{name}")
            async def read_doc(request): ...

            app.add_routes(guard.routes(routes))

        TypeError for a route that is not a handler's (`web.static`): it could not be protected,
        and a route table must not quietly leave one open.
        """
        protected: list[web.AbstractRouteDef] = []
        for route in table:
            if not isinstance(route, web.RouteDef):
                raise TypeError(
                    f"TokensvcGuard.routes: {route!r} is not a handler's route and cannot be "
                    "protected; add it to the app yourself if it is meant to be open"
                )
            handler = route.handler
            if not _is_view(handler) and requirement_of(handler, "", DEFAULT).public:
                protected.append(route)
                continue
            wrapped = self.protect(handler)
            protected.append(web.RouteDef(route.method, route.path, wrapped, route.kwargs))
        return protected

    def _wrap(self, handler: Any, requirement_for: Callable[[web.Request], Requirement]) -> Handler:
        """`handler` checked per request; `requirement_for(request)` is asked only when no
        remembered allow applies (the route's requirement, or a view method's)."""
        gate = self._gate
        key_of, allowed, admit = gate.key, gate.allowed, gate.admit
        route = object()  # hashed by identity: cheaper in the key than the requirement

        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            key = key_of(request, route)
            found = allowed(key)
            if found is not None:
                request[PRINCIPAL] = found
            else:
                requirement = requirement_for(request)
                if not requirement.public:  # a view's @public method: open, never remembered
                    refusal = await admit(request, key, requirement)
                    if refusal is not None:
                        return refusal
            return await handler(request)  # type: ignore[no-any-return]

        return guarded
