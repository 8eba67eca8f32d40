"""/v1/users: user administration, and /v1/users/{name}/lockout: inspect and clear a lockout."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tokensvc import metrics
from tokensvc.errors import BadRequest, NotFound
from tokensvc.logs import security_event
from tokensvc.users import User, canonical_name
from tokensvc.web import appkeys
from tokensvc.web.auth import require_admin
from tokensvc.web.handlers.verify import iso
from tokensvc.web.jsonio import json_response, read_json_object, reject_unknown, str_list

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


def _disabled(data: dict[str, Any]) -> bool:
    value = data.get("disabled", False)
    if not isinstance(value, bool):
        raise BadRequest("disabled must be a boolean")
    return value


async def _existing(request: web.Request) -> User:
    name = request.match_info["name"]
    user = await request.app[appkeys.USERS].get(name)
    if user is None:
        raise NotFound("no such user")
    return user


async def create_user(request: web.Request) -> web.Response:
    caller = await require_admin(request, "users:write")
    data = await read_json_object(request)
    reject_unknown(data, _CREATE)
    name = data.get("name")
    if not isinstance(name, str):
        raise BadRequest("name must be a string")
    canonical_name(name)  # validate before paying for a hash
    password_hash = await request.app[appkeys.HASHER].hash(_password(data))

    user = await request.app[appkeys.USERS].create(
        name, password_hash=password_hash, roles=str_list(data, "roles"), disabled=_disabled(data)
    )

    security_event("user_created", by=caller.subject, user=user.name, roles=list(user.roles))
    await request.app[appkeys.AUDIT].record(
        caller.subject, "user_created", user.name, roles=list(user.roles), disabled=user.disabled
    )
    return json_response(user_body(user), status=201)


async def list_users(request: web.Request) -> web.Response:
    await require_admin(request, "users:read")
    after = canonical_name(request.query["after"]) if "after" in request.query else None
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    if not 1 <= limit <= 1000:
        raise BadRequest("limit must be between 1 and 1000")

    users = await request.app[appkeys.USERS].list(after=after, limit=limit)

    return json_response({"users": [user_body(u) for u in users]})


async def get_user(request: web.Request) -> web.Response:
    await require_admin(request, "users:read")
    return json_response(user_body(await _existing(request)))


async def patch_user(request: web.Request) -> web.Response:
    caller = await require_admin(request, "users:write")
    data = await read_json_object(request)
    reject_unknown(data, _PATCH)
    if not data:
        raise BadRequest("nothing to change")
    user = await _existing(request)
    users = request.app[appkeys.USERS]
    # Validate everything before writing anything, so a bad field changes nothing.
    roles = str_list(data, "roles") if "roles" in data else None
    disabled = _disabled(data) if "disabled" in data else None
    new_hash = (
        await request.app[appkeys.HASHER].hash(_password(data)) if "password" in data else None
    )

    if new_hash is not None:
        user = await users.set_password(user.name, new_hash)
    if roles is not None:
        user = await users.set_roles(user.name, roles)
    if disabled is not None:
        user = await users.set_disabled(user.name, disabled)

    # This process sees the new generation at once; other replicas within the cache TTL.
    request.app[appkeys.GENERATIONS].remember(user.name, user.generation)
    # Other replicas hear it at once over Redis (else within their generations poll).
    await request.app[appkeys.REVOCATIONS].publish_generation(user.name, user.generation)
    security_event("user_updated", by=caller.subject, user=user.name, changed=sorted(data))
    await request.app[appkeys.AUDIT].record(
        caller.subject, "user_updated", user.name, changed=sorted(data)
    )
    return json_response(user_body(user))


async def delete_user(request: web.Request) -> web.Response:
    caller = await require_admin(request, "users:write")
    user = await _existing(request)

    # Revoke first: if the delete then fails, the user's tokens are dead but nothing is lost.
    generation = await request.app[appkeys.GENERATIONS].revoke_all(user.name)
    await request.app[appkeys.REVOCATIONS].publish_generation(user.name, generation)
    await request.app[appkeys.USERS].delete(user.name)

    security_event("user_deleted", by=caller.subject, user=user.name)
    await request.app[appkeys.AUDIT].record(caller.subject, "user_deleted", user.name)
    return web.Response(status=204)


async def get_lockout(request: web.Request) -> web.Response:
    await require_admin(request, "users:read")
    name = request.match_info["name"]
    now = request.app[appkeys.CLOCK]().timestamp()

    status = await request.app[appkeys.LOCKOUT].status(name, now)

    return json_response(
        {
            "name": name[:64],
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
    caller = await require_admin(request, "users:write")

    await request.app[appkeys.LOCKOUT].clear(request.match_info["name"])

    metrics.LOCKOUT_CLEARS.inc()
    security_event("authn_lockout_cleared", by=caller.subject, user=request.match_info["name"][:64])
    return web.Response(status=204)
