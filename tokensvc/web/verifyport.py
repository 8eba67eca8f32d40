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

Two things make a repeated verify cheap. Answers are written once the loop's turn has read every
socket, one write a connection (VerifyEndpoint.write_later: a write wakes the client's reader, and
answers written together wake it once). And a body seen lately is not parsed again, nor its allow
rendered again (VerifyEndpoint.decide's memo): both depend on its bytes alone; the decision itself
is made on every request.

It uses public APIs only: asyncio's Protocol and transports, httptools' parser callbacks. What
the request pipeline (tokensvc.web.pipeline) does around the app's own /v1/verify is done here
from the same functions, so the two answer alike (tests/tokensvc/test_verifyport.py compares
them): the body rules and answers (handlers.verify), error bodies (web.errors), the request id,
the client address (web.auth, from every X-Forwarded-For line), request Content-Encodings
(jsonio), the security headers (and HSTS under TLS), the access line and the metrics. The
governor is not consulted: an answer given here holds no slot and waits for nothing but a key.

Bounds, so that no client can make a connection cost more than its share: the request head
(request line and headers) at most MAX_HEAD_BYTES and MAX_HEADERS lines (431; a chunked body's
trailers and chunk lines likewise), the body at most the configured limit (413, connection
closed), at most MAX_PENDING answers held back for order before reading pauses, reading paused
while the client does not read its answers, and a connection without a complete request for
KEEPALIVE_TIMEOUT seconds closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from email.utils import formatdate
from functools import partial
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
#: What a chunk's own line may take (its size in hex, extensions, CRLFs) before it counts against
#: the trailers' bound (2 × MAX_HEAD_BYTES, with the head's last read).
CHUNK_LINE_BYTES: Final = 64
MAX_HEADERS: Final = 100
# The parse-and-answer memo (VerifyEndpoint.decide): bodies up to MEMO_BODY_BYTES (a token with
# a few discharges), MEMO_ENTRIES of them (at most ~2.5 MB with their answers), then emptied.
MEMO_BODY_BYTES: Final = 2048
MEMO_ENTRIES: Final = 1024
# Answers held for order behind one that waits for a key, before the connection stops reading.
MAX_PENDING: Final = 64
# Verifies one read may decide at once; the rest of a pipelined batch is decided PER_TURN at a
# time on later turns of the event loop, with reading paused, so every other connection gets
# its turn in between (a client sending thousands of requests in one write must not stall them).
PER_TURN: Final = 16
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


class _Memo:
    """What a verify body always parses to, and the 200 it gets whenever it is allowed.

    Both depend on the body's bytes alone: the parse obviously, and an allow's body names only
    what the signature-checked token says (subject, token id, expiry, declared values, MFA).
    The decision itself — expiry, revocation, generation, caveats against the context — is
    made again on every request; only its rendering is reused.
    """

    __slots__ = ("allowed", "asked")

    def __init__(self, asked: VerifyBody) -> None:
        self.asked = asked
        self.allowed: Answer | None = None


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
        # Bodies seen lately: a service verifies the same token with the same context again and
        # again (a user's requests), and parsing and rendering are a sixth of such a verify.
        self._memo: dict[bytes, _Memo] = {}
        self._all_closed: asyncio.Event | None = None  # set once all have closed, at shutdown
        # Connections with answers to write at the end of this turn of the event loop.
        self._unwritten: list[VerifyConnection] = []

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
            memo = self._memo.get(body)
            if memo is None:
                asked = parse_request(json_object(body))
                if len(body) <= MEMO_BODY_BYTES:
                    memos = self._memo
                    if len(memos) >= MEMO_ENTRIES:
                        memos.clear()  # a new set of callers: start again (O(1) a request)
                    memo = memos[body] = _Memo(asked)
            else:
                asked = memo.asked
            verified = self._verifier.verify_now(
                asked.token, asked.discharges, require_mfa=asked.require_mfa, **asked.context
            )
            if verified is None:
                return asked
            if memo is None:
                return Answer(200, orjson.dumps(answer(verified)))
            allowed = memo.allowed
            if allowed is None:
                allowed = memo.allowed = Answer(200, orjson.dumps(answer(verified)))
            return allowed
        except TokensvcError as exc:
            return self.error(exc)
        except Exception as exc:  # noqa: BLE001 - the last resort: a 500, no trace
            return Answer(500, orjson.dumps(unexpected_body("POST", PATH, exc)))

    async def decide_later(self, asked: VerifyBody) -> Answer:
        """The answer to a verify that needs I/O (a root key not in memory)."""
        try:
            verified = await self._verifier.verify(
                asked.token, asked.discharges, require_mfa=asked.require_mfa, **asked.context
            )
            return Answer(200, orjson.dumps(answer(verified)))
        except TokensvcError as exc:
            return self.error(exc)
        except Exception as exc:  # noqa: BLE001 - the last resort: a 500, no trace
            return Answer(500, orjson.dumps(unexpected_body("POST", PATH, exc)))

    def remembered(self) -> int:
        """How many bodies the memo holds (for tests and the memory bound)."""
        return len(self._memo)

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

    def write_later(self, connection: VerifyConnection) -> None:
        """Write `connection`'s answers once this turn of the event loop has read every socket.

        Writing an answer to a loopback or LAN peer wakes the peer's reader, and in a virtual
        machine a cross-CPU wake-up costs more than the rest of a cached verify (measured: a
        sixth of the server's CPU a request, in the kernel's sock_def_readable). Written one by
        one with a verify in between, every answer finds the client asleep again; written
        together after the turn's reads, the first wakes it and the rest find it awake. The
        delay is the rest of this turn: the reads and verifies already ready to run.
        """
        if not self._unwritten:
            asyncio.get_running_loop().call_soon(self._write_all)
        self._unwritten.append(connection)

    def _write_all(self) -> None:
        unwritten, self._unwritten = self._unwritten, []
        for connection in unwritten:
            connection.write_out()

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
_CONTENT_LENGTH: Final = b"content-length"
_CONNECTION: Final = b"connection"
_OURS_FIRST: Final = (b"x", b"X", b"c", b"C", b"e", b"E")
_CLOSE: Final = b"Connection: close\r\n"
_NOT_FOUND: Final = Answer(404, orjson.dumps(error_body("not_found", "Not Found")))
_HEALTHY: Final = Answer(200, b'{"status":"ok"}')
_TOO_LARGE: Final = Answer(
    413, orjson.dumps(error_body("payload_too_large", "request body too large"))
)
_NOT_ALLOWED_POST: Final = Answer(
    405, orjson.dumps(error_body("method_not_allowed", "Method Not Allowed")), b"Allow: POST\r\n"
)
_NOT_ALLOWED_GET: Final = Answer(
    405, orjson.dumps(error_body("method_not_allowed", "Method Not Allowed")), b"Allow: GET\r\n"
)
_KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"


class _Deferred:
    """A complete request read past its read's budget (PER_TURN): answered on a later turn of
    the event loop, so one client's pipelined batch cannot hold the loop for every other caller."""

    __slots__ = ("data", "make", "task")

    def __init__(self, make: Callable[[], bytes | asyncio.Task[bytes]]) -> None:
        self.make = make
        self.data: bytes | None = None  # the answer, once made without I/O
        self.task: asyncio.Task[bytes] | None = None  # or the task making it


# What the connection's queue holds, in request order: an answer, a task making one, or a verify
# still to be decided; and whether the connection ends after it.
_Item = bytes | asyncio.Task[bytes] | _Deferred


class VerifyConnection(asyncio.Protocol):
    """One client connection: httptools parses, answers leave in request order."""

    def __init__(self, endpoint: VerifyEndpoint) -> None:
        self._endpoint = endpoint
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        # Answers and what will make them, in request order; empty: an answer is written at once.
        self._pending: deque[tuple[_Item, bool]] = deque()
        # Verifies past a read's budget, decided PER_TURN at a time on later turns of the loop.
        self._backlog: deque[_Deferred] = deque()
        self._draining = False  # a turn of _drain is scheduled
        self._budget = PER_TURN  # verifies this read may still decide at once
        self._closing = False  # an answer that ends the connection has been queued or written
        self._finished = False  # the transport has been told to end: nothing more is written
        self._read_paused = False
        self._write_paused = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._begun = 0  # requests begun on this connection
        self._out: list[bytes] = []  # answers to write at the end of this turn (write_later)
        self._reset()

    def _reset(self) -> None:
        """Per-request state, before each request's first byte."""
        self._in_head = False
        self._head_done = False  # headers complete: what follows on_header now are trailers
        self._head_bytes = 0  # of the request line and the headers llhttp has handed over
        self._raw_head = 0  # read while the head was incomplete, after the read it began in
        self._oversized_head = False
        self._headers = 0
        self._url = b""
        self._request_id: bytes | None = None
        self._forwarded: list[bytes] | None = None
        self._encodings: list[bytes] | None = None
        self._expect = False
        self._connection = False  # a Connection header was sent
        self._length = b""  # Content-Length as sent (llhttp has checked it is one number)
        self._body = b""  # usually one piece; more are joined (bounded by the body limit)
        self._body_bytes = 0
        # After the head, until the request completes: the bytes read, of them the body's, and
        # the chunks begun. What is neither body nor a chunk's own line is trailers, which
        # llhttp holds (and copies at every read) until their line ends: bounded like the head.
        self._complete = False
        self._raw_rest = 0
        self._seen_body = 0
        self._chunks = 0
        self._refusal: Answer | None = None  # decided before the body: sent when it completes
        self._head_method = False  # a HEAD: its answer has no body
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
            task = item.task if isinstance(item, _Deferred) else item
            if isinstance(task, asyncio.Task):
                task.cancel()
        self._pending.clear()
        self._backlog.clear()
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # an answer that ends the connection is out or queued: nothing more is read
        begun = self._begun
        self._budget = PER_TURN
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade or CONNECT: the request has been answered; the bytes after it are not
            # HTTP/1.1 this listener speaks, so the connection ends with its answers.
            self._finish()
            return
        except httptools.HttpParserError:
            if self._closing:
                return  # bytes after a request that ended the connection: not read, not answered
            if self._oversized_head:
                self._refuse_head()
            else:
                self._refuse(BadRequest("malformed HTTP request"))
            return
        if self._begun != begun:
            return  # a request began in this read: it holds at most what follows its start
        if self._in_head:
            # A head still incomplete that began in an earlier read: llhttp holds its bytes.
            self._raw_head += len(data)
            if self._raw_head > MAX_HEAD_BYTES and not self._closing:
                self._refuse_head()
        elif self._head_done and not self._complete:
            # In the body or the trailers. Chunk lines are allowed CHUNK_LINE_BYTES each; the
            # rest beyond the body is trailers (or chunk extensions), bounded as a head is, or
            # one connection could feed llhttp an endless trailer line (tests/listener/
            # test_verifyport.py, the endless-trailer shape).
            self._raw_rest += len(data)
            framing = self._raw_rest - self._seen_body - CHUNK_LINE_BYTES * self._chunks
            if framing > 2 * MAX_HEAD_BYTES and not self._closing:
                self._refuse_head()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its requests until it does.
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._backlog and not self._draining and self._transport is not None:
            self._draining = True
            self._loop.call_soon(self._drain)
        self._maybe_resume_reading()

    def eof_received(self) -> bool | None:
        # The client sent all it will: answer what is pending, then close (return False).
        if not self._pending:
            # Answers decided in this turn are still queued for its end (write_later), and
            # returning False closes the transport now: hand them over first, or they are lost
            # (uvloop reads the data and the end of a full buffer in one callback).
            self.write_out()
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
        if self._head_bytes > MAX_HEAD_BYTES:
            self._oversized_head = True  # answered 431 by data_received
            raise httptools.HttpParserError("request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        self._head_bytes += len(name) + len(value)
        if self._headers > MAX_HEADERS or self._head_bytes > MAX_HEAD_BYTES:
            # httptools turns any exception raised here into an HttpParserError from feed_data;
            # data_received tells this one by the flag and answers 431.
            self._oversized_head = True
            raise httptools.HttpParserError("request header fields too large")
        if self._head_done or name[:1] not in _OURS_FIRST:
            # Trailers (fields after a chunked body) are counted but never read: the API port's
            # aiohttp does not read them either, and a proxy may pass them unchecked.
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
        elif name == _CONTENT_LENGTH:
            self._length = value
        elif name == _EXPECT:
            self._expect = value.strip().lower() == b"100-continue"
        elif name == _CONNECTION:
            self._connection = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_done = True
        method = self._parser.get_method()
        if (
            self._url == b"/v1/verify"
            and method == b"POST"
            and self._encodings is None
            and len(self._length) < 7  # at most 999,999 bytes: the limit is checked below
        ):
            if self._length and int(self._length) > self._endpoint.max_body:
                self._refuse_body()
            elif self._expect:
                self._emit(_CONTINUE, close=False)
            return  # the request every service sends: nothing to refuse
        path = self._path()
        self._head_method = method == b"HEAD"
        if path == HEALTH_PATH:
            # Liveness of this process, for a probe of the verify port (as the app's /healthz).
            self._refusal = _HEALTHY if method in (b"GET", b"HEAD") else _NOT_ALLOWED_GET
        elif path != PATH:
            self._refusal = _NOT_FOUND
        elif method != b"POST":
            self._refusal = _NOT_ALLOWED_POST
        elif self._length and int(self._length) > self._endpoint.max_body:
            self._refuse_body()
            return
        elif self._encodings is not None:
            try:
                content_coding(
                    CIMultiDict(
                        ("Content-Encoding", value.decode("latin-1")) for value in self._encodings
                    )
                )
            except TokensvcError as exc:
                self._refusal = self._endpoint.error(exc)
        if self._expect:
            if self._refusal is None:
                self._emit(_CONTINUE, close=False)
            else:
                # The client waits for 100 before it sends its body: answer now, read no more.
                self._answer_refusal(close=True)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        self._seen_body += len(body)
        if self._refusal is not None or self._closing:
            return  # not read: the answer is already decided
        self._body_bytes += len(body)
        if self._body_bytes > self._endpoint.max_body:
            self._refuse_body()  # a chunked body, or a length llhttp did not hand us
            return
        self._body = self._body + body if self._body else body

    def on_message_complete(self) -> None:
        self._complete = True
        if self._closing:
            return
        keep_alive = self._parser.should_keep_alive()
        if self._refusal is not None:
            self._answer_refusal(close=not keep_alive)
            return
        endpoint = self._endpoint
        coding = None
        if self._encodings is not None:
            coding = content_coding(
                CIMultiDict(("Content-Encoding", v.decode("latin-1")) for v in self._encodings)
            )
        request_id = request_id_for(
            self._request_id.decode("latin-1") if self._request_id is not None else None
        )
        client = (
            endpoint.client(self._peer, self._forwarded) if endpoint.trusted_proxies else self._peer
        )
        connection = self._connection_header(keep_alive)
        if not keep_alive:
            self._closing = True
        if self._budget > 0 and not self._backlog:
            self._budget -= 1
            item = self._decide(self._body, coding, request_id, self._start, client, connection)
            self._put(item, close=not keep_alive)
        else:
            make = partial(
                self._decide, self._body, coding, request_id, self._start, client, connection
            )
            self._defer(make, close=not keep_alive)

    def _put(self, item: bytes | asyncio.Task[bytes], *, close: bool) -> None:
        """Queue (or write) an answer, or the task making it."""
        if isinstance(item, bytes):
            self._emit(item, close=close)
            return
        self._pending.append((item, close))
        if len(self._pending) >= MAX_PENDING:
            self._pause_reading()

    def _defer(self, make: Callable[[], bytes | asyncio.Task[bytes]], *, close: bool) -> None:
        """This read has had its share of the loop: answer on a later turn, in order."""
        deferred = _Deferred(make)
        self._pending.append((deferred, close))
        self._backlog.append(deferred)
        self._pause_reading()
        if not self._draining:
            self._draining = True
            self._loop.call_soon(self._drain)

    # ---- deciding ---------------------------------------------------------------------------------

    def _decide(
        self,
        body: bytes,
        coding: str | None,
        request_id: str,
        start: float,
        client: str | None,
        connection: bytes,
    ) -> bytes | asyncio.Task[bytes]:
        """The answer to a verify, or the task making it when a root key must be read first."""
        endpoint = self._endpoint
        # Security events logged while answering carry the request's id, as in the pipeline.
        bound = CURRENT_REQUEST_ID.set(request_id)
        try:
            decided = endpoint.decide(body, coding)
            if isinstance(decided, Answer):
                return endpoint.render(
                    decided, request_id, "POST", PATH, PATH, start, client, connection
                )
        finally:
            CURRENT_REQUEST_ID.reset(bound)
        task = self._loop.create_task(self._later(decided, request_id, start, client, connection))
        task.add_done_callback(self._task_done)
        return task

    def _drain(self) -> None:
        """Answer up to PER_TURN requests of the backlog, then yield the loop to the others."""
        self._draining = False
        if self._write_paused:
            # The client is not reading its answers: make no more until it does (resume_writing
            # drains on), or one read of tiny requests could queue megabytes of answers.
            return
        backlog = self._backlog
        for _ in range(PER_TURN):
            if not backlog or self._transport is None:
                break
            d = backlog.popleft()
            item = d.make()
            if isinstance(item, bytes):
                d.data = item
            else:
                d.task = item
        self._flush()
        if backlog and self._transport is not None:
            self._draining = True
            self._loop.call_soon(self._drain)

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
        return endpoint.render(decided, request_id, "POST", PATH, PATH, start, client, connection)

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
        # An HTTP/1.0 request is kept alive only when it asks so in a Connection header: without
        # one this is HTTP/1.1, and the version (a string built per call) is not asked for.
        if self._connection and self._parser.get_http_version() == "1.0":
            return _KEEP_ALIVE
        return b""

    def _answer_refusal(self, *, close: bool) -> None:
        """Answer the request with the refusal (or health answer) decided from its head."""
        refusal = self._refusal
        assert refusal is not None  # noqa: S101 - narrows the type; set before the call
        path = self._path()
        rid = self._request_id.decode("latin-1") if self._request_id is not None else None
        method = self._parser.get_method().decode("latin-1")
        client = self._endpoint.client(self._peer, self._forwarded)
        connection = _CLOSE if close else self._connection_header(keep_alive=True)
        args = (refusal, rid, method, path, self._start, client, connection, self._head_method)
        if self._budget > 0 and not self._backlog:
            self._budget -= 1
            self._emit(self._render_refusal(*args), close=close)
        else:
            self._defer(partial(self._render_refusal, *args), close=close)

    def _render_refusal(
        self,
        refusal: Answer,
        rid: str | None,
        method: str,
        path: str,
        start: float,
        client: str | None,
        connection: bytes,
        head: bool,
    ) -> bytes:
        route = path if path in (PATH, HEALTH_PATH) else UNMATCHED
        rendered = self._endpoint.render(
            refusal, request_id_for(rid), method, path, route, start, client, connection
        )
        if head:
            # A HEAD is answered with the headers a GET would get (Content-Length included),
            # never a body: the client reads none, so one here would be its next answer.
            rendered = rendered[: len(rendered) - len(refusal.body)]
        return rendered

    def _refuse_body(self) -> None:
        """A body over the limit, as the app answers it (jsonio.read_body): 413, read no more."""
        self._refusal = _TOO_LARGE
        self._answer_refusal(close=True)

    def _refuse(self, exc: TokensvcError, status: int | None = None) -> None:
        """Answer a request llhttp refused (or that broke a bound), then close the connection."""
        answer_ = self._endpoint.error(exc)
        if status is not None:
            answer_ = Answer(status, answer_.body, answer_.extra)
        rendered = self._endpoint.render(
            answer_,
            request_id_for(None),
            "-",
            "-",
            UNMATCHED,
            self._start or perf_counter(),
            self._peer,
            _CLOSE,
        )
        self._emit(rendered, close=True)

    def _refuse_head(self) -> None:
        self._refuse(BadRequest("request header fields too large"), status=431)

    def _emit(self, data: bytes, *, close: bool) -> None:
        """Write an answer now, or queue it behind answers not made yet (request order)."""
        if self._finished:
            return
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
        self._write(data)
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
        while pending and transport is not None and not self._finished:
            item, close = pending[0]
            if isinstance(item, _Deferred):
                if item.task is not None:
                    item = item.task
                elif item.data is not None:
                    item = item.data
                else:
                    break  # not decided yet: _drain comes back to it
            if not isinstance(item, bytes):
                if not item.done():
                    break
                item = item.result()
            pending.popleft()
            if item:
                self._write(item)
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
        if transport is None or self._finished:
            return
        self._finished = True
        self.write_out()  # what is queued goes before the end
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
        self._loop.call_later(LINGER, transport.abort if self._write_paused else transport.close)

    def _write(self, data: bytes) -> None:
        """Queue bytes for the connection, written at the end of the loop's turn (in order)."""
        if not self._out:
            self._endpoint.write_later(self)
        self._out.append(data)

    def write_out(self) -> None:
        """Write what `_write` queued, in one call."""
        out = self._out
        if not out:
            return
        self._out = []
        transport = self._transport
        if transport is not None:
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _touch(self) -> None:
        self._deadline = self._loop.time() + self._endpoint.keepalive_timeout

    def _on_timer(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        now = self._loop.time()
        if now >= self._deadline:
            if self._write_paused or transport.get_write_buffer_size():
                # A client that stopped reading its answers: a close would wait for it forever
                # (kernel buffers and a descriptor held), so the connection is dropped.
                transport.abort()
                return
            if not self._pending:
                transport.close()
                return
            self._touch()  # answers still being made (a key read): not idle
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self._read_paused
            and not self._write_paused
            and not self._backlog
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
