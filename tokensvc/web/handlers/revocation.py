"""Revocation: one token by id, by presenting it, all of a subject's, and a whole root key."""

from __future__ import annotations

from aiohttp import web

from tokensvc.errors import (
    BadRequest,
    ClientDisconnected,
    TokensvcError,
    Unavailable,
    UnsupportedEncoding,
)
from tokensvc.web import appkeys
from tokensvc.web.auth import principal
from tokensvc.web.jsonio import json_response, read_json_object


async def revoke_by_id(request: web.Request) -> web.Response:
    """DELETE /v1/tokens/{id}: an admin, or the owner of the token (same subject)."""
    who = principal(request)

    await request.app[appkeys.SERVICES].tokens.revoke(who, request.match_info["id"])

    return web.Response(status=204)


async def revoke_presented(request: web.Request) -> web.Response:
    """POST /v1/tokens/revoke {"token"}: whoever holds a token may burn it; 204 whatever comes.

    Also the leak-report path: a scanner that found a token posts it here. Only a genuine token
    (our signature; expiry and caveats do not matter) is revoked; anything else changes nothing,
    and the answer never says which it was.
    """
    try:
        data = await read_json_object(request)
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise BadRequest("token must be a non-empty string")
    except TokensvcError as exc:  # bad JSON, too large: still nothing to tell
        # Not about the token, so they tell nothing: a body we cannot even read (415), a client
        # that left (499, logged as such), a dependency down (503).
        if isinstance(exc, (Unavailable, UnsupportedEncoding, ClientDisconnected)):
            raise
        return web.Response(status=204)

    await request.app[appkeys.SERVICES].tokens.revoke_presented(token)

    return web.Response(status=204)


async def revoke_all(request: web.Request) -> web.Response:
    """POST /v1/subjects/{subject}/revoke-all: every token of the subject issued until now dies."""
    who = principal(request)
    subject = request.match_info["subject"]

    generation = await request.app[appkeys.SERVICES].tokens.revoke_all(who, subject)

    return json_response({"subject": subject, "generation": generation})


async def revoke_key(request: web.Request) -> web.Response:
    """POST /v1/keys/{id}/revoke: delete a root key; every token signed with it dies."""
    who = principal(request)

    await request.app[appkeys.SERVICES].keys.revoke(who, request.match_info["id"])

    return web.Response(status=204)
