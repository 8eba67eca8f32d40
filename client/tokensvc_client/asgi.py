"""ASGI (Starlette, FastAPI, any ASGI 3 app): a middleware that checks every HTTP request's token
with a TokensvcClient. Plain ASGI, so it needs no Starlette.

    app = TokensvcASGIMiddleware(app, client, audience="orders")
    # Starlette/FastAPI handlers: request.scope["tokensvc_client.principal"], or
    # request.state.principal (the middleware fills scope["state"]).

`requirements(scope)` may return a Requirement per request (operation/resource, `mfa=True` for
a route that only a token minted after a second factor may use, or PUBLIC); by default every
request is checked with the forward-auth mapping of its method and path. `require_mfa=True`
asks every checked request for an MFA token.

WebSocket handshakes are checked like a GET of their path; a refused one is closed before it is
accepted (the server answers 403). Lifespan scopes pass through; any other scope type raises.
The path checked is the request's `raw_path` (its `path`, quoted, where the server gives none):
put this middleware outermost, before any middleware that rewrites `path`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson

from tokensvc_client.client import TokensvcClient
from tokensvc_client.errors import Denied, Unavailable
from tokensvc_client.mapping import (
    DEFAULT,
    Requirement,
    discharges_from,
    operation_for,
    resource_of,
    token_from,
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PRINCIPAL: Final = "tokensvc_client.principal"


class TokensvcASGIMiddleware:
    """Allow a request through to `app`, or answer 401/403/400/503 JSON itself."""

    def __init__(
        self,
        app: ASGIApp,
        client: TokensvcClient,
        *,
        audience: str | None = None,
        requirements: Callable[[Scope], Requirement] | None = None,
        client_ip: Callable[[Scope], str | None] | None = None,
        require_mfa: bool = False,
    ) -> None:
        self.app = app
        self.require_mfa = require_mfa
        self.client = client
        self.audience = audience
        self.requirements = requirements
        self.client_ip = client_ip or _peer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":  # the server's start and stop: no request, nothing to check
            await self.app(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            # A scope this middleware has no rule for is never let through unchecked.
            raise RuntimeError(f"TokensvcASGIMiddleware: no rule for ASGI scope type {kind!r}")
        # A WebSocket handshake is a GET (its operation: read, unless a requirement says).
        method = scope["method"] if kind == "http" else "GET"
        requirement = self.requirements(scope) if self.requirements is not None else DEFAULT
        if requirement.public:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        authorization = headers.get("authorization")
        discharges_header = headers.get("x-macaroon-discharges")
        raw_path = scope.get("raw_path")
        # UTF-8, as aiohttp reads a request target and forward-auth its X-Original-URI, so one
        # request names one resource at every door (red team: latin-1 named `/docs/é` as
        # `/docs/Ã©`); a byte that is not UTF-8 stays a surrogate, which resource_of refuses.
        path = (
            raw_path.decode("utf-8", "surrogateescape") if raw_path else _quote_path(scope["path"])
        )
        # Every input of the check but the client address (see TokensvcClient.allowed).
        reuse_as = (authorization, discharges_header, method, path, requirement, self)
        found = self.client.allowed(reuse_as)
        if found is None:
            try:
                found = await self.client.check(
                    token_from(authorization),
                    discharges_from(discharges_header),
                    operation=requirement.operation or operation_for(method),
                    resource=requirement.resource or resource_of(path),
                    audience=self.audience,
                    client_ip=self.client_ip(scope),
                    require_mfa=self.require_mfa or requirement.mfa,
                    reuse_as=reuse_as,
                )
            except (Denied, Unavailable) as exc:
                if kind == "websocket":
                    await _refuse_websocket(receive, send, exc)
                else:
                    await _refuse(send, exc)
                return
        scope[PRINCIPAL] = found
        scope.setdefault("state", {})["principal"] = found
        await self.app(scope, receive, send)


def _headers(scope: Scope) -> dict[str, str]:
    # Latin-1, as ASGI servers hand headers over; the first of repeated ones wins.
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        if key not in out:
            out[key] = value.decode("latin-1")
    return out


def _quote_path(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/:@!$&'()*+,;=-._~")


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


async def _refuse_websocket(receive: Receive, send: Send, exc: Denied | Unavailable) -> None:
    """Refuse a WebSocket handshake: close before accepting, which the server answers with an
    HTTP 403 (the reason, shortened to the 123 bytes a close frame holds, for the log)."""
    await receive()  # websocket.connect
    reason = exc.reason.encode()[:123].decode(errors="ignore")
    await send({"type": "websocket.close", "code": 1008, "reason": reason})


async def _refuse(send: Send, exc: Denied | Unavailable) -> None:
    if isinstance(exc, Unavailable):
        status, code = 503, "unavailable"
        extra = [(b"retry-after", str(exc.retry_after).encode())]
    else:
        status, code = exc.status, exc.code
        extra = [(b"www-authenticate", b'Bearer realm="tokensvc"')] if status == 401 else []
    body = orjson.dumps({"error": {"code": code, "message": exc.reason}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
