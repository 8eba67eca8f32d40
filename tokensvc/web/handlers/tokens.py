"""POST /v1/tokens: admins mint scoped tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from tokensvc.bakery.thirdparty import parse_third_party
from tokensvc.config import ConfigError, parse_duration
from tokensvc.errors import BadRequest
from tokensvc.logs import security_event
from tokensvc.minting import MintedToken, MintRequest
from tokensvc.web import appkeys
from tokensvc.web.auth import require_admin
from tokensvc.web.handlers.verify import iso
from tokensvc.web.jsonio import (
    json_response,
    optional_str,
    read_json_object,
    reject_unknown,
    str_list,
)

_MINT_FIELDS = frozenset(
    (
        "subject",
        "ttl",
        "operations",
        "resources",
        "audience",
        "cidrs",
        "description",
        "admin",
        "third_party",
    )
)


def parse_ttl(value: Any, default: timedelta) -> timedelta:
    """TTL as whole seconds or a duration string such as `15m` or `1h30m`."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise BadRequest("ttl must be seconds or a duration like 1h")
    if isinstance(value, int):
        return timedelta(seconds=value)
    if isinstance(value, str) and len(value) <= 32:
        try:
            return parse_duration(value)
        except ConfigError:
            pass
    raise BadRequest("ttl must be seconds or a duration like 1h")


def minted_body(minted: MintedToken) -> dict[str, Any]:
    return {
        "token": minted.token,
        "token_id": minted.token_id,
        "subject": minted.subject,
        "key_id": minted.key_id,
        "admin": minted.admin,
        "expires_at": iso(minted.expires_at.timestamp()),
    }


async def mint(request: web.Request) -> web.Response:
    caller = await require_admin(request, "tokens:mint")
    data = await read_json_object(request)
    reject_unknown(data, _MINT_FIELDS)
    admin = data.get("admin", False)
    if not isinstance(admin, bool):
        raise BadRequest("admin must be a boolean")
    config = request.app[appkeys.CONFIG]
    mint_request = MintRequest(
        subject=optional_str(data, "subject", max_len=255) or caller.subject,
        ttl=parse_ttl(data.get("ttl"), config.default_token_ttl),
        operations=str_list(data, "operations"),
        resources=str_list(data, "resources"),
        audiences=str_list(data, "audience", single_ok=True),
        cidrs=str_list(data, "cidrs"),
        admin=admin,
        third_party=parse_third_party(data.get("third_party")),
        description=optional_str(data, "description") or "",
    )

    minted = await request.app[appkeys.MINTER].mint(mint_request)

    security_event(
        "token_minted",
        by=caller.subject,
        subject=minted.subject,
        token_id=minted.token_id,
        admin=minted.admin,
        expires_at=minted_body(minted)["expires_at"],
    )
    return json_response(minted_body(minted), status=201)
