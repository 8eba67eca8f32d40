"""POST /v1/login: HTTP Basic or a JSON body → a token for the user.

Three shapes: a password (Basic or `username`/`password`), which answers a token or a 401 with
an MFA challenge; a `challenge` with an `otp` (the second step, no password); or a password with
an `otp` in one call (scripts). The rules are tokensvc.services.login's.
"""

from __future__ import annotations

from base64 import b64decode
from typing import Any

import orjson
from aiohttp import web

from tokensvc.errors import BadRequest, Unauthenticated
from tokensvc.services.login import LoginRequest
from tokensvc.web import appkeys
from tokensvc.web.auth import client_ip
from tokensvc.web.handlers.tokens import minted_body, parse_ttl
from tokensvc.web.jsonio import json_response, optional_str, read_body, reject_unknown, str_list

_FIELDS = frozenset(
    (
        "username",
        "password",
        "otp",
        "challenge",
        "ttl",
        "operations",
        "resources",
        "audience",
        "cidrs",
    )
)


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, non-ASCII input and UnicodeDecodeError alike
        raise Unauthenticated("malformed Basic credentials") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthenticated("malformed Basic credentials")
    return username, password


async def login(request: web.Request) -> web.Response:
    body = await read_body(request)
    data = {}
    if body:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        reject_unknown(data, _FIELDS)
    # Empty counts as absent, as null does.
    otp = optional_str(data, "otp", max_len=64) or None
    challenge = optional_str(data, "challenge", max_len=1024) or None
    if challenge is not None:
        # A second step carries the code and nothing else: anything else gets no token (401,
        # as any failed second step), never a guess at which step was meant.
        if otp is None or data.get("username") is not None or data.get("password") is not None:
            raise Unauthenticated("a challenge is answered with an otp and no credentials")
        return await _login(request, data, username="", password="", otp=otp, challenge=challenge)
    credentials = _basic(request.headers.get("Authorization", ""))
    if credentials is None:
        username = optional_str(data, "username", max_len=256)
        password = optional_str(data, "password", max_len=4096)
        if username is None or password is None:
            raise Unauthenticated("send HTTP Basic credentials or username and password")
        credentials = (username, password)
    elif data.get("username") is not None or data.get("password") is not None:
        raise BadRequest("credentials in both the Authorization header and the body")
    username, password = credentials
    if not username or len(username) > 256:
        raise Unauthenticated("invalid username or password")
    return await _login(
        request, data, username=username, password=password, otp=otp, challenge=None
    )


async def _login(
    request: web.Request,
    data: dict[str, Any],
    *,
    username: str,
    password: str,
    otp: str | None,
    challenge: str | None,
) -> web.Response:
    peer = client_ip(request) or "unknown"

    minted = await request.app[appkeys.SERVICES].login.login(
        LoginRequest(
            username=username,
            password=password,
            client_ip=peer,
            ttl=parse_ttl(data.get("ttl")),
            operations=str_list(data, "operations"),
            resources=str_list(data, "resources"),
            audiences=str_list(data, "audience", single_ok=True),
            cidrs=str_list(data, "cidrs"),
            otp=otp,
            challenge=challenge,
        )
    )

    return json_response(minted_body(minted))
