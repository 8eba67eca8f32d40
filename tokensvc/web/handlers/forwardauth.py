"""GET /v1/auth: forward-auth for nginx `auth_request` and Traefik ForwardAuth.

The proxy asks whether the request it is about to pass on may go through; the answer is the
status alone (200 allow, 401 no or bad token, 403 denied). The request context comes from the
headers each proxy sets, see docs/forward-auth.md:

- method and URI from `X-Original-Method`/`X-Original-URI` (nginx), else
  `X-Forwarded-Method`/`X-Forwarded-Uri` (Traefik), else this request's own method;
- operation: `X-Auth-Operation` when the proxy sets one, else the method mapped to `read`
  (GET, HEAD, OPTIONS) or `write` (anything else);
- resource: the URI's path, percent-decoded and normalised as the proxy will route it;
- audience: `X-Auth-Audience` when the proxy sets one;
- `X-Auth-Require-MFA: true` (set per location by the proxy): only a token minted after a
  second factor is allowed (403 otherwise); the answer says `X-Auth-MFA: true|false`;
- client IP: the trusted-proxy rule of `tokensvc.web.auth.client_ip`.

A client calling this endpoint directly and choosing these headers learns no more than
`/v1/verify` already tells anyone holding the token.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from aiohttp import web

from tokensvc.errors import Forbidden
from tokensvc.web import appkeys
from tokensvc.web.auth import bearer_token, client_ip
from tokensvc.web.routes import add_routes

READ_METHODS: Final = frozenset(("GET", "HEAD", "OPTIONS"))
READ: Final = "read"
WRITE: Final = "write"

_MAX_URI: Final = 2048
# See resource_of: paths a proxy and its backend could route differently. tokensvc-client's
# mapping (client/tokensvc_client/mapping.py) refuses the same, held to it by a property test.
_AMBIGUOUS: Final = re.compile(r"%(?:2f|2e|5c|3b)|[\\#]|//|/\.\.?(?:[/;]|$)", re.IGNORECASE)
_MAX_NAME: Final = 255
# Header values are sent as they are except `%` and anything outside printable ASCII.
_HEADER_SAFE: Final = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_EDGE_SPACES: Final = re.compile(r"^ +| +$")


def setup(app: web.Application) -> None:
    """Register /v1/auth for every method: nginx subrequests keep the original request's method."""
    add_routes(app, [web.route("*", "/v1/auth", forward_auth)])


async def forward_auth(request: web.Request) -> web.Response:
    token = bearer_token(request)
    method = _header(request, "X-Original-Method", "X-Forwarded-Method") or request.method
    operation = _name(request, "X-Auth-Operation") or operation_for(method)
    uri = _header(request, "X-Original-URI", "X-Forwarded-Uri")
    resource = None if uri is None else resource_of(uri)

    verified = await request.app[appkeys.VERIFIER].verify(
        token,
        operation=operation,
        resource=resource,
        audience=_name(request, "X-Auth-Audience"),
        client_ip=client_ip(request),
        require_mfa=_flag(request, "X-Auth-Require-MFA"),
    )

    return web.Response(
        text="ok\n",
        headers={
            "X-Auth-Subject": _header_value(verified.subject),
            "X-Auth-Token-Id": verified.token_id,
            "X-Auth-MFA": "true" if verified.mfa else "false",
            "Cache-Control": "no-store",
        },
    )


def _header_value(text: str) -> str:
    """`text` as a header value a backend reads back exactly: `%` and what is not printable
    ASCII percent-encoded, and spaces at either end too, which header parsers strip (a subject
    `bob ` minted before subjects were refused such spaces would otherwise reach it as `bob`)."""
    value = quote(text, safe=_HEADER_SAFE)
    return _EDGE_SPACES.sub(lambda found: "%20" * len(found.group()), value)


def operation_for(method: str) -> str:
    """`read` for GET, HEAD and OPTIONS; `write` for every other method, known or not."""
    return READ if method.strip().upper() in READ_METHODS else WRITE


def resource_of(uri: str) -> str:
    """The path of `uri`: no query, percent-decoded, a trailing slash kept.

    A path whose meaning depends on who reads it is denied (403): an encoded `/`, `.`, `;` or
    backslash, a backslash or `#` (a fragment: no client sends one, and some backends route it
    as part of the path), an empty segment (`//`) or a dot segment (`/./`, `/../`, and `/..;`,
    which Tomcat reads as `/../`). The proxy routes its own reading of the path, but it passes
    the URI on as sent and the backend routes that: aiohttp matches
    `/admin/x%2F..%2F..%2Fpublic%2Fy` to /admin/{name} (it routes with %2F still encoded), ASGI
    servers hand `..` to the app unresolved, and nginx merges slashes where backends do not.
    Decoding such a path into one resource would let a `/public/*` token reach a route the
    backend serves elsewhere (tests/security/test_forward_auth_headers.py, through a real nginx).
    Anything that cannot be a path also denies, so the proxy refuses rather than errs.
    """
    if len(uri) > _MAX_URI:
        raise Forbidden("the original URI is too long")
    path = uri.split("?", 1)[0]
    if not path.startswith("/") and "://" in path:
        # An absolute-form request target (`http://host/path`).
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if _AMBIGUOUS.search(path):
        raise Forbidden(
            "the original URI has an encoded '/', '.', ';' or backslash, a backslash or '#', an "
            "empty or a dot segment: the route it reaches and the resource it names could differ"
        )
    try:
        path = unquote_to_bytes(path).decode("utf-8")
    except UnicodeError:  # an escape that is not UTF-8, or a raw byte (a surrogate from aiohttp)
        raise Forbidden("the original URI is not UTF-8") from None
    if not path.startswith("/") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise Forbidden("the original URI is not an absolute path")
    # No dot or empty segment was let through, nor an encoded one: the decoded path is the
    # resource as it is.
    return path


def _header(request: web.Request, *names: str) -> str | None:
    """The one value the request carries under `names` (alternatives for one fact: nginx's and
    Traefik's), stripped; None if none does.

    Proxies pass the client's own headers on to the auth request, so a header sent twice, or
    under both names with different values, is a client's line next to its proxy's: which one
    the proxy acts on is not ours to guess, so the request is denied (403) rather than decided
    on the client's choice (tests/security/test_forward_auth_headers.py).
    """
    found: str | None = None
    for name in names:
        for raw in request.headers.getall(name, ()):
            value = raw.strip()
            if not value:
                continue
            if found is None:
                found = value
            elif value != found:
                raise Forbidden(f"conflicting {' / '.join(names)} headers")
    return found


def _flag(request: web.Request, name: str) -> bool:
    """A yes/no header; anything but true/false (or 1/0, yes/no) denies rather than guesses.

    Sent more than once (a client's own line ahead of the one its proxy appends), it is true if
    any line says so: the first line alone would let a client switch a requirement off.
    """
    required = False
    for value in request.headers.getall(name, ()):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            required = True
        elif lowered not in ("false", "0", "no", ""):
            raise Forbidden(f"{name} must be true or false")
    return required


def _name(request: web.Request, name: str) -> str | None:
    """A short header naming an operation or audience; an unusable one denies."""
    value = _header(request, name)
    if value is not None and (len(value) > _MAX_NAME or not value.isprintable()):
        raise Forbidden(f"{name} is not a usable name")
    return value
