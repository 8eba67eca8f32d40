"""POST /v1/tokens: admins mint scoped tokens; GET /v1/tokens: the registry (never a secret)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from tokensvc.bakery.thirdparty import parse_third_party
from tokensvc.errors import BadRequest
from tokensvc.operations.config import ConfigError, parse_duration
from tokensvc.services.tokens import TokenFilter
from tokensvc.tokens.minting import MintedToken, MintRequest
from tokensvc.tokens.registry import TokenRecord
from tokensvc.web import appkeys
from tokensvc.web.auth import principal
from tokensvc.web.handlers.verify import iso
from tokensvc.web.jsonio import (
    json_response,
    optional_str,
    printable,
    read_json_object,
    reject_unknown,
    str_list,
    whole_number,
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
        "service",
    )
)


def parse_ttl(value: Any) -> timedelta | None:
    """TTL as whole seconds or a duration string such as `15m` or `1h30m`; None if not given."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("ttl must be seconds or a duration like 1h")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 3600.0 is the integer 3600 in JSON (and in openapi.yaml's schema)
    if isinstance(value, int) and abs(value) < 2**31:  # larger cannot be a timedelta: a 400
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
        "mfa": minted.mfa,
        "expires_at": iso(minted.expires_at.timestamp()),
        "kind": minted.kind,
    }


async def mint(request: web.Request) -> web.Response:
    who = principal(request)
    data = await read_json_object(request)
    reject_unknown(data, _MINT_FIELDS)
    admin = data.get("admin", False)
    if not isinstance(admin, bool):
        raise BadRequest("admin must be a boolean")
    service = data.get("service", False)
    if not isinstance(service, bool):
        raise BadRequest("service must be a boolean")
    asked = MintRequest(
        subject=optional_str(data, "subject", max_len=255) or "",  # "": the minting token's
        ttl=parse_ttl(data.get("ttl")),
        operations=str_list(data, "operations"),
        resources=str_list(data, "resources"),
        audiences=str_list(data, "audience", single_ok=True),
        cidrs=str_list(data, "cidrs"),
        admin=admin,
        third_party=parse_third_party(data.get("third_party")),
        description=optional_str(data, "description") or "",
        service=service,
    )

    minted = await request.app[appkeys.SERVICES].tokens.mint(who, asked)

    return json_response(minted_body(minted), status=201)


def record_body(record: TokenRecord, *, now: datetime) -> dict[str, Any]:
    """Registry metadata, as TokenRecord.public shows it (the API and the CLI alike)."""
    return record.public(now=now)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise BadRequest(f"{name} must be true or false")
    return value in ("true", "1")


async def list_tokens(request: web.Request) -> web.Response:
    """GET /v1/tokens?subject=&include_revoked=&include_expired=&limit=&after="""
    who = principal(request)
    limit = whole_number(request, "limit", 100)
    query = TokenFilter(
        subject=printable(request.query.get("subject"), "subject"),
        include_revoked=_flag(request, "include_revoked"),
        include_expired=_flag(request, "include_expired"),
        after=printable(request.query.get("after"), "after", max_len=64),
        limit=limit,
    )

    records = await request.app[appkeys.SERVICES].tokens.list(who, query)

    now = datetime.now(UTC)
    body: dict[str, Any] = {"tokens": [record_body(r, now=now) for r in records]}
    body["next_after"] = records[-1].token_id if len(records) == limit else None
    return json_response(body)
