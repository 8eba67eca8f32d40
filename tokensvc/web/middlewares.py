"""The request middleware: the one layer around every handler.

In order, for each request: a request id (echoed, or made), the governor's budget (a queue and
503s when overloaded), the handler, every failure turned into a JSON answer (tokensvc.web.errors),
the security headers, then one JSON log line and the request metrics — on errors and refusals too.

One middleware rather than one per concern: each aiohttp middleware layer costs a partial call
and a coroutine per request, which on /v1/verify is a measurable share of the whole answer (see
loadtests/README.md); the concerns stay in their own modules, this only calls them in order.

The log line names the route, never the query string or any header but `X-Request-ID`: tokens
and passwords travel in bodies and the Authorization header, which are never logged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tokensvc import metrics
from tokensvc.errors import TokensvcError
from tokensvc.logs import REQUEST_ID as CURRENT_REQUEST_ID
from tokensvc.logs import access_line
from tokensvc.web import errors
from tokensvc.web.auth import client_ip
from tokensvc.web.governor import Governor, refusal
from tokensvc.web.headers import HSTS, MARKER, SECURITY_HEADERS

REQUEST_ID = "X-Request-ID"
# An incoming id is echoed only if it is short and plain: it lands in logs and response headers.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Ids we make: a random per-process prefix and a counter. Unique across processes and restarts
# (64 random bits), and a fraction of the cost of 16 fresh random bytes per request; an id only
# has to tell requests apart, not be unguessable.
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)

# stdlib logging, not a cached structlog proxy: tokensvc.logs.configure renders it as JSON (the
# `extra` fields become keys) whenever it runs, and a disabled level costs one comparison.
_access = logging.getLogger("tokensvc.access")


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):016x}"  # 32 hex digits, like a UUID


def request_middleware(*, tls: bool, governor: Governor | None = None) -> Middleware:
    """The middleware for an app that does (`tls=True`) or does not terminate TLS itself."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        request_id = request.headers.get(REQUEST_ID)
        if request_id is None or _SAFE_REQUEST_ID.fullmatch(request_id) is None:
            request_id = new_request_id()
        # Security events logged while handling this request carry its id too.
        bound = CURRENT_REQUEST_ID.set(request_id)
        status = 500
        try:
            response = await _answer(request, handler, governor)
            status = response.status
            response_headers = response.headers
            if MARKER not in response_headers:  # not built by json_response
                response_headers.update(SECURITY_HEADERS)
            if tls:
                response_headers["Strict-Transport-Security"] = HSTS
            response_headers[REQUEST_ID] = request_id
            return response
        except web.HTTPException as exc:
            # Only what _answer lets through: redirects and other answers below 400.
            status = exc.status
            exc.headers.update(SECURITY_HEADERS)
            if tls:
                exc.headers["Strict-Transport-Security"] = HSTS
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
            fields = {
                "request_id": request_id,
                "method": request.method,
                "path": request.path[:512],
                "route": route,
                "status": status,
                "duration_ms": int(elapsed * 1_000_000)
                / 1000,  # µs precision, cheaper than round()
                "client_ip": client_ip(request),
            }
            if not access_line(fields) and _access.isEnabledFor(logging.INFO):
                del fields["request_id"]  # added from the REQUEST_ID context var
                _access.info("http_request", extra=fields)
            CURRENT_REQUEST_ID.reset(bound)

    return middleware


async def _answer(
    request: web.Request, handler: Handler, governor: Governor | None
) -> web.StreamResponse:
    """The handler's answer within the governor's budget, every failure as a JSON answer."""
    budget = governor.budget_for(request) if governor is not None else None
    if budget is not None and not budget.try_acquire():
        reason = await budget.wait()
        if reason is not None:
            assert governor is not None
            return refusal(request, budget, reason, governor)
    try:
        return await handler(request)
    except TokensvcError as exc:
        return errors.for_tokensvc_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return errors.for_http_error(exc)
    except Exception as exc:  # noqa: BLE001 - the last resort: a 500 without a trace
        return errors.for_unexpected(request, exc)
    finally:
        if budget is not None:
            budget.release()
