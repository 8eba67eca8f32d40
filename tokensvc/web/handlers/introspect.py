"""POST /v1/introspect: RFC 7662 token introspection for authenticated callers.

Introspection answers "is this token live?" — genuine signature, root key still there, not
expired, not revoked — not "does it allow some request?". The token is therefore verified with an
empty context: an `InvalidToken` makes it inactive, while a `CaveatDenied` (a caveat that needs an
operation, resource, audience or client IP the empty context does not name) still leaves it active;
its restrictions are reported as `scope` and `aud` instead. A token with third-party caveats needs
its discharges, which RFC 7662 has no field for, so it is reported inactive (use `/v1/verify`).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import parse_qs

from aiohttp import web

from caveats import (
    Allow,
    Audience,
    CaveatError,
    Context,
    Deny,
    Operations,
    check_predicates,
    parse_predicate,
)
from tokensvc.errors import BadRequest, CaveatDenied, InvalidToken, PayloadTooLarge
from tokensvc.macaroons.identifier import decode_identifier
from tokensvc.web import appkeys
from tokensvc.web.auth import API_AUDIENCE, bearer_token, client_ip
from tokensvc.web.jsonio import json_response, read_body
from tokensvc.web.routes import add_routes

#: The operation a caller's token must allow to introspect other tokens.
INTROSPECT_OPERATION = "tokens:introspect"

_FORM: Final = "application/x-www-form-urlencoded"
_MAX_FIELDS: Final = 32

# RFC 7662 §3: the answer describes a bearer credential, so no cache may keep it.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_INACTIVE: dict[str, Any] = {"active": False}


def setup(app: web.Application) -> None:
    """Register POST /v1/introspect."""
    add_routes(app, [web.post("/v1/introspect", introspect)])


async def introspect(request: web.Request) -> web.Response:
    await _authenticate_caller(request)
    token = await _token_field(request)

    body = await describe(request.app, token)

    return json_response(body, headers=_NO_STORE)


async def _authenticate_caller(request: web.Request) -> None:
    """The caller's own token must allow `tokens:introspect` on this API (401/403 otherwise)."""
    await request.app[appkeys.VERIFIER].verify(
        bearer_token(request),
        operation=INTROSPECT_OPERATION,
        resource=request.path,
        audience=API_AUDIENCE,
        client_ip=client_ip(request),
    )


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


async def describe(app: web.Application, token: str) -> dict[str, Any]:
    """The RFC 7662 answer for `token`: its claims when live, else only `{"active": false}`."""
    verifier = app[appkeys.VERIFIER]
    try:
        await verifier.verify(token)
    except CaveatDenied:
        pass  # live, but restricted to contexts an empty one does not name; see the module doc
    except (InvalidToken, BadRequest, PayloadTooLarge):
        return dict(_INACTIVE)

    # The chain verified, so these caveats are the genuine ones; read the claims from them.
    macaroon = verifier.parse(token)
    predicates = [c.cid for c in macaroon.caveats if c.vid is None]
    now = app[appkeys.CLOCK]().timestamp()
    outcome = check_predicates(predicates, Context(now=now))
    # A passed bakery `time-before` denies rather than invalidates, so expiry is re-checked here.
    if outcome.subject is None or (outcome.expires_at is not None and outcome.expires_at <= now):
        return dict(_INACTIVE)
    body: dict[str, Any] = {
        "active": True,
        "sub": outcome.subject,
        "jti": decode_identifier(macaroon.identifier).token_id_hex,
        "token_type": "macaroon",
        "iss": app[appkeys.CONFIG].location,
    }
    if outcome.expires_at is not None:
        body["exp"] = int(outcome.expires_at)
    operations = _operations(predicates)
    if operations is not None:
        body["scope"] = " ".join(operations)
    audiences = _audiences(predicates)
    if audiences is not None:
        body["aud"] = audiences[0] if len(audiences) == 1 else audiences
    return body


def _operations(predicates: list[bytes]) -> list[str] | None:
    """What every operation restriction allows (typed Operations, bakery allow and deny), or None
    if none lists what is allowed. A token limited by deny conditions alone has no expressible
    scope: none is reported, but /v1/verify still refuses the denied operations."""
    allowed: list[str] | None = None
    denied: set[str] = set()
    deny_all = False
    for item in _decoded(predicates):
        if isinstance(item, Operations | Allow):
            values = item.operations
            allowed = (
                list(dict.fromkeys(values))
                if allowed is None
                else [v for v in allowed if v in values]
            )
        elif isinstance(item, Deny):
            deny_all = deny_all or not item.operations
            denied.update(item.operations)
    if deny_all:
        return []
    if allowed is None:
        return None
    return [v for v in allowed if v not in denied]


def _audiences(predicates: list[bytes]) -> list[str] | None:
    """What every Audience caveat allows (attenuation only narrows), or None if none restricts."""
    allowed: list[str] | None = None
    for item in _decoded(predicates):
        if isinstance(item, Audience):
            values = item.audiences
            allowed = (
                list(dict.fromkeys(values))
                if allowed is None
                else [v for v in allowed if v in values]
            )
    return allowed


def _decoded(predicates: list[bytes]) -> list[object]:
    items: list[object] = []
    for predicate in predicates:
        try:
            items.append(parse_predicate(predicate))
        except CaveatError:
            continue
    return items
