"""Every failure as a JSON answer `{"error": {"code", "message"}}`, never a trace.

Called by the request pipeline (tokensvc.web.pipeline), which catches what a handler
raises; these functions only build the answers.
"""

from __future__ import annotations

import logging

from aiohttp import web

from tokensvc.errors import (
    BadRequest,
    CaveatDenied,
    ClientDisconnected,
    Conflict,
    Forbidden,
    InvalidToken,
    LockedOut,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    SecondFactorNeeded,
    TokensvcError,
    Unauthenticated,
    Unavailable,
    UnsupportedEncoding,
    UnsupportedMediaType,
)
from tokensvc.operations import metrics
from tokensvc.web.jsonio import json_response

log = logging.getLogger("tokensvc.web")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


# The one map from what went wrong to an HTTP status; a subclass takes its nearest ancestor's
# (bakery's ConditionRefused is a Forbidden, so a 403). Anything unmapped is a 500.
_STATUS: dict[type[TokensvcError], int] = {
    BadRequest: 400,
    InvalidToken: 401,
    Unauthenticated: 401,
    CaveatDenied: 403,
    Forbidden: 403,
    NotFound: 404,
    RequestTimeout: 408,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedEncoding: 415,
    UnsupportedMediaType: 415,
    LockedOut: 429,
    ClientDisconnected: 499,  # nginx's status for a client that left first
    Unavailable: 503,
}


def status_of(exc: TokensvcError) -> int:
    """The HTTP status of one of our errors."""
    for cls in type(exc).__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def for_tokensvc_error(request: web.Request, exc: TokensvcError) -> web.Response:
    """The answer for one of our own errors: its status and code, plus the headers it implies."""
    body, headers = tokensvc_error_parts(exc, request.path)
    return json_response(body, status=status_of(exc), headers=headers)


def tokensvc_error_parts(exc: TokensvcError, path: str) -> tuple[dict[str, object], dict[str, str]]:
    """The body and extra headers of `exc`'s answer (status: `status_of`); shared with the
    fast /v1/verify path, which writes its answers itself."""
    headers: dict[str, str] = {}
    if isinstance(exc, (LockedOut, Unavailable)):
        headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, Unavailable):
            metrics.count_database_error(exc.__cause__)
    if status_of(exc) == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tokensvc"'
    if isinstance(exc, UnsupportedEncoding):
        headers["Accept-Encoding"] = exc.accepted
    body: dict[str, object] = dict(error_body(exc.code, exc.message))
    if exc.code in ("invalid_token", "caveat_denied") and path.endswith("/verify"):
        # /v1/verify callers read {"valid", "reason"}; the error object is kept for uniformity.
        body = {"valid": False, "reason": exc.message, **body}
    if isinstance(exc, SecondFactorNeeded):
        # The same for a wrong password and a right one that needs a code (tokensvc.services.login).
        body["mfa_required"] = True
        body["challenge"] = exc.challenge
    return body, headers


def for_http_error(exc: web.HTTPException) -> web.Response:
    """The JSON answer for aiohttp's own 4xx/5xx (no route, wrong method, body too large)."""
    code = _HTTP_CODES.get(exc.status, "http_error")
    message = exc.reason if exc.status != 413 else "request body too large"
    # A 405 must say which methods the resource has (RFC 9110 §15.5.6); aiohttp put them here.
    allow = exc.headers.get("Allow") if exc.status == 405 else None
    return json_response(
        error_body(code, message), status=exc.status, headers={"Allow": allow} if allow else None
    )


def for_unexpected(request: web.Request, exc: Exception) -> web.Response:
    """A 500 that tells the client nothing internal; the trace goes to our log."""
    return json_response(unexpected_body(request.method, request.path, exc), status=500)


def unexpected_body(method: str, path: str, exc: Exception) -> dict[str, dict[str, str]]:
    """Log `exc` with its trace and return the body of the 500 that answers it."""
    metrics.count_database_error(exc)
    # No request data in the trace: the log line names the method and path only.
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return error_body("internal_error", "internal error")
