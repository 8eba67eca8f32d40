"""GET /v1/keys and POST /v1/keys/rotate: root-key metadata and manual rotation, for admins."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from keystore import KeyInfo
from tokensvc.logs import security_event
from tokensvc.web import appkeys
from tokensvc.web.auth import require_admin
from tokensvc.web.handlers.verify import iso
from tokensvc.web.jsonio import json_response


def key_body(info: KeyInfo) -> dict[str, Any]:
    """Metadata only: the key material never leaves the keystore."""
    return {
        "id": info.id,
        "created_at": iso(info.created_at.timestamp()),
        "expires_at": iso(info.expires_at.timestamp()),
        "current": info.current,
    }


async def list_keys(request: web.Request) -> web.Response:
    await require_admin(request, "keys:read")

    infos = await request.app[appkeys.KEYRING].list()

    return json_response({"keys": [key_body(info) for info in infos]})


async def rotate(request: web.Request) -> web.Response:
    caller = await require_admin(request, "keys:rotate")
    keyring = request.app[appkeys.KEYRING]

    key = await keyring.rotate()

    security_event("key_rotated", by=caller.subject, key_id=key.id)
    await request.app[appkeys.AUDIT].record(caller.subject, "key_rotated", key.id)
    infos = await keyring.list()
    info = next(i for i in infos if i.id == key.id)
    return json_response(key_body(info), status=201)
