"""From an HTTP request to the context a token is checked against, the way tokensvc's
forward-auth (GET /v1/auth, docs/forward-auth.md) builds it, so a token minted for a proxied
service means the same behind this middleware:

- operation: `read` for GET, HEAD, OPTIONS; `write` for anything else (unless a route says);
- resource: the path, percent-decoded, a trailing slash kept (tokensvc.web.handlers.forwardauth
  .resource_of, held to it by a test); a path with an encoded `/`, `.`, `;` or backslash, a
  backslash or `#`, an empty segment or a dot segment (`..;` included) is refused (403): the
  app's router may read it otherwise than the resource checked;
- token: `Authorization: Bearer <token>` or `Authorization: Macaroon <token>`; discharges, if any,
  in `X-Macaroon-Discharges` (comma-separated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from tokensvc_client.errors import BadRequest, CaveatDenied, InvalidToken

READ_METHODS: Final = frozenset(("GET", "HEAD", "OPTIONS"))
DISCHARGES_HEADER: Final = "X-Macaroon-Discharges"
_MAX_URI: Final = 2048
# The most discharges any tokensvc accepts (TOKENSVC_MAX_DISCHARGES is at most 1024): fewer, and
# the server's own limit decides (its 400 comes back as BadRequest), so a client never refuses
# what the server it asks would allow.
_MAX_DISCHARGES: Final = 1024
# Paths the app's router and a decoding rule can read differently, so the resource checked might
# not be the route served: aiohttp routes on the path with %2F still encoded (so
# `/admin/x%2F..%2F..%2Fdocs%2Fy` reaches /admin/{name} while decoding names /docs/y), and ASGI
# servers hand `..` and empty segments to the app unresolved. Refused, as forward-auth refuses them.
_AMBIGUOUS: Final = re.compile(r"%(?:2f|2e|5c|3b)|[\\#]|//|/\.\.?(?:[/;]|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a route needs: a fixed operation/resource, or None for the forward-auth mapping;
    `mfa`: only a token minted after a second factor (`check(..., require_mfa=True)`)."""

    operation: str | None = None
    resource: str | None = None
    public: bool = False
    mfa: bool = False


DEFAULT: Final = Requirement()
PUBLIC: Final = Requirement(public=True)


def operation_for(method: str) -> str:
    """`read` for GET, HEAD and OPTIONS; `write` for every other method, known or not."""
    return "read" if method.strip().upper() in READ_METHODS else "write"


def resource_of(path: str) -> str:
    """The resource a request path names (forward-auth's rule); CaveatDenied if it cannot name
    one, or could name another than the route it reaches."""
    if len(path) > _MAX_URI:
        raise CaveatDenied("the request URI is too long")
    # The common case, already normal: nothing to decode, no dot segment, no empty segment, no
    # query, no control character. The full rule below returns such a path unchanged.
    if (
        path[:1] == "/"
        and path.isprintable()
        and "%" not in path
        and "/." not in path
        and "//" not in path
        and "\\" not in path
        and "?" not in path
        and "#" not in path
    ):
        return path
    path = path.split("?", 1)[0]
    if not path.startswith("/") and "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if _AMBIGUOUS.search(path):
        raise CaveatDenied(
            "the request path has an encoded '/', '.', ';' or backslash, a backslash or '#', an "
            "empty or a dot segment: the route it reaches and the resource it names could differ"
        )
    try:
        path = unquote_to_bytes(path).decode("utf-8")
    except UnicodeError:  # an escape that is not UTF-8, or a raw byte (a surrogate from aiohttp)
        raise CaveatDenied("the request URI is not UTF-8") from None
    if not path.startswith("/") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise CaveatDenied("the request URI is not an absolute path")
    # No dot or empty segment was let through, nor an encoded one: the decoded path is the
    # resource as it is.
    return path


def token_from(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer|Macaroon <token>` header; InvalidToken if none."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() not in ("bearer", "macaroon") or not token:
        raise InvalidToken("missing Authorization: Bearer <token>")
    return token


def discharges_from(header: str | None) -> tuple[str, ...]:
    """The discharge tokens of an `X-Macaroon-Discharges` header (comma-separated)."""
    if not header:
        return ()
    discharges = tuple(d.strip() for d in header.split(",") if d.strip())
    if len(discharges) > _MAX_DISCHARGES:
        # 400, as /v1/verify answers too many discharges (red team, helper-57: this said 401).
        raise BadRequest(f"at most {_MAX_DISCHARGES} discharges")
    return discharges
