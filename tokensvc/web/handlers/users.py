"""/v1/users: user administration, and /v1/users/{name}/lockout: inspect and clear a lockout."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tokensvc.accounts.users import MAX_ROLES, User
from tokensvc.errors import BadRequest
from tokensvc.services.users import NewUser, UserChange
from tokensvc.web import appkeys
from tokensvc.web.auth import principal
from tokensvc.web.handlers.verify import iso
from tokensvc.web.jsonio import (
    json_response,
    read_json_object,
    reject_unknown,
    str_list,
    whole_number,
)

_CREATE = frozenset(("name", "password", "roles", "disabled"))
_PATCH = frozenset(("password", "roles", "disabled"))


def user_body(user: User) -> dict[str, Any]:
    """Never the password hash."""
    return {
        "name": user.name,
        "roles": list(user.roles),
        "disabled": user.disabled,
        "created_at": iso(user.created_at.timestamp()),
        "updated_at": iso(user.updated_at.timestamp()),
    }


def _password(data: dict[str, Any]) -> str:
    value = data.get("password")
    if not isinstance(value, str):
        raise BadRequest("password must be a string")
    return value


def _roles(data: dict[str, Any]) -> tuple[str, ...]:
    # At most MAX_ROLES entries, repeated or not, as openapi.yaml's maxItems says.
    return str_list(data, "roles", max_items=MAX_ROLES)


def _disabled(data: dict[str, Any]) -> bool:
    value = data.get("disabled", False)
    if not isinstance(value, bool):
        raise BadRequest("disabled must be a boolean")
    return value


async def create_user(request: web.Request) -> web.Response:
    who = principal(request)
    data = await read_json_object(request)
    reject_unknown(data, _CREATE)
    name = data.get("name")
    if not isinstance(name, str):
        raise BadRequest("name must be a string")
    new = NewUser(
        name=name,
        password=_password(data),
        roles=_roles(data),
        disabled=_disabled(data),
    )

    user = await request.app[appkeys.SERVICES].users.create(who, new)

    return json_response(user_body(user), status=201)


async def list_users(request: web.Request) -> web.Response:
    who = principal(request)
    limit = whole_number(request, "limit", 100)

    users = await request.app[appkeys.SERVICES].users.list(
        who, after=request.query.get("after"), limit=limit
    )

    return json_response({"users": [user_body(u) for u in users]})


async def get_user(request: web.Request) -> web.Response:
    who = principal(request)

    user = await request.app[appkeys.SERVICES].users.get(who, request.match_info["name"])

    return json_response(user_body(user))


async def patch_user(request: web.Request) -> web.Response:
    who = principal(request)
    data = await read_json_object(request)
    reject_unknown(data, _PATCH)
    change = UserChange(
        password=_password(data) if "password" in data else None,
        roles=_roles(data) if "roles" in data else None,
        disabled=_disabled(data) if "disabled" in data else None,
    )

    user = await request.app[appkeys.SERVICES].users.update(who, request.match_info["name"], change)

    return json_response(user_body(user))


async def delete_user(request: web.Request) -> web.Response:
    who = principal(request)

    await request.app[appkeys.SERVICES].users.delete(who, request.match_info["name"])

    return web.Response(status=204)


async def get_lockout(request: web.Request) -> web.Response:
    who = principal(request)
    name = request.match_info["name"]

    status = await request.app[appkeys.SERVICES].lockouts.status(who, name)

    return json_response(
        {
            "name": status.identity[:64],  # what the counters are kept under, not the spelling
            "locked": status.locked,
            "failures": status.failures,
            "locked_until": iso(status.locked_until),
            "trusted_ips": status.trusted_ips,
            "counters": [
                {"scope": c.scope, "failures": c.failures, "locked_until": iso(c.locked_until)}
                for c in status.counters
            ],
        }
    )


async def clear_lockout(request: web.Request) -> web.Response:
    who = principal(request)

    await request.app[appkeys.SERVICES].lockouts.clear(who, request.match_info["name"])

    return web.Response(status=204)
