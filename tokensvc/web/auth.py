"""Who is calling: the bearer token of a request and its client address, as the services' principal.

Authorisation itself is the services' (tokensvc.services.authorization): a handler only says who
asks, with `principal(request)`.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Final

from aiohttp import web
from multidict import MultiMapping

from tokensvc.errors import Unauthenticated
from tokensvc.services.authorization import API_AUDIENCE
from tokensvc.services.principals import BearerToken
from tokensvc.web import appkeys

__all__ = ["API_AUDIENCE", "bearer_token", "client_address", "client_ip", "principal"]

FORWARDED_FOR: Final = "X-Forwarded-For"

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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
    """The client's address: the peer's, or behind a trusted proxy the one it forwarded."""
    trusted = request.app[appkeys.TRUSTED_PROXIES]
    if not trusted:
        return request.remote
    return client_address(request.remote, joined_forwarded_for(request.headers), trusted)


def joined_forwarded_for(headers: MultiMapping[str]) -> str:
    """Every X-Forwarded-For line of a request, joined as one list (RFC 9110 §5.3).

    A proxy may append its own line rather than extend the client's (HAProxy's `option
    forwardfor` does): reading only the first line would let the client choose its address.
    """
    lines = headers.getall(FORWARDED_FOR, ())
    return lines[0] if len(lines) == 1 else ", ".join(lines)


def client_address(peer: str | None, forwarded_for: str, trusted: Networks) -> str | None:
    """The client behind `peer`, given its X-Forwarded-For list and the trusted proxies.

    The peer is the client unless it is a trusted proxy; then the list is walked from the right
    (the hop the nearest proxy added) and the first untrusted hop is the client, so whatever a
    client writes into the header itself lies to the left of a hop it cannot choose. Addresses
    come back in one canonical form (IPv4-mapped IPv6 as IPv4, IPv6 compressed, no port), so
    one client cannot count as several. A hop that is not an address ends the walk: the client
    is then the last address walked, as nginx's realip module decides.
    """
    if not trusted or peer is None:
        return peer
    client = _address(peer)
    if client is None or not _in_any(client, trusted):
        return peer
    if not forwarded_for:
        return _canonical(client)
    for hop in reversed(forwarded_for.split(",")):
        address = _address(hop)
        if address is None:
            if not hop.strip():
                continue  # an empty element (`a,,b`), which RFC 9110's list syntax allows
            break
        client = address
        if not _in_any(address, trusted):
            break
    return _canonical(client)


@functools.lru_cache(maxsize=4096)
def _canonical(address: Address) -> str:
    return str(address)


# Both are pure functions of short strings that repeat (the peers, the proxies' own hops), and
# client_address runs on every request behind a trusted proxy, /v1/verify's included: cached.
@functools.lru_cache(maxsize=4096)
def _address(text: str) -> Address | None:
    """An address as proxies write it in X-Forwarded-For: bare, `v4:port`, `[v6]` or `[v6]:port`."""
    text = text.strip()
    if text.startswith("["):
        text, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def _in_any(address: Address, networks: Networks) -> bool:
    return any(address in network for network in networks)
