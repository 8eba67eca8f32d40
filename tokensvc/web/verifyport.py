"""The verify listener: POST /v1/verify on a port of its own, parsed by httptools (llhttp).

Services call /v1/verify on every request they serve. Most of a small request's CPU in aiohttp
goes to its per-request machinery (a Task and a waiter per request, the Request and Response
objects, header preparation, write and drain), not to parsing or to the verify. This listener
has none of it: an asyncio.Protocol per connection feeds every byte it reads to one
httptools.HttpRequestParser (llhttp, the parser aiohttp uses too), and answers a complete request
in `on_message_complete`, from the verifier's synchronous path (`Verifier.verify_now`: a
chain-cache hit, or a miss whose root key is in memory). Only a verify that needs I/O (a root key
to read) becomes a task; the answers of a connection leave in request order all the same, because
each one waits in the connection's queue behind any that is not ready yet (HTTP/1.1 pipelining).

It uses public APIs only: asyncio's Protocol and transports, httptools' parser callbacks. What
the request pipeline (tokensvc.web.pipeline) does around the app's own /v1/verify is done here
from the same functions, so the two answer alike (tests/tokensvc/test_verifyport.py compares
them): the body rules and answers (handlers.verify), error bodies (web.errors), the request id,
the client address (web.auth, from every X-Forwarded-For line), request Content-Encodings
(jsonio), the security headers (and HSTS under TLS), the access line and the metrics. The
governor is not consulted: an answer given here holds no slot and waits for nothing but a key.

Bounds, so that no client can make a connection cost more than its share: the request head
(request line and headers) at most MAX_HEAD_BYTES and MAX_HEADERS lines (431), the body at most
the configured limit (413, connection closed), at most MAX_PENDING answers held back for order
before reading pauses, reading paused while the client does not read its answers, and a
connection without a complete request for KEEPALIVE_TIMEOUT seconds closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from ssl import SSLContext
from time import perf_counter
from typing import Final, cast

import httptools
import orjson
from aiohttp import web
from multidict import CIMultiDict

from tokensvc.errors import BadRequest, TokensvcError
from tokensvc.operations.logs import REQUEST_ID as CURRENT_REQUEST_ID
from tokensvc.tokens.verification import Verifier
from tokensvc.web import appkeys
from tokensvc.web.auth import Networks, client_address
from tokensvc.web.errors import error_body, status_of, tokensvc_error_parts, unexpected_body
from tokensvc.web.handlers.verify import VerifyBody, answer, parse_request
from tokensvc.web.headers import HSTS, SECURITY_HEADERS
from tokensvc.web.jsonio import JSON, content_coding, decode_body, json_object
from tokensvc.web.pipeline import record_request, request_id_for
from tokensvc.web.routes import UNMATCHED

PATH: Final = "/v1/verify"
HEALTH_PATH: Final = "/healthz"

# The request line and headers of one request, as aiohttp bounds them (8190 bytes a line) but
# as a whole: enough for any proxy's additions, small enough that a slow or endless head costs
# little. llhttp keeps a header it has not seen the end of, so the bound is checked on the raw
# bytes read while a head is incomplete, not only on the headers it hands over.
MAX_HEAD_BYTES: Final = 16 * 1024
MAX_HEADERS: Final = 100
# Answers held for order behind one that waits for a key, before the connection stops reading.
MAX_PENDING: Final = 64
# aiohttp's keep-alive (web.run_app's default): an idle connection, or one whose request does
# not complete, is closed after this long without an answer.
KEEPALIVE_TIMEOUT: Final = 75.0
# How long a connection we end keeps reading what its client still sends (see _finish).
LINGER: Final = 2.0

log = logging.getLogger(__name__)

_STATUS_LINES: Final = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii")
    for status in HTTPStatus
}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def _header_lines(headers: Mapping[str, str]) -> bytes:
    # Only our own values get here (no request data but a checked request id), so no CR/LF.
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())


class _Date:
    """The Date header's value, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._value = formatdate(second, usegmt=True).encode("ascii")
            self._second = second
        return self._value


class Answer:
    """One request's answer as the listener writes it: status, body, extra header lines."""

    __slots__ = ("body", "extra", "status")

    def __init__(self, status: int, body: bytes, extra: bytes = b"") -> None:
        self.status = status
        self.body = body
        self.extra = extra


class VerifyEndpoint:
    """What every connection of one listener shares: the verifier, the limits, the headers."""

    def __init__(
        self,
        verifier: Verifier,
        *,
        max_body_bytes: int,
        tls: bool,
        trusted_proxies: Networks = (),
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self._verifier = verifier
        self.max_body = max_body_bytes
        self.trusted_proxies: Networks = trusted_proxies
        self.keepalive_timeout = keepalive_timeout
        fixed = {"Content-Type": JSON, **SECURITY_HEADERS}
        if tls:
            fixed["Strict-Transport-Security"] = HSTS
        self._fixed = _header_lines(fixed)
        self._date = _Date()
        self.connections: set[VerifyConnection] = set()
        self._all_closed: asyncio.Event | None = None  # set once all have closed, at shutdown

    @classmethod
    def for_app(cls, app: web.Application) -> VerifyEndpoint:
        """The endpoint for a started app (its verifier exists once the app has started)."""
        config = app[appkeys.CONFIG]
        return cls(
            app[appkeys.VERIFIER],
            max_body_bytes=config.max_body_bytes,
            tls=config.tls,
            trusted_proxies=app[appkeys.TRUSTED_PROXIES],
        )

    # ---- deciding -----------------------------------------------------------------------------

    def decide(self, body: bytes, coding: str | None) -> Answer | VerifyBody:
        """The answer to a verify with this body, or the parsed request when it needs I/O."""
        try:
            if coding is not None and body:
                body = decode_body(body, coding, max_bytes=self.max_body)
            asked = parse_request(json_object(body))
            verified = self._verifier.verify_now(asked.token, asked.discharges, **asked.context)
            if verified is None:
                return asked
            return Answer(200, orjson.dumps(answer(verified)))
        except TokensvcError as exc:
            return self.error(exc)
        except Exception as exc:  # noqa: BLE001 - the last resort: a 500, no trace
            return Answer(500, orjson.dumps(unexpected_body("POST", PATH, exc)))

    async def decide_later(self, asked: VerifyBody) -> Answer:
        """The answer to a verify that needs I/O (a root key not in memory)."""
        try:
            verified = await self._verifier.verify(asked.token, asked.discharges, **asked.context)
            return Answer(200, orjson.dumps(answer(verified)))
        except TokensvcError as exc:
            return self.error(exc)
        except Exception as exc:  # noqa: BLE001 - the last resort: a 500, no trace
            return Answer(500, orjson.dumps(unexpected_body("POST", PATH, exc)))

    @staticmethod
    def error(exc: TokensvcError) -> Answer:
        body, headers = tokensvc_error_parts(exc, PATH)
        return Answer(status_of(exc), orjson.dumps(body), _header_lines(headers))

    # ---- answering ----------------------------------------------------------------------------

    def render(
        self,
        result: Answer,
        request_id: str,
        method: str,
        path: str,
        route: str,
        start: float,
        client: str | None,
        connection: bytes = b"",
    ) -> bytes:
        """The whole HTTP answer, with the access line and metrics recorded for it."""
        record_request(request_id, method, path, route, result.status, start, client)
        body = result.body
        return b"".join(
            (
                _STATUS_LINES[result.status],
                self._fixed,
                result.extra,
                connection,
                b"X-Request-ID: ",
                request_id.encode("ascii"),  # made by us, or echoed only if plain ASCII
                b"\r\nDate: ",
                self._date.now(),
                b"\r\nContent-Length: ",
                str(len(body)).encode("ascii"),
                b"\r\n\r\n",
                body,
            )
        )

    def client(self, peer: str | None, forwarded_for: list[bytes] | None) -> str | None:
        trusted = self.trusted_proxies
        if not trusted:
            return peer
        joined = b", ".join(forwarded_for).decode("latin-1") if forwarded_for else ""
        return client_address(peer, joined, trusted)

    def forget(self, connection: VerifyConnection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def close(self, grace: float = 10.0) -> None:
        """Stop: idle connections now, busy ones once their answers are out (up to `grace` s)."""
        self._all_closed = asyncio.Event()
        for connection in list(self.connections):
            connection.shut()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._all_closed.wait()
        for connection in list(self.connections):
            connection.abort()


# Request headers the listener reads; every other one is only counted.
_REQUEST_ID: Final = b"x-request-id"
_FORWARDED_FOR: Final = b"x-forwarded-for"
_CONTENT_ENCODING: Final = b"content-encoding"
_EXPECT: Final = b"expect"
_OURS_FIRST: Final = (b"x", b"X", b"c", b"C", b"e", b"E")
_CLOSE: Final = b"Connection: close\r\n"
_NOT_FOUND: Final = Answer(404, orjson.dumps(error_body("not_found", "Not Found")))
_NOT_ALLOWED_POST: Final = Answer(
    405, orjson.dumps(error_body("method_not_allowed", "Method Not Allowed")), b"Allow: POST\r\n"
)
_NOT_ALLOWED_GET: Final = Answer(
    405, orjson.dumps(error_body("method_not_allowed", "Method Not Allowed")), b"Allow: GET\r\n"
)
_KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"


class VerifyConnection(asyncio.Protocol):
    """One client connection: httptools parses, answers leave in request order."""

    def __init__(self, endpoint: VerifyEndpoint) -> None:
        self._endpoint = endpoint
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        # Answers (bytes) and tasks still making theirs, in request order; empty: write at once.
        self._pending: deque[tuple[bytes | asyncio.Task[bytes], bool]] = deque()
        self._closing = False  # an answer that ends the connection has been queued or written
        self._read_paused = False
        self._write_paused = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._begun = 0  # requests begun on this connection
        self._reset()

    def _reset(self) -> None:
        """Per-request state, before each request's first byte."""
        self._in_head = False
        self._head_bytes = 0  # of the request line and the headers llhttp has handed over
        self._raw_head = 0  # read while the head was incomplete, after the read it began in
        self._oversized_head = False
        self._headers = 0
        self._url = b""
        self._request_id: bytes | None = None
        self._forwarded: list[bytes] | None = None
        self._encodings: list[bytes] | None = None
        self._expect = False
        self._body = b""  # usually one piece; more are joined (bounded by the body limit)
        self._body_bytes = 0
        self._refusal: Answer | None = None  # decided before the body: sent when it completes
        self._start = 0.0

    # ---- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport (uvloop's are not subclasses of asyncio.Transport).
        self._transport = cast("asyncio.Transport", transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, (list, tuple)):
            self._peer = str(peer[0])
        elif peer is not None:
            self._peer = str(peer)
        self._endpoint.connections.add(self)
        self._touch()
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._endpoint.forget(self)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for item, _close in self._pending:
            if not isinstance(item, bytes):
                item.cancel()
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # an answer that ends the connection is out or queued: nothing more is read
        begun = self._begun
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade or CONNECT: the request has been answered; the bytes after it are not
            # HTTP/1.1 this listener speaks, so the connection ends with its answers.
            self._finish()
            return
        except httptools.HttpParserError:
            if self._oversized_head:
                self._refuse_head()
            else:
                self._refuse(BadRequest("malformed HTTP request"))
            return
        if self._in_head and self._begun == begun:
            # A head still incomplete that began in an earlier read: llhttp holds its bytes.
            # (One that began in this read holds at most what follows its start in `data`.)
            self._raw_head += len(data)
            if self._raw_head > MAX_HEAD_BYTES and not self._closing:
                self._refuse_head()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its requests until it does.
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._maybe_resume_reading()

    def eof_received(self) -> bool | None:
        # The client sent all it will: answer what is pending, then close (return False).
        if not self._pending:
            return False
        self._closing = True
        self._pending.append((b"", True))
        return True

    # ---- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self._begun += 1
        self._in_head = True
        self._start = perf_counter()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        self._head_bytes += len(name) + len(value)
        if self._headers > MAX_HEADERS or self._head_bytes > MAX_HEAD_BYTES:
            # httptools turns any exception raised here into an HttpParserError from feed_data;
            # data_received tells this one by the flag and answers 431.
            self._oversized_head = True
            raise httptools.HttpParserError("request header fields too large")
        if name[:1] not in _OURS_FIRST:
            return  # Host, Content-Type, User-Agent…: none of ours starts like them
        name = name.lower()
        if name == _REQUEST_ID:
            if self._request_id is None:
                self._request_id = value  # the first, as aiohttp's headers.get() reads it
        elif name == _FORWARDED_FOR:
            if self._forwarded is None:
                self._forwarded = [value]
            else:
                self._forwarded.append(value)
        elif name == _CONTENT_ENCODING:
            if self._encodings is None:
                self._encodings = [value]
            else:
                self._encodings.append(value)
        elif name == _EXPECT:
            self._expect = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        method = self._parser.get_method()
        if self._url == b"/v1/verify" and method == b"POST" and self._encodings is None:
            if self._expect:
                self._emit(_CONTINUE, close=False)
            return  # the request every service sends: nothing to refuse
        path = self._path()
        if path == HEALTH_PATH:
            # Liveness of this process, for a probe of the verify port (as the app's /healthz).
            self._refusal = (
                Answer(200, b'{"status":"ok"}') if method == b"GET" else _NOT_ALLOWED_GET
            )
        elif path != PATH:
            self._refusal = _NOT_FOUND
        elif method != b"POST":
            self._refusal = _NOT_ALLOWED_POST
        elif self._encodings is not None:
            try:
                content_coding(
                    CIMultiDict(
                        ("Content-Encoding", value.decode("latin-1")) for value in self._encodings
                    )
                )
            except TokensvcError as exc:
                self._refusal = self._endpoint.error(exc)
        if self._refusal is None and self._expect:
            self._emit(_CONTINUE, close=False)

    def on_body(self, body: bytes) -> None:
        if self._refusal is not None:
            return  # not read: the answer is already decided
        self._body_bytes += len(body)
        if self._body_bytes > self._endpoint.max_body:
            # Too large, as the app answers it (jsonio.read_body); the rest is not read.
            self._refusal = Answer(
                413, orjson.dumps(error_body("payload_too_large", "request body too large"))
            )
            self._answer_refusal(close=True)
            self._closing = True
            return
        self._body = self._body + body if self._body else body

    def on_message_complete(self) -> None:
        if self._closing:
            return
        keep_alive = self._parser.should_keep_alive()
        if self._refusal is not None:
            self._answer_refusal(close=not keep_alive)
            return
        endpoint = self._endpoint
        body = self._body
        coding = None
        if self._encodings is not None:
            coding = content_coding(
                CIMultiDict(("Content-Encoding", v.decode("latin-1")) for v in self._encodings)
            )
        request_id = request_id_for(
            self._request_id.decode("latin-1") if self._request_id is not None else None
        )
        # Security events logged while answering carry the request's id, as in the pipeline.
        bound = CURRENT_REQUEST_ID.set(request_id)
        try:
            decided = endpoint.decide(body, coding)
            client = (
                endpoint.client(self._peer, self._forwarded)
                if endpoint.trusted_proxies
                else self._peer
            )
            connection = self._connection_header(keep_alive)
            if isinstance(decided, Answer):
                rendered = endpoint.render(
                    decided, request_id, "POST", PATH, PATH, self._start, client, connection
                )
                self._emit(rendered, close=not keep_alive)
                return
        finally:
            CURRENT_REQUEST_ID.reset(bound)
        task = self._loop.create_task(
            self._later(decided, request_id, self._start, client, connection)
        )
        self._pending.append((task, not keep_alive))
        if not keep_alive:
            self._closing = True
        task.add_done_callback(self._task_done)
        if len(self._pending) >= MAX_PENDING:
            self._pause_reading()

    # ---- helpers ------------------------------------------------------------------------------------

    def _path(self) -> str:
        url = self._url
        if url[:1] != b"/":
            try:
                url = httptools.parse_url(url).path or b""  # absolute-form
            except httptools.HttpParserInvalidURLError:
                return ""
        path = url.split(b"?", 1)[0]
        return path.decode("latin-1")

    def _connection_header(self, keep_alive: bool) -> bytes:
        if not keep_alive:
            return _CLOSE
        if self._parser.get_http_version() == "1.0":
            return _KEEP_ALIVE
        return b""

    async def _later(
        self,
        asked: VerifyBody,
        request_id: str,
        start: float,
        client: str | None,
        connection: bytes,
    ) -> bytes:
        endpoint = self._endpoint
        CURRENT_REQUEST_ID.set(request_id)  # this task's own context
        try:
            decided = await endpoint.decide_later(asked)
        except asyncio.CancelledError:
            # The client went away first (nginx's 499), as the pipeline counts it.
            record_request(request_id, "POST", PATH, PATH, 499, start, client)
            raise
        return endpoint.render(
            decided,
            request_id,
            method="POST",
            path=PATH,
            route=PATH,
            start=start,
            client=client,
            connection=connection,
        )

    def _answer_refusal(self, *, close: bool) -> None:
        refusal = self._refusal
        assert refusal is not None  # noqa: S101 - narrows the type; set before the call
        path = self._path()
        route = path if path in (PATH, HEALTH_PATH) else UNMATCHED
        request_id = request_id_for(
            self._request_id.decode("latin-1") if self._request_id is not None else None
        )
        method = self._parser.get_method().decode("latin-1")
        client = self._endpoint.client(self._peer, self._forwarded)
        rendered = self._endpoint.render(
            refusal,
            request_id,
            method=method,
            path=path,
            route=route,
            start=self._start,
            client=client,
            connection=_CLOSE if close else self._connection_header(keep_alive=True),
        )
        self._emit(rendered, close=close)

    def _refuse(self, exc: TokensvcError, status: int | None = None) -> None:
        """Answer a request llhttp refused (or that broke a bound), then close the connection."""
        answer_ = self._endpoint.error(exc)
        if status is not None:
            answer_ = Answer(status, answer_.body, answer_.extra)
        rendered = self._endpoint.render(
            answer_,
            request_id_for(None),
            method="-",
            path="-",
            route=UNMATCHED,
            start=self._start or perf_counter(),
            client=self._peer,
            connection=_CLOSE,
        )
        self._emit(rendered, close=True)

    def _refuse_head(self) -> None:
        self._refuse(BadRequest("request header fields too large"), status=431)

    def _emit(self, data: bytes, *, close: bool) -> None:
        """Write an answer now, or queue it behind answers not made yet (request order)."""
        if close:
            self._closing = True
        if self._pending:
            self._pending.append((data, close))
            if len(self._pending) >= MAX_PENDING:
                self._pause_reading()
            return
        transport = self._transport
        if transport is None:
            return
        transport.write(data)
        if close:
            self._finish()
        elif data is not _CONTINUE:
            self._touch()

    def _task_done(self, task: asyncio.Task[bytes]) -> None:
        if task.cancelled() or self._transport is None:
            return
        self._flush()

    def _flush(self) -> None:
        """Write the answers at the head of the queue that are ready, in order."""
        pending = self._pending
        transport = self._transport
        while pending and transport is not None:
            item, close = pending[0]
            if not isinstance(item, bytes):
                if not item.done():
                    break
                item = item.result()
            pending.popleft()
            if item:
                transport.write(item)
            if close:
                pending.clear()
                self._finish()
                return
            self._touch()
        self._maybe_resume_reading()

    def _finish(self) -> None:
        """End the connection once what is queued is written (asyncio closes after flushing)."""
        self._closing = True
        if self._pending:
            self._pending.append((b"", True))
            return
        transport = self._transport
        if transport is None:
            return
        if not transport.can_write_eof():  # TLS: close_notify, then the close
            transport.close()
            return
        # A lingering close, as nginx does: send FIN after the answers, and read (and drop) what
        # the client still sends for up to LINGER seconds. Closing with its bytes unread would
        # make the kernel answer them with a reset, which can destroy our last answer in flight
        # (a 413 or 431 to a client still sending its body or head).
        transport.write_eof()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        self._loop.call_later(LINGER, transport.close)

    def _touch(self) -> None:
        self._deadline = self._loop.time() + self._endpoint.keepalive_timeout

    def _on_timer(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        now = self._loop.time()
        if self._pending:  # answers still being made: not idle
            self._touch()
        elif now >= self._deadline:
            self._transport.close()
            return
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self._read_paused
            and not self._write_paused
            and len(self._pending) < MAX_PENDING
            and self._transport is not None
            and not self._closing
        ):
            self._read_paused = False
            self._transport.resume_reading()

    def shut(self) -> None:
        """Close once the answers in progress are out (at shutdown)."""
        if not self._closing:
            self._finish()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


async def start_verify_listener(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl: SSLContext | None = None,
    reuse_port: bool = False,
) -> tuple[asyncio.Server, VerifyEndpoint]:
    """Listen for /v1/verify on host:port with the verifier of `app` (which must have started)."""
    endpoint = VerifyEndpoint.for_app(app)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: VerifyConnection(endpoint),
        host,
        port,
        ssl=ssl,
        reuse_port=reuse_port or None,
        backlog=1024,
    )
    return server, endpoint


async def stop_verify_listener(server: asyncio.Server, endpoint: VerifyEndpoint) -> None:
    server.close()
    await endpoint.close()
    await server.wait_closed()


__all__ = [
    "PATH",
    "Answer",
    "VerifyConnection",
    "VerifyEndpoint",
    "start_verify_listener",
    "stop_verify_listener",
]
