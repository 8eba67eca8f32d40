"""Revocation: one token by id, by presenting it, all of a subject's, and a whole root key."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiohttp import web

from tokensvc.errors import (
    BadRequest,
    ClientDisconnected,
    Forbidden,
    NotFound,
    TokensvcError,
    UnsupportedEncoding,
)
from tokensvc.logs import security_event
from tokensvc.registry import TokenRecord
from tokensvc.web import appkeys
from tokensvc.web.auth import API_AUDIENCE, bearer_token, client_ip, require_admin
from tokensvc.web.jsonio import json_response, printable, read_json_object

log = logging.getLogger("tokensvc.web")


async def _audit_revoked(request: web.Request, *, by: str, record: TokenRecord, via: str) -> None:
    security_event(
        "token_revoked", by=by[:64], subject=record.subject, token_id=record.token_id, via=via
    )
    await request.app[appkeys.AUDIT].record(
        by, "token_revoked", record.token_id, subject=record.subject, via=via
    )


async def revoke_by_id(request: web.Request) -> web.Response:
    """DELETE /v1/tokens/{id}: an admin, or the owner of the token (same subject)."""
    token_id = request.match_info["id"]
    registry = request.app[appkeys.REGISTRY]
    try:
        caller = await require_admin(request, "tokens:revoke")
        is_admin = True
    except Forbidden:
        # Not an admin: a genuine token of the same subject may revoke its own tokens.
        caller = await request.app[appkeys.VERIFIER].verify(
            bearer_token(request),
            operation="tokens:revoke",
            resource=request.path,
            audience=API_AUDIENCE,
            client_ip=client_ip(request),
        )
        is_admin = False
    # Token ids are hex; anything else cannot name a row (and NUL would upset PostgreSQL).
    record = await registry.get(token_id) if len(token_id) <= 64 and token_id.isalnum() else None
    if record is None or (not is_admin and record.subject != caller.subject):
        # Same answer for "no such token" and "not yours": ids of others' tokens stay unknown.
        raise NotFound("no such token")

    revoked = await request.app[appkeys.REVOCATIONS].revoke_token(token_id)

    assert revoked is not None
    if record.revoked_at is None:
        await _audit_revoked(request, by=caller.subject, record=revoked, via="id")
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
        token_id, subject, key_id, key_expires = await request.app[appkeys.VERIFIER].authenticate(
            token
        )
    except TokensvcError as exc:  # bad JSON, not a token, forged, unknown key, too large
        # Not about the token, so they tell nothing: a body we cannot even read (415), a client
        # that left (499, logged as such), a dependency down (503).
        if exc.status == 503 or isinstance(exc, (UnsupportedEncoding, ClientDisconnected)):
            raise
        return web.Response(status=204)
    now = datetime.now(UTC)
    revocations = request.app[appkeys.REVOCATIONS]
    if token_id in revocations.tokens:
        return web.Response(status=204)
    # A genuine token minted before the registry existed gets a row now, so it can be denied.
    register = TokenRecord(
        token_id=token_id,
        subject=subject,
        created_by=subject,
        created_at=now,
        expires_at=datetime.fromtimestamp(key_expires, UTC),
        description="(registered when revoked)",
        kind="service" if key_id.startswith("t-") else "rotating",
    )

    record = await revocations.revoke_token(token_id, register=register)

    if record is not None:
        await _audit_revoked(request, by=subject, record=record, via="presented")
    return web.Response(status=204)


async def revoke_all(request: web.Request) -> web.Response:
    """POST /v1/subjects/{subject}/revoke-all: every token of the subject issued until now dies."""
    caller = await require_admin(request, "tokens:revoke")
    subject = printable(request.match_info["subject"], "subject") or ""
    if not subject:
        raise BadRequest("subject must be 1-255 printable characters")

    generation = await request.app[appkeys.GENERATIONS].revoke_all(subject)
    await request.app[appkeys.REVOCATIONS].publish_generation(subject, generation)

    security_event(
        "tokens_revoked_all", by=caller.subject, subject=subject[:64], generation=generation
    )
    await request.app[appkeys.AUDIT].record(
        caller.subject, "tokens_revoked_all", subject, generation=generation
    )
    return json_response({"subject": subject, "generation": generation})


async def revoke_key(request: web.Request) -> web.Response:
    """POST /v1/keys/{id}/revoke: delete a root key; every token signed with it dies."""
    caller = await require_admin(request, "keys:revoke")
    key_id = request.match_info["id"]
    keyring = request.app[appkeys.KEYRING]
    revocations = request.app[appkeys.REVOCATIONS]
    if len(key_id) > 64 or await keyring.get(key_id) is None:
        raise NotFound("no such live root key")

    # The durable record first: were the delete to fail after it, replicas still drop the key.
    await revocations.record_key(key_id, by=caller.subject)
    await keyring.revoke(key_id)
    revocations.note_key(key_id)
    await revocations.publish_key(key_id)

    security_event("key_revoked", by=caller.subject, key_id=key_id)
    await request.app[appkeys.AUDIT].record(caller.subject, "key_revoked", key_id)
    return web.Response(status=204)
