"""The one error middleware: every failure becomes `{"error": {"code", "message"}}`, never a trace."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from tokensvc import metrics
from tokensvc.errors import LockedOut, TokensvcError, Unavailable
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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TokensvcError as exc:
        headers: dict[str, str] = {}
        if isinstance(exc, (LockedOut, Unavailable)):
            headers["Retry-After"] = str(exc.retry_after)
            if isinstance(exc, Unavailable):
                metrics.count_database_error(exc.__cause__)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="tokensvc"'
        body: dict[str, object] = dict(error_body(exc.code, exc.message))
        if exc.code in ("invalid_token", "caveat_denied") and request.path.endswith("/verify"):
            # /v1/verify callers read {"valid", "reason"}; the error object is kept for uniformity.
            body = {"valid": False, "reason": exc.message, **body}
        return json_response(body, status=exc.status, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 413 else "request body too large"
        return json_response(error_body(code, message), status=exc.status)
    except Exception as exc:
        metrics.count_database_error(exc)
        # The trace goes to our log (no request data in it); the client learns nothing internal.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(error_body("internal_error", "internal error"), status=500)
