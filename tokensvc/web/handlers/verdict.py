"""POST /v1/verdict and GET /v1/revocations/stream: for zero-hop clients (tokensvc.services.verdicts).

The stream is Server-Sent Events (text/event-stream): a `hello` with the newest cursor and the
heartbeat, a `reset` when the client's cursor cannot be resumed, then one event per revocation
(`token`, `generation`, `key`) with its id, and a `: ping` comment whenever `heartbeat` seconds
pass without one, so a client notices a dead stream. A slow reader is written to at its own pace:
`write` waits for the socket to drain, and the feed keeps no queue per subscriber.

`?until=now` answers the same way but ends once the newest event at the time of the request is
sent: a catch-up poll for clients behind proxies that buffer streams (and for curl and fuzzers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import orjson
from aiohttp import web

from tokensvc.errors import BadRequest
from tokensvc.operations.logs import REQUEST_ID as CURRENT_REQUEST_ID
from tokensvc.tokens.events import RevocationEvent
from tokensvc.web import appkeys
from tokensvc.web.auth import principal
from tokensvc.web.headers import SECURITY_HEADERS
from tokensvc.web.jsonio import json_response, read_json_object, reject_unknown, str_list
from tokensvc.web.pipeline import REQUEST_ID
from tokensvc.web.routes import add_routes

log = logging.getLogger("tokensvc.web")

STREAM_PATH: Final = "/v1/revocations/stream"
_ALLOWED: Final = frozenset(("token", "discharges"))
_PING: Final = b": ping\n\n"
_MAX_CURSOR: Final = 64  # openapi.yaml's maxLength; any shorter string is answered (a reset)
# A subscriber that takes none of a write for this many heartbeats has gone, or never reads.
_WRITE_HEARTBEATS: Final = 3
# A verdict describes a bearer credential: shared caches must not keep it (the client does).
_NO_STORE: Final = {"Cache-Control": "no-store"}


def setup(app: web.Application) -> None:
    """Register POST /v1/verdict and GET /v1/revocations/stream."""
    add_routes(app, [web.post("/v1/verdict", verdict), web.get(STREAM_PATH, stream)])


async def verdict(request: web.Request) -> web.Response:
    who = principal(request)
    data = await read_json_object(request)
    reject_unknown(data, _ALLOWED)
    token = data.get("token")
    if not isinstance(token, str) or not token:
        raise BadRequest("token must be a non-empty string")
    discharges = list(str_list(data, "discharges", max_items=1024))

    result = await request.app[appkeys.SERVICES].verdicts.verdict(who, token, discharges)

    if isinstance(result, tuple):  # Refused: the body /v1/verify gives a bad token
        body = {
            "valid": False,
            "reason": result.reason,
            "error": {"code": "invalid_token", "message": result.reason},
        }
        headers = {**_NO_STORE, "WWW-Authenticate": 'Bearer realm="tokensvc"'}
        return json_response(body, status=401, headers=headers)
    return json_response(result, headers=_NO_STORE)


def _frame(event: str, data: bytes, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + data + b"\n\n"


def _events(batch: list[RevocationEvent]) -> bytes:
    return b"".join(_frame(e.kind, e.data, e.id) for e in batch)


async def stream(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    header, query = request.headers.get("Last-Event-ID"), request.query.get("cursor")
    # Both are checked, whichever is used: a request openapi.yaml calls invalid is a 400.
    for given in (header, query):
        if given is not None and len(given) > _MAX_CURSOR:
            raise BadRequest(f"Last-Event-ID / cursor: at most {_MAX_CURSOR} characters")
    cursor = header or query
    until = request.query.get("until")
    if until not in (None, "now"):
        raise BadRequest("until must be `now` (or absent: follow the stream)")
    verdicts = request.app[appkeys.SERVICES].verdicts

    def connected() -> bool:
        transport = request.transport
        return transport is not None and not transport.is_closing()

    subscription = await verdicts.subscribe(who, cursor, wait=until is None, connected=connected)

    with subscription.slot:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # nginx: pass each event on at once
                **SECURITY_HEADERS,
                REQUEST_ID: CURRENT_REQUEST_ID.get() or "",
            }
        )
        await response.prepare(request)
        hello = {"cursor": str(subscription.newest), "heartbeat": subscription.heartbeat}
        # The hello's id is where this subscriber starts: a reconnect before any event resumes
        # from there, not from the newest id (which would skip what lies between).
        first = _frame("hello", orjson.dumps(hello), subscription.start)
        if subscription.reset is not None:
            first += _frame("reset", orjson.dumps({"reason": subscription.reset}))
        # Bounded writes: a client that stops reading would otherwise hold its slot, and this
        # coroutine, for as long as its connection stays open (red team, helper-59).
        timeout = max(1.0, _WRITE_HEARTBEATS * subscription.heartbeat)
        try:
            async with asyncio.timeout(timeout):
                await response.write(first)
            async with contextlib.aclosing(subscription.batches) as batches:
                async for batch in batches:
                    async with asyncio.timeout(timeout):
                        await response.write(_events(batch) if batch else _PING)
        except ConnectionError:
            pass  # the client left; its slot is freed on the way out
        except TimeoutError:
            log.info("revocation stream ended: the subscriber took nothing for %.0f s", timeout)
            if request.transport is not None:
                request.transport.abort()  # what is buffered for it can never be sent
        except Exception:  # past the headers, ending the stream is all there is to do
            # (the database went away while this subscriber read behind the ring): the client
            # reconnects with its Last-Event-ID and misses nothing.
            log.warning("revocation stream ended early", exc_info=True)
        return response
