"""Who is calling: the bearer token of a request and its client address, as the services' principal.

Authorisation itself is the services' (tokensvc.services.authorization): a handler only says who
asks, with `principal(request)`.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from tokensvc.errors import Unauthenticated
from tokensvc.services.authorization import API_AUDIENCE
from tokensvc.services.principals import BearerToken
from tokensvc.web import appkeys

__all__ = ["API_AUDIENCE", "bearer_token", "client_address", "client_ip", "principal"]


def bearer_token(request: web.Request) -> str:
    """The token from `Authorization: Bearer|Macaroon <token>`."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() not in ("bearer", "macaroon") or not token:
        raise Unauthenticated("missing Authorization: Bearer <token>")
    return token


def principal(request: web.Request) -> BearerToken:
    """The request's bearer token, client address and path: who asks, for the services."""
    return BearerToken(bearer_token(request), client_ip(request), request.path)


def client_ip(request: web.Request) -> str | None:
    """The peer address; X-Forwarded-For is believed only when the peer is a trusted proxy."""
    return client_address(
        request.remote,
        request.headers.get("X-Forwarded-For", ""),
        request.app[appkeys.TRUSTED_PROXIES],
    )


def client_address(
    peer: str | None,
    forwarded_for: str,
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> str | None:
    """The client behind `peer`, given its X-Forwarded-For header and the trusted proxies.

    Walking X-Forwarded-For from the right and stopping at the first untrusted hop means a client
    cannot choose its own address by sending the header itself.
    """
    if not trusted or peer is None or not _in_any(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_any(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _in_any(
    address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
