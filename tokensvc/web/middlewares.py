"""The outer request middleware: security headers, a request id, one JSON log line, metrics.

It sits outside the error middleware, so it sees every answer as a response — errors included —
and stamps the same headers on all of them. The headers come from one dict built at start-up;
updating a response from it costs about as much as a dict copy (see docs/security.md for the
measurement against an `on_response_prepare` signal).

The log line names the route, never the query string or any header but `X-Request-ID`: tokens
and passwords travel in bodies and the Authorization header, which are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from os import urandom

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tokensvc import metrics
from tokensvc.logs import REQUEST_ID as CURRENT_REQUEST_ID
from tokensvc.logs import access_line
from tokensvc.web.auth import client_ip

SECURITY_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
# Two years, as the HSTS preload list asks; sent only when this process terminates TLS itself.
HSTS = "max-age=63072000"

REQUEST_ID = "X-Request-ID"
# An incoming id is echoed only if it is short and plain: it lands in logs and response headers.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# stdlib logging, not a cached structlog proxy: tokensvc.logs.configure renders it as JSON (the
# `extra` fields become keys) whenever it runs, and a disabled level costs one comparison.
_access = logging.getLogger("tokensvc.access")


def security_headers(*, tls: bool) -> dict[str, str]:
    """The headers every response carries; HSTS only when served over TLS."""
    headers = dict(SECURITY_HEADERS)
    if tls:
        headers["Strict-Transport-Security"] = HSTS
    return headers


def request_middleware(*, tls: bool) -> Middleware:
    """The middleware for an app that does (`tls=True`) or does not terminate TLS itself."""
    headers = security_headers(tls=tls)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        request_id = request.headers.get(REQUEST_ID)
        if request_id is None or _SAFE_REQUEST_ID.fullmatch(request_id) is None:
            request_id = urandom(16).hex()
        # Security events logged while handling this request carry its id too.
        bound = CURRENT_REQUEST_ID.set(request_id)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            response.headers.update(headers)
            response.headers[REQUEST_ID] = request_id
            return response
        except web.HTTPException as exc:
            # Only what the error middleware lets through (redirects and other non-errors).
            status = exc.status
            exc.headers.update(headers)
            exc.headers[REQUEST_ID] = request_id
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away first (nginx's code for it)
            raise
        finally:
            elapsed = time.perf_counter() - start
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            metrics.observe_request(route, status, elapsed)
            metrics.count_verify(route, status)
            fields = {
                "request_id": request_id,
                "method": request.method,
                "path": request.path[:512],
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000.0, 3),
                "client_ip": client_ip(request),
            }
            if not access_line(fields) and _access.isEnabledFor(logging.INFO):
                del fields["request_id"]  # added from the REQUEST_ID context var
                _access.info("http_request", extra=fields)
            CURRENT_REQUEST_ID.reset(bound)

    return middleware
