"""POST /v1/introspect: RFC 7662 token introspection (tokensvc.services.introspection)."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs

from aiohttp import web

from tokensvc.errors import BadRequest
from tokensvc.web import appkeys
from tokensvc.web.auth import principal
from tokensvc.web.jsonio import json_response, read_body
from tokensvc.web.routes import add_routes

_FORM: Final = "application/x-www-form-urlencoded"
_MAX_FIELDS: Final = 32

# RFC 7662 §3: the answer describes a bearer credential, so no cache may keep it.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def setup(app: web.Application) -> None:
    """Register POST /v1/introspect."""
    add_routes(app, [web.post("/v1/introspect", introspect)])


async def introspect(request: web.Request) -> web.Response:
    who = principal(request)
    token = await _token_field(request)

    body = await request.app[appkeys.SERVICES].introspection.introspect(who, token)

    return json_response(body, headers=_NO_STORE)


async def _token_field(request: web.Request) -> str:
    """The form field `token` (RFC 7662 §2.1); `token_type_hint` is accepted and ignored.

    The body is read by jsonio.read_body like every other (its encoding and size rules), then
    parsed here: RFC 7662 asks for application/x-www-form-urlencoded, and any other body
    finds no `token` field.
    """
    body = await read_body(request)
    form: dict[str, list[str]] = {}
    if request.content_type in (_FORM, ""):
        try:
            form = parse_qs(
                body.rstrip().decode("utf-8"), keep_blank_values=True, max_num_fields=_MAX_FIELDS
            )
        except ValueError:  # not UTF-8 (UnicodeDecodeError), or too many fields
            raise BadRequest(f"the body must be {_FORM} in UTF-8") from None
    tokens = form.get("token")
    if not tokens or not tokens[0]:
        raise BadRequest("the form field token is required")
    return tokens[0]
