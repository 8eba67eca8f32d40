"""aiohttp: a middleware that checks every request's token with a TokensvcClient, and `@require`
to set a route's operation and resource (or `@public` to leave it open).

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

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web

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
    address = client_ip or (lambda request: request.remote)
    check = client.check

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        requirement: Requirement = getattr(handler, _ATTR, DEFAULT if protect_all else PUBLIC)
        if requirement.public:
            return await handler(request)
        headers = request.headers
        try:
            token = token_from(headers.get("Authorization"))
            discharges = discharges_from(headers.get(DISCHARGES_HEADER))
            request[PRINCIPAL] = await check(
                token,
                discharges,
                operation=requirement.operation or operation_for(request.method),
                resource=requirement.resource or resource_of(request.raw_path),
                audience=audience,
                client_ip=address(request),
                require_mfa=require_mfa or requirement.mfa,
            )
        except (Denied, Unavailable) as exc:
            return error_response(exc)
        return await handler(request)

    return middleware
