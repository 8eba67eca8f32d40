"""POST /v1/verify answered in the connection's read callback, when nothing needs awaiting.

Most of a small request's CPU in aiohttp goes to its per-request machinery, not to HTTP parsing
(which is C): a Task and a waiter future per request, the Request and Response objects, header
preparation, the write and drain calls. For the route other services call on every request they
serve, that machinery costs more than verifying the token. So `tokensvc serve` keeps aiohttp's
connection handling and its C parser, and answers a verify inside `data_received` when it can:

- a complete `POST /v1/verify` HTTP/1.1 keep-alive request (no upgrade, no Content-Encoding
  header at all, a body within the limit) on a connection with nothing queued or in progress,
  whose writes are not paused (a client that does not read gets aiohttp's path, which waits for
  the buffer to drain);
- whose answer needs no I/O: Verifier.verify_now decides it (a chain-cache hit, or a miss whose
  root key is cached). A root key still to be read hands the request, body included, to aiohttp.

Everything else goes to aiohttp untouched and in order: answers leave in request order because
this path only runs while the connection's own request loop is idle, waiting for a request.

What the pipeline (tokensvc.web.pipeline) does is done here too, from the same functions: the
body rules and answers (handlers.verify), error bodies (web.errors), the request id, the client
address (web.auth, from every X-Forwarded-For line), the security headers (and HSTS under TLS),
the access line and the metrics. A request with a Content-Encoding is left to aiohttp's path,
where jsonio.read_body is the one place that decides which encodings are accepted. The test
suite runs its API tests through this path (tests/conftest.py), so any difference shows up
there. Only the governor is not consulted: an answer given here holds no slot and never waits.

With a Handoff (`tokensvc serve` with its lane, tokensvc.web.lane), a connection whose first
request this path leaves is not for a hot path moves to the lane process instead, while aiohttp's
parser has read nothing on it: socket, bytes read and all.

It leans on aiohttp's RequestHandler internals (its message queue, its idle waiter, its keep-alive
timer), which `tests/tokensvc/test_fastverify.py` exercises; TOKENSVC_FAST_VERIFY=false turns
the path off without a code change. An aiohttp release without one of them turns it off at
start-up, with a warning, rather than failing requests (`missing_internals`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from time import perf_counter
from typing import Any

import aiohttp
import orjson
from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11, RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from tokensvc.errors import TokensvcError
from tokensvc.operations.logs import REQUEST_ID as CURRENT_REQUEST_ID
from tokensvc.tokens.verification import Verifier
from tokensvc.web import appkeys
from tokensvc.web.auth import Networks, client_address, joined_forwarded_for
from tokensvc.web.errors import status_of, tokensvc_error_parts, unexpected_body
from tokensvc.web.handlers.verify import answer, parse_request
from tokensvc.web.headers import HSTS, SECURITY_HEADERS
from tokensvc.web.jsonio import JSON, json_object
from tokensvc.web.lane import LANE_RETRY, LANE_WAIT, Handoff, Offer, is_lane_request
from tokensvc.web.pipeline import REQUEST_ID, record_request, request_id_for
from tokensvc.web.verifyrequest import read_verify_request

PATH = "/v1/verify"

log = logging.getLogger(__name__)

# The aiohttp internals this module reads, sets or calls: RequestHandler's (slots and methods,
# checked on the class) and web.Server's (instance attributes, checked on the server).
_HANDLER_INTERNALS = (
    "_buffer_paused",
    "_close",
    "_force_close",
    "_keepalive_handle",
    "_keepalive_timeout",
    "_loop",
    "_manager",
    "_messages",
    "_next_keepalive_close_time",
    "_parser",
    "_paused",
    "_process_keepalive",
    "_read_bufsize",
    "_reading_paused",
    "_request_count",
    "_resume_reading_if_drained",
    "_waiter",
)
_SERVER_INTERNALS = ("_kwargs", "_loop")


def missing_internals(server: web.Server) -> list[str]:
    """The aiohttp internals the fast path needs that this aiohttp lacks (renamed in a release).

    Checked once at start-up: a missing one would otherwise fail the first verify served here.
    """
    missing = [f"RequestHandler.{n}" for n in _HANDLER_INTERNALS if not hasattr(RequestHandler, n)]
    missing += [f"Server.{n}" for n in _SERVER_INTERNALS if not hasattr(server, n)]
    return missing


_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii")
    for status in HTTPStatus
}


def _header_lines(headers: Mapping[str, str]) -> bytes:
    # Only our own constant values get here (no request data), so no CR/LF can slip in.
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())


class _Date:
    """The Date header's value, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._value = formatdate(second, usegmt=True).encode("ascii")
            self._second = second
        return self._value


class FastVerify:
    """Answers for complete POST /v1/verify requests, decided without awaiting."""

    def __init__(
        self,
        verifier: Verifier,
        *,
        max_body_bytes: int,
        tls: bool,
        trusted_proxies: Networks = (),
    ) -> None:
        self._verifier = verifier
        self.max_body = max_body_bytes
        self.trusted_proxies: Networks = trusted_proxies
        fixed = {"Content-Type": JSON, **SECURITY_HEADERS, "Server": SERVER_SOFTWARE}
        if tls:
            fixed["Strict-Transport-Security"] = HSTS
        self._fixed = _header_lines(fixed)
        self._date = _Date()

    @classmethod
    def for_app(cls, app: web.Application) -> FastVerify | None:
        """The fast path for a started app, or None where its configuration turns it off."""
        config = app[appkeys.CONFIG]
        if not config.fast_verify:
            return None
        return cls(
            app[appkeys.VERIFIER],
            max_body_bytes=config.max_body_bytes,
            tls=config.tls,
            trusted_proxies=app[appkeys.TRUSTED_PROXIES],
        )

    def eligible(self, message: Any, payload: StreamReader) -> bool:
        """Whether this parsed request is one the fast path may take on (before its body is read)."""
        return (
            message.__class__ is RawRequestMessage
            and message.path == PATH
            and message.method == "POST"
            and message.version == HttpVersion11
            and not message.should_close
            and not message.upgrade
            # Any Content-Encoding, also one aiohttp does not know (so `compression` is None).
            and hdrs.CONTENT_ENCODING not in message.headers
            and payload.is_eof()
            and payload.exception() is None
            and payload.total_bytes <= self.max_body
        )

    def respond(
        self, body: bytes, request_id_sent: str | None, forwarded_for: str, peer: str | None
    ) -> bytes | None:
        """The whole HTTP answer to a verify with this body and these X-Request-ID and
        X-Forwarded-For values, or None when it needs I/O (aiohttp's path then takes it)."""
        start = perf_counter()
        request_id = request_id_for(request_id_sent)
        # Security events logged while answering carry the request's id, as in the pipeline.
        bound = CURRENT_REQUEST_ID.set(request_id)
        try:
            extra = b""
            try:
                asked = parse_request(json_object(body))
                verified = self._verifier.verify_now(asked.token, asked.discharges, **asked.context)
                if verified is None:
                    return None
                status = 200
                out = orjson.dumps(answer(verified))
            except TokensvcError as exc:
                status = status_of(exc)
                error, extra_headers = tokensvc_error_parts(exc, PATH)
                out = orjson.dumps(error)
                extra = _header_lines(extra_headers)
            except Exception as exc:  # noqa: BLE001 - the last resort: a 500, no trace
                status = 500
                out = orjson.dumps(unexpected_body("POST", PATH, exc))
            trusted = self.trusted_proxies
            client = client_address(peer, forwarded_for, trusted) if trusted else peer
            record_request(request_id, "POST", PATH, PATH, status, start, client)
            return b"".join(
                (
                    _STATUS_LINES[status],
                    self._fixed,
                    extra,
                    b"X-Request-ID: ",
                    request_id.encode("ascii"),  # made by us, or echoed only if plain ASCII
                    b"\r\nDate: ",
                    self._date.now(),
                    b"\r\nContent-Length: ",
                    str(len(out)).encode("ascii"),
                    b"\r\n\r\n",
                    out,
                )
            )
        finally:
            CURRENT_REQUEST_ID.reset(bound)


class FastRequestHandler(RequestHandler):
    """aiohttp's connection handler, with complete verifies answered as they are parsed."""

    __slots__ = ("_fast", "_handed", "_handoff", "_peer", "_raw")

    def __init__(
        self,
        manager: web.Server,
        *,
        fast: FastVerify,
        handoff: Handoff | None,
        handed: bytes = b"",
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._fast = fast
        self._handoff = handoff
        # The bytes another process read from this connection before handing it over (the
        # lane's connections): the first this handler sees, before any its transport reads.
        self._handed = handed
        self._peer: str | None = None
        # Whether every byte so far was read by read_verify_request: aiohttp's parser has seen
        # none, so it holds no partial request and its request loop has nothing to answer.
        self._raw = True

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # As aiohttp's request.remote reads it, once per connection instead of per request.
        peername = transport.get_extra_info("peername")
        if isinstance(peername, (list, tuple)):
            self._peer = str(peername[0])
        elif peername is not None:
            self._peer = str(peername)
        handed, self._handed = self._handed, b""
        if handed:
            # Here and nowhere later: the transport starts reading the socket as soon as this
            # returns (asyncio schedules its reader right after, uvloop starts it in the same
            # call), while the coroutine awaiting connect_accepted_socket resumes only on a later
            # loop iteration. Fed from there, the rest of a request (its body, sent in a second
            # segment) could be read first and parsed as a request of its own.
            self.data_received(handed)

    def adopted(self) -> None:
        """Pause reading again if the handed bytes asked for it (call once the transport is up).

        A pause asked for inside connection_made does not hold on uvloop, which starts reading
        after it whatever the protocol asked: aiohttp's queue limit (too many pipelined requests
        in the handed bytes) would then not stop the reading.
        """
        transport = self.transport
        if transport is not None and (self._reading_paused or self._buffer_paused):
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self._raw and not (self._paused or self._close or self._force_close):
            # aiohttp's parser has read nothing on this connection yet, so no request is queued
            # or in progress (the request loop may not even have started): answer in order here.
            data = self._answer_raw(data)
            if not data:
                return
            if self._handoff is not None and is_lane_request(data) and self._hand_off(data):
                return
        self._serve_here(data)

    def _serve_here(self, data: bytes) -> None:
        # aiohttp's parser reads the rest, and may keep part of a request from now on: its state
        # is not ours to see, so this connection's later bytes all go through it.
        self._raw = False
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages or self._paused:
            super().data_received(data)  # busy, or writes paused: aiohttp's path, in order
            return
        # The request loop (RequestHandler.start) is idle, awaiting `waiter`. Hold its wake-up
        # while the requests in this chunk are answered here; wake it for whatever is left.
        self._waiter = None
        messages = self._messages
        try:
            super().data_received(data)
            while True:
                while messages and self._answer(*messages[0]):
                    messages.popleft()
                    if self._parser is not None:
                        self._parser.message_consumed()
                if messages or not self._buffer_paused:
                    break
                # The parser stopped at its queue limit; everything queued has been answered, so
                # let it go on through what it held back (this re-enters aiohttp's data_received).
                self._resume_reading_if_drained()
                if not messages:
                    break
        finally:
            self._waiter = waiter
            if self._force_close or self._close:
                waiter.cancel()
            elif messages:
                waiter.set_result(None)

    def _hand_off(self, data: bytes, deadline: float | None = None) -> bool:
        """Move this connection to the lane process; False: serve `data` here (not done yet).

        A lane that is behind is asked again every LANE_RETRY s with our reading paused, until
        LANE_WAIT has passed; then the connection is served here after all.
        """
        transport, handoff = self.transport, self._handoff
        if transport is None or handoff is None:
            return deadline is not None  # closed while waiting: nothing left to serve
        if deadline is not None and transport.is_closing():
            return True  # the client left while waiting
        outcome = handoff.offer(transport, data)
        if outcome is Offer.HANDED:
            # The lane process has the connection now; close our descriptor, not the socket.
            transport.abort()
            return True
        now = self._loop.time()
        if outcome is Offer.BUSY and (deadline is None or now < deadline):
            if deadline is None:
                deadline = now + LANE_WAIT
                transport.pause_reading()
            self._loop.call_later(LANE_RETRY, self._hand_off, data, deadline)
            return True
        if deadline is not None:  # waited in vain: serve it here
            transport.resume_reading()
            self._serve_here(data)
            return True
        return False

    def _answer_raw(self, data: bytes) -> bytes:
        """Answer the plain verifies `data` starts with, read from the bytes; what is left."""
        fast = self._fast
        transport = self.transport
        start = 0
        while not self._paused and transport is not None:
            request = read_verify_request(data, start, fast.max_body)
            if request is None:
                break
            response = fast.respond(
                request.body, request.request_id, request.forwarded_for, self._peer
            )
            if response is None:
                break  # it needs I/O: aiohttp's parser reads it, and the rest
            self._request_count += 1
            transport.write(response)
            self._answered()
            start = request.end
            if start == len(data):
                return b""
        return data[start:] if start else data

    def _answer(self, message: Any, payload: StreamReader) -> bool:
        """Answer the request at the head of the queue here; False leaves it to aiohttp."""
        fast = self._fast
        transport = self.transport
        if transport is None or self._paused or not fast.eligible(message, payload):
            return False
        body = payload.read_nowait()
        headers = message.headers
        # Every X-Forwarded-For line: a proxy may have added its own after the client's.
        forwarded = joined_forwarded_for(headers) if fast.trusted_proxies else ""
        response = fast.respond(body, headers.get(REQUEST_ID), forwarded, self._peer)
        if response is None:
            # It needs I/O: aiohttp's path takes it, with the body it no longer finds in `payload`.
            self._messages[0] = (message, self._replay(body))
            return False
        transport.write(response)
        self._answered()
        return True

    def _replay(self, body: bytes) -> StreamReader:
        reader = StreamReader(self, self._read_bufsize, loop=self._loop)
        reader.feed_data(body)
        reader.feed_eof()
        return reader

    def _answered(self) -> None:
        """The bookkeeping aiohttp's request loop does after each answer: counts, keep-alive."""
        if self._manager is not None:
            self._manager.requests_count += 1
        loop = self._loop
        close_time = loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)


class FastServer(web.Server):
    """aiohttp's low-level server, making FastRequestHandler connections."""

    def __init__(self, fast: FastVerify, server: web.Server, handoff: Handoff | None) -> None:
        super().__init__(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        self._fast = fast
        self._handoff = handoff

    def __call__(self) -> RequestHandler:
        return FastRequestHandler(
            self, fast=self._fast, handoff=self._handoff, loop=self._loop, **self._kwargs
        )

    def adopting(self, handed: bytes) -> Callable[[], FastRequestHandler]:
        """The protocol factory for a connection another process read `handed` from (the lane)."""
        return lambda: FastRequestHandler(
            self,
            fast=self._fast,
            handoff=self._handoff,
            handed=handed,
            loop=self._loop,
            **self._kwargs,
        )


class AppRunner(web.AppRunner):
    """web.AppRunner whose server takes the fast verify path where the app's config allows.

    With `handoff`, connections whose requests are not verifies go to the lane process
    (tokensvc.web.lane); that needs the fast path, whose raw state tells when it is safe.
    """

    def __init__(self, app: web.Application, *, handoff: Handoff | None = None, **kwargs: Any):
        super().__init__(app, **kwargs)
        self._handoff = handoff

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the app: its verifier exists from here
        fast = FastVerify.for_app(self.app)
        if fast is None:
            return server
        missing = missing_internals(server)
        if missing:
            log.warning(
                "aiohttp %s lacks %s, which the fast /v1/verify path uses: every request takes "
                "aiohttp's own path (and no connection moves to the lane)",
                aiohttp.__version__,
                ", ".join(missing),
            )
            return server
        return FastServer(fast, server, self._handoff)
