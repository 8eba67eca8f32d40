"""The request pipeline: the one layer around every handler.

In order, for each request: a request id (echoed, or made), the governor's budget (a queue and
503s when overloaded), the handler, every failure turned into a JSON answer (tokensvc.web.errors),
the security headers, then one JSON log line and the request metrics — on errors and refusals too.

It wraps each handler when its route is added (tokensvc.web.routes) rather than running as an
aiohttp middleware: an app with any middleware pays, on every request, for aiohttp's chain of
partials and its `_fix_request_current_app` wrapper, a coroutine each — about 9,000 instructions
of a cached /v1/verify (callgrind, see docs/architecture.md). Wrapping at registration also
fixes each route's template for logs and metrics once. The concerns stay in their own modules;
this only calls them in order.

The log line names the route, never the query string or any header but `X-Request-ID`: tokens
and passwords travel in bodies and the Authorization header, which are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import secrets
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network
from time import perf_counter

from aiohttp import web
from aiohttp.typedefs import Handler

from tokensvc.errors import TokensvcError
from tokensvc.macaroons.tokenformat import PREFIX
from tokensvc.operations import metrics
from tokensvc.operations.logs import REQUEST_ID as CURRENT_REQUEST_ID
from tokensvc.operations.logs import access_line
from tokensvc.web import errors
from tokensvc.web.auth import client_ip
from tokensvc.web.governor import Budget, Governor, refusal
from tokensvc.web.headers import HSTS, MARKER, SECURITY_HEADERS
from tokensvc.web.jsonio import read_raw

REQUEST_ID = "X-Request-ID"
# An incoming id is used (logged, echoed) only if it is short and plain and does not look like
# a secret: a caller or proxy that puts a token, or part of one, there must not get it into our
# logs and answers. So: at most 64 characters of these, not our token prefix, no run of 16 or
# more base64url characters (letters, digits, `-`, `_`) that mixes upper- and lower-case letters
# (a token's body, an API key), and no letter-digit run longer than 32 (a hex secret). Ids that
# proxies and tracers send pass: UUIDs, hex and W3C trace ids, ULIDs are single-case, and our
# own ids are 32 hex digits. Anything else gets a fresh id of ours: the request is still
# correlated, just not under the caller's name.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_BASE64_RUN = re.compile(r"[A-Za-z0-9_-]{16,}")
_LONG_RUN = re.compile(r"[A-Za-z0-9]{33}")

# Ids we make: a random per-process prefix and a counter. Unique across processes and restarts
# (64 random bits), and a fraction of the cost of 16 fresh random bytes per request; an id only
# has to tell requests apart, not be unguessable.
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)

# stdlib logging, not a cached structlog proxy: tokensvc.operations.logs.configure renders it as JSON (the
# `extra` fields become keys) whenever it runs, and a disabled level costs one comparison.
_access = logging.getLogger("tokensvc.access")


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):016x}"  # 32 hex digits, like a UUID


def request_id_for(incoming: str | None) -> str:
    """The id of a request that came with `incoming` as its X-Request-ID: echoed if safe."""
    if (
        incoming is None
        or _SAFE_REQUEST_ID.fullmatch(incoming) is None
        or PREFIX in incoming
        or _LONG_RUN.search(incoming) is not None
    ):
        return new_request_id()
    for run in _BASE64_RUN.findall(incoming):
        if run != run.lower() and run != run.upper():  # both cases: base64, not an id
            return new_request_id()
    return incoming


def record_request(
    request_id: str,
    method: str,
    path: str,
    route: str,
    status: int,
    start: float,
    client: str | None,
) -> None:
    """The metrics and the access line of one answered request (started at perf_counter `start`).

    Called while the request's id is the current REQUEST_ID, which the stdlib fallback reads.
    """
    elapsed = perf_counter() - start
    metrics.observe_request(route, status, elapsed)
    if not access_line(
        request_id, method, path, route, status, elapsed, client
    ) and _access.isEnabledFor(logging.INFO):
        extra = {
            "method": method,
            "path": path[:512],
            "route": route,
            "status": status,
            "duration_ms": int(elapsed * 1_000_000) / 1000,
            "client_ip": client,
        }
        _access.info("http_request", extra=extra)


async def _within(
    budget: Budget | None, governor: Governor | None, handler: Handler, request: web.Request
) -> web.StreamResponse:
    """`handler`'s answer, in a slot of `budget` (a refusal if none comes); its errors as the
    JSON answers they stand for."""
    if budget is not None and not budget.try_acquire():
        reason = await budget.wait()
        if reason is not None:
            assert governor is not None  # noqa: S101 - narrows the type; a budget comes from one
            return refusal(request, budget, reason, governor)
    try:
        return await handler(request)
    except TokensvcError as exc:
        return errors.for_tokensvc_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return errors.for_http_error(exc)
    except Exception as exc:  # noqa: BLE001 - the last resort: a 500, no trace
        return errors.for_unexpected(request, exc)
    finally:
        if budget is not None:
            budget.release()


#: What wraps a handler: `wrap(handler, route)`, with `route` its template for logs and metrics.
Wrap = Callable[[Handler, str], Handler]


def request_pipeline(
    *,
    tls: bool,
    governor: Governor | None = None,
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = (),
) -> Wrap:
    """The wrapper for an app that does (`tls=True`) or does not terminate TLS itself.

    `trusted_proxies` must be the app's `appkeys.TRUSTED_PROXIES`: with none (the default), the
    client address on the log line is the peer's, read without a look-up in the app's state.
    """

    def wrap(handler: Handler, route: str) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            start = perf_counter()
            request_id = request_id_for(request.headers.get(REQUEST_ID))
            # Security events logged while handling this request carry its id too.
            bound = CURRENT_REQUEST_ID.set(request_id)
            status = 500
            try:
                budget = governor.budget_for(request) if governor is not None else None
                if budget is not None and request.body_exists:
                    # The body first, outside any slot (red team: 300 connections that sent 7
                    # bytes of a 60 KB body held every slot for the 30 s body timeout, and
                    # every other request got 503). aiohttp keeps it for the handler's read.
                    # A failed read is kept on the request: a handler that reads the body
                    # fails the same way at once and answers in its own words (the bakery's,
                    # say); one that reads none runs as usual, in a slot like any other (red
                    # team, helper-40: skipping the slot let any request past the cap with a
                    # body too large to read).
                    with contextlib.suppress(TokensvcError):
                        await read_raw(request)
                response = await _within(budget, governor, handler, request)
                status = response.status
                response_headers = response.headers
                if MARKER not in response_headers:  # not built by json_response
                    response_headers.update(SECURITY_HEADERS)
                if tls:
                    response_headers["Strict-Transport-Security"] = HSTS
                response_headers[REQUEST_ID] = request_id
                return response
            except web.HTTPException as exc:
                # Only what the handler lets through: redirects and other answers below 400.
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
                client = client_ip(request) if trusted_proxies else request.remote
                record_request(
                    request_id, request.method, request.path, route, status, start, client
                )
                CURRENT_REQUEST_ID.reset(bound)

        return handle

    return wrap
