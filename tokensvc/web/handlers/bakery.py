"""The macaroon-bakery discharger under a prefix (default /bakery), as httpbakery clients call it.

- `GET {prefix}/discharge/info` → `{"PublicKey": <standard base64>, "Version": 3}`
- `GET {prefix}/publickey` → `{"PublicKey": …}` (what version 1 clients ask for)
- `POST {prefix}/discharge` with form fields `id` (raw, may hold NUL bytes) or `id64`, and
  `caveat64` for a version 3 caveat's payload, in the body or the query string
  → `{"Macaroon": …}` in the JSON shape of the caveat's bakery version.

Errors are the bakery's `{"Code", "Message"}` (not tokensvc's `{"error": …}`): that is what the
bakery client reads, and a refusal reaches its user as a `DischargeError` with our message.
Responses are `application/json` exactly, since the Python client ignores anything else.

Callers prove who they are, when a condition asks, with HTTP Basic (through the login service,
lockout included), `Authorization: Bearer|Macaroon <tokensvc token>`, or a `tokensvc-token`
cookie — the one way an unmodified `httpbakery.Client` can carry a credential (its cookie jar).
"""

from __future__ import annotations

import binascii
import dataclasses
import logging
from base64 import b64decode
from datetime import timedelta
from typing import Final
from urllib.parse import unquote_to_bytes

from aiohttp import web

from tokensvc.bakery import appkeys as bakery_keys
from tokensvc.bakery.codec import MAX_CAVEAT_BYTES, b64decode_any
from tokensvc.bakery.config import BakeryConfig
from tokensvc.bakery.discharger import DischargeRequest
from tokensvc.bakery.errors import MalformedCaveat
from tokensvc.errors import (
    BadRequest,
    LockedOut,
    PayloadTooLarge,
    TokensvcError,
    Unauthenticated,
    Unavailable,
    UnsupportedEncoding,
    UnsupportedMediaType,
)
from tokensvc.services.login import LoginRequest
from tokensvc.web import appkeys
from tokensvc.web.auth import API_AUDIENCE, client_ip
from tokensvc.web.errors import status_of
from tokensvc.web.jsonio import json_response, read_body
from tokensvc.web.routes import add_routes

log = logging.getLogger("tokensvc.bakery")

TOKEN_COOKIE: Final = "tokensvc-token"  # noqa: S105 - a cookie name, not a password
DISCHARGE_OPERATION: Final = "discharge"

_FORM: Final = "application/x-www-form-urlencoded"
_MAX_FIELDS: Final = 32
_KNOWN_FIELDS: Final = frozenset(("id", "id64", "caveat64"))

# The bakery's error codes (httpbakery ErrBadRequest, ErrPermissionDenied, …) by HTTP status.
_CODES: Final = {
    400: "bad request",
    401: "permission denied",
    403: "permission denied",
    404: "not found",
    413: "bad request",
    415: "bad request",
    429: "too many requests",
    503: "service unavailable",
}


def setup(app: web.Application, prefix: str, *, config: BakeryConfig | None = None) -> None:
    """Register the discharger's routes under `prefix` (the discharger itself is built by
    tokensvc.composition)."""
    config = dataclasses.replace(config or BakeryConfig(), prefix=prefix)
    app[bakery_keys.BAKERY_CONFIG] = config
    add_routes(
        app,
        [
            web.get(f"{config.prefix}/discharge/info", discharge_info),
            web.get(f"{config.prefix}/publickey", public_key),
            web.post(f"{config.prefix}/discharge", discharge),
        ],
    )


# ---- handlers --------------------------------------------------------------------------------------


async def discharge_info(request: web.Request) -> web.Response:
    return json_response(request.app[appkeys.SERVICES].discharge.info())


async def public_key(request: web.Request) -> web.Response:
    return json_response({"PublicKey": request.app[appkeys.SERVICES].discharge.info()["PublicKey"]})


async def discharge(request: web.Request) -> web.Response:
    try:
        fields = await _fields(request)
        discharge_request = _discharge_request(fields)
        result = await request.app[appkeys.SERVICES].discharge.discharge(
            discharge_request, RequestCaller(request)
        )
        return json_response(result.response_body())
    except TokensvcError as exc:
        return bakery_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return bakery_error(PayloadTooLarge("request body too large"))
        return bakery_error(BadRequest(exc.reason or "bad request"), status=exc.status)
    except Exception:
        # The trace goes to our log (no request data in it); the client learns nothing internal.
        log.exception("unhandled error in the discharger")
        return json_response({"Code": "internal error", "Message": "internal error"}, status=500)


def bakery_error(exc: TokensvcError, *, status: int | None = None) -> web.Response:
    """`{"Code", "Message"}` with the error's status (or `status`), as httpbakery's
    Error.from_dict reads it."""
    status = status if status is not None else status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, LockedOut | Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if status == 401:
        # Not "Macaroon": that would make the bakery client treat this as a discharge-required.
        headers["WWW-Authenticate"] = 'Basic realm="tokensvc", charset="UTF-8"'
    if isinstance(exc, UnsupportedEncoding):
        headers["Accept-Encoding"] = exc.accepted
    code = _CODES.get(status, "bad request" if status < 500 else "internal error")
    return json_response({"Code": code, "Message": exc.message}, status=status, headers=headers)


# ---- the form ---------------------------------------------------------------------------------------


def parse_form(raw: bytes) -> list[tuple[str, bytes]]:
    """`application/x-www-form-urlencoded` to (name, raw value bytes) pairs.

    Our own parser, not aiohttp's: that one decodes values as UTF-8 with replacement, which
    would corrupt a raw binary `id`; here `%00` and `%FF` come through as the bytes they are.
    """
    pairs: list[tuple[str, bytes]] = []
    for part in raw.split(b"&"):
        if not part:
            continue
        if len(pairs) >= _MAX_FIELDS:
            raise BadRequest(f"more than {_MAX_FIELDS} form fields")
        name, _, value = part.partition(b"=")
        pairs.append(
            (
                unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8", "replace"),
                unquote_to_bytes(value.replace(b"+", b" ")),
            )
        )
    return pairs


async def _fields(request: web.Request) -> dict[str, bytes]:
    """Known fields from the query string and the form body; each at most once in all."""
    pairs = parse_form(request.rel_url.raw_query_string.encode("latin-1", "replace"))
    body = await read_body(request)
    if body:
        content_type = request.content_type
        if content_type not in (_FORM, "application/octet-stream", ""):
            raise UnsupportedMediaType(f"send the discharge request as {_FORM}")
        pairs += parse_form(body)
    fields: dict[str, bytes] = {}
    for name, value in pairs:
        if name not in _KNOWN_FIELDS:
            continue  # token, token64, token-kind: interaction, which this discharger does not use
        if name in fields:
            raise BadRequest(f"form field {name} given more than once")
        fields[name] = value
    return fields


def _discharge_request(fields: dict[str, bytes]) -> DischargeRequest:
    if "id" in fields and "id64" in fields:
        raise MalformedCaveat("send id or id64, not both")
    for name, value in fields.items():
        # Base64 of the largest caveat is a third longer than the caveat itself.
        if len(value) > 2 * MAX_CAVEAT_BYTES:
            raise PayloadTooLarge(f"form field {name} too long")
    if "id64" in fields:
        caveat_id = b64decode_any(fields["id64"], what="id64")
    else:
        caveat_id = fields.get("id", b"")
    caveat = fields.get("caveat64")
    return DischargeRequest(
        id=caveat_id,
        caveat=b64decode_any(caveat, what="caveat64") if caveat is not None else None,
    )


# ---- who is asking ---------------------------------------------------------------------------------


class RequestCaller:
    """The caller of a discharge request, authenticated on first need and then remembered."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._who: str | None = None
        self._mfa = False
        self._not_after: float | None = None
        self._token_id: str | None = None

    async def authenticate(self) -> str:
        if self._who is None:
            self._who = await self._authenticate()
        return self._who

    async def used_second_factor(self) -> bool:
        await self.authenticate()
        return self._mfa

    def not_after(self) -> float | None:
        return self._not_after

    def token_id(self) -> str | None:
        return self._token_id

    async def _authenticate(self) -> str:
        header = self._request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "basic":
                return await self._basic(value.strip())
            if scheme.lower() in ("bearer", "macaroon") and value.strip():
                return await self._token(value.strip())
            raise Unauthenticated("unsupported Authorization: use Basic or Bearer")
        cookie = self._request.cookies.get(TOKEN_COOKIE)
        if cookie:
            return await self._token(cookie)
        raise Unauthenticated(
            "this condition needs you to authenticate: HTTP Basic, Authorization: Bearer"
            f" <tokensvc token>, or a {TOKEN_COOKIE} cookie"
        )

    async def _basic(self, value: str) -> str:
        try:
            username, sep, password = b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise Unauthenticated("malformed Basic credentials") from None
        if not sep or not username or len(username) > 256 or len(password) > 4096:
            raise Unauthenticated("invalid username or password")
        # The login path itself, so the lockout counts (and stops) guesses made through here.
        # It mints a short token we do not use: the price of not having a second login path.
        minted = await self._request.app[appkeys.SERVICES].login.login(
            LoginRequest(
                username=username,
                password=password,
                client_ip=client_ip(self._request) or "unknown",
                ttl=timedelta(minutes=1),
            )
        )
        # Vouched for exactly as the token this password got would be on the Bearer path: a
        # login that yields only an enrol-capable token (a role that requires MFA, not yet
        # enrolled) vouches for nothing here either (tests/security/test_mfa_attacks.py).
        who = await self._token(minted.token)
        # The password vouched, not the minute-long token it got.
        self._not_after = self._token_id = None
        return who

    async def _token(self, token: str) -> str:
        verified = await self._request.app[appkeys.VERIFIER].verify(
            token,
            operation=DISCHARGE_OPERATION,
            resource=self._request.path,
            audience=API_AUDIENCE,
            client_ip=client_ip(self._request),
        )
        self._mfa = verified.mfa
        self._not_after = verified.expires_at
        self._token_id = verified.token_id
        return verified.subject
