"""Every failure as a JSON answer `{"error": {"code", "message"}}`, never a trace.

Called by the request pipeline (tokensvc.web.pipeline), which catches what a handler
raises; these functions only build the answers.
"""

from __future__ import annotations

import logging

from aiohttp import web

from tokensvc.errors import LockedOut, TokensvcError, Unavailable, UnsupportedEncoding
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


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def for_tokensvc_error(request: web.Request, exc: TokensvcError) -> web.Response:
    """The answer for one of our own errors: its status and code, plus the headers it implies."""
    body, headers = tokensvc_error_parts(exc, request.path)
    return json_response(body, status=exc.status, headers=headers)


def tokensvc_error_parts(exc: TokensvcError, path: str) -> tuple[dict[str, object], dict[str, str]]:
    """The body and extra headers of `exc`'s answer (status: exc.status); shared with the
    fast /v1/verify path, which writes its answers itself."""
    headers: dict[str, str] = {}
    if isinstance(exc, (LockedOut, Unavailable)):
        headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, Unavailable):
            metrics.count_database_error(exc.__cause__)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tokensvc"'
    if isinstance(exc, UnsupportedEncoding):
        headers["Accept-Encoding"] = exc.accepted
    body: dict[str, object] = dict(error_body(exc.code, exc.message))
    if exc.code in ("invalid_token", "caveat_denied") and path.endswith("/verify"):
        # /v1/verify callers read {"valid", "reason"}; the error object is kept for uniformity.
        body = {"valid": False, "reason": exc.message, **body}
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
