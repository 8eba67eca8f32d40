"""Who is calling: the bearer token of a request, checked with the same verifier as everything else."""

from __future__ import annotations

import ipaddress
import logging

from aiohttp import web

from tokensvc.errors import Forbidden, Unauthenticated
from tokensvc.logs import security_event
from tokensvc.verification import Verified
from tokensvc.web import appkeys

# The audience of tokensvc's own API: an admin token narrowed to another audience can't call it.
API_AUDIENCE = "tokensvc"


def bearer_token(request: web.Request) -> str:
    """The token from `Authorization: Bearer|Macaroon <token>`."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() not in ("bearer", "macaroon") or not token:
        raise Unauthenticated("missing Authorization: Bearer <token>")
    return token


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


async def require_admin(request: web.Request, operation: str) -> Verified:
    """An admin-capable token whose caveats allow `operation` on this API, held by an admin user."""
    token = bearer_token(request)
    verifier = request.app[appkeys.VERIFIER]
    verified = await verifier.verify(
        token,
        operation=operation,
        resource=request.path,
        audience=API_AUDIENCE,
        client_ip=client_ip(request),
    )
    if not verified.admin:
        _denied(verified, operation, "token is not admin-capable")
        raise Forbidden("this token is not admin-capable")
    user = await request.app[appkeys.USERS].get(verified.subject)
    if user is None or user.name != verified.subject or user.disabled or not user.is_admin:
        _denied(verified, operation, "subject is not an enabled admin")
        raise Forbidden("the token's subject is not an enabled admin user")
    return verified


def _denied(verified: Verified, operation: str, reason: str) -> None:
    security_event(
        "authz_fail",
        level=logging.WARNING,
        user=verified.subject[:64],
        token_id=verified.token_id,
        operation=operation,
        reason=reason,
    )
