"""/v1/mfa: a user's own second factor (status, enrol, activate, disable, recovery codes), and
/v1/users/{name}/mfa: an admin reads or resets a user's. The rules are tokensvc.services.mfa's."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tokensvc.errors import BadRequest
from tokensvc.services.mfa import MfaStatus
from tokensvc.web import appkeys
from tokensvc.web.auth import client_ip, principal
from tokensvc.web.jsonio import json_response, optional_str, read_json_object, reject_unknown

_OTP = frozenset(("otp",))
_PASSWORD = frozenset(("password",))


def status_body(status: MfaStatus) -> dict[str, Any]:
    return {
        "user": status.user,
        "enrolled": status.enrolled,
        "pending": status.pending,
        "recovery_codes_remaining": status.recovery_codes,
        "required": status.required,
    }


async def _otp(request: web.Request) -> str:
    data = await read_json_object(request)
    reject_unknown(data, _OTP)
    otp = optional_str(data, "otp", max_len=64)
    if not otp:
        raise BadRequest("otp (a current code or a recovery code) is required")
    return otp


def _peer(request: web.Request) -> str:
    return client_ip(request) or "unknown"


async def get_status(request: web.Request) -> web.Response:
    who = principal(request)

    status = await request.app[appkeys.SERVICES].mfa.status(who)

    return json_response(status_body(status))


async def _password(request: web.Request) -> str:
    data = await read_json_object(request)
    reject_unknown(data, _PASSWORD)
    password = optional_str(data, "password", max_len=4096)
    if not password:
        raise BadRequest("password (your current password) is required")
    return password


async def enroll(request: web.Request) -> web.Response:
    who = principal(request)
    password = await _password(request)

    started = await request.app[appkeys.SERVICES].mfa.enroll(
        who, password=password, client_ip=_peer(request)
    )

    return json_response({"user": started.user, "uri": started.uri, "secret": started.secret})


async def activate(request: web.Request) -> web.Response:
    who = principal(request)
    otp = await _otp(request)

    codes = await request.app[appkeys.SERVICES].mfa.activate(who, otp=otp, client_ip=_peer(request))

    return json_response({"enrolled": True, "recovery_codes": codes})


async def disable(request: web.Request) -> web.Response:
    who = principal(request)
    otp = await _otp(request)

    await request.app[appkeys.SERVICES].mfa.disable(who, otp=otp, client_ip=_peer(request))

    return web.Response(status=204)


async def recovery_codes(request: web.Request) -> web.Response:
    who = principal(request)
    otp = await _otp(request)

    codes = await request.app[appkeys.SERVICES].mfa.regenerate_recovery_codes(
        who, otp=otp, client_ip=_peer(request)
    )

    return json_response({"recovery_codes": codes})


async def get_user_status(request: web.Request) -> web.Response:
    who = principal(request)

    status = await request.app[appkeys.SERVICES].mfa.status_of(who, request.match_info["name"])

    return json_response(status_body(status))


async def reset(request: web.Request) -> web.Response:
    who = principal(request)

    had = await request.app[appkeys.SERVICES].mfa.reset(who, request.match_info["name"])

    return json_response({"reset": had})
