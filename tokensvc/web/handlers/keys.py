"""GET /v1/keys and POST /v1/keys/rotate: root-key metadata and manual rotation, for admins;
GET /v1/kek and POST /v1/kek/reseal: key-encryption key status and re-seal."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from keystore import KeyInfo
from tokensvc.web import appkeys
from tokensvc.web.auth import principal
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
    who = principal(request)

    infos = await request.app[appkeys.SERVICES].keys.list(who)

    return json_response({"keys": [key_body(info) for info in infos]})


async def rotate(request: web.Request) -> web.Response:
    who = principal(request)

    info = await request.app[appkeys.SERVICES].keys.rotate(who)

    return json_response(key_body(info), status=201)


async def kek_status(request: web.Request) -> web.Response:
    who = principal(request)

    usage = await request.app[appkeys.SERVICES].keys.kek_status(who)

    return json_response(usage.as_dict())


async def reseal(request: web.Request) -> web.Response:
    who = principal(request)

    result = await request.app[appkeys.SERVICES].keys.reseal(who)

    return json_response(result.as_dict())
