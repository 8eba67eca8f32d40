"""The verify listener of `tokensvc serve` (tokensvc.web.verifyport), over real sockets.

It parses with httptools and answers in the parser's callbacks, so what matters is that its
answers are the app's answers to the same /v1/verify, that it keeps HTTP/1.1's order on a
connection, and that it bounds what a client can make it hold. The other API tests send their
verifies to it as well (the `client` fixture); these pin down the parts only raw HTTP can show.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.served import ServedTestServer
from tests.tokensvc.test_api_verify import mint
from tokensvc.macaroons.identifier import decode_identifier
from tokensvc.web import appkeys, verifyport
from tokensvc.web.app import create_app
from tokensvc.web.headers import HSTS
from tokensvc.web.tls import ssl_context

if TYPE_CHECKING:
    from tests.conftest import FakeClock
    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]

CONTEXT = {"operation": "read", "resource": "/docs/1", "audience": "files"}
# Headers that differ between any two answers, whichever port gives them.
PER_ANSWER = {"date", "x-request-id"}


@pytest.fixture
async def token(client: Client, admin_token: str) -> str:
    return await read_token(client, admin_token)


async def read_token(client: Client, admin_token: str) -> str:
    """alice's token for read on /docs/* in audience files: what CONTEXT asks, allowed."""
    body = await mint(
        client,
        admin_token,
        subject="alice",
        ttl="1h",
        operations=["read"],
        resources=["/docs/*"],
        audience=["files"],
    )
    return str(body["token"])


def listener_of(client: Client) -> ServedTestServer:
    server = client.server
    assert isinstance(server, ServedTestServer)
    return server


def verify_request(body: bytes, *, extra: str = "", version: str = "1.1") -> bytes:
    return (
        f"POST /v1/verify HTTP/{version}\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def verify_body(token: str, **context: str) -> bytes:
    return json.dumps({"token": token, "context": context or CONTEXT}).encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer: status, headers (lower-case names), body (by Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 10)
    return int(status_line.split()[1]), headers, body


async def connect(client: Client) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", listener_of(client).verify_port)


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 10) == b""


# ---- the same answers as the app's /v1/verify ------------------------------------------------------


async def test_every_kind_of_answer_matches_the_apps(client: Client, token: str) -> None:
    gz = gzip.compress(verify_body(token))
    cases: list[tuple[str, str, str, bytes, dict[str, str]]] = [
        ("valid", "POST", "/v1/verify", verify_body(token), {}),
        ("valid, query string", "POST", "/v1/verify?x=1", verify_body(token), {}),
        ("valid, no context", "POST", "/v1/verify", json.dumps({"token": token}).encode(), {}),
        ("denied", "POST", "/v1/verify", verify_body(token, operation="write"), {}),
        ("tampered", "POST", "/v1/verify", verify_body(token[:-1] + "AB"[token[-1] == "A"]), {}),
        ("garbage token", "POST", "/v1/verify", verify_body("tsv1_garbage"), {}),
        ("not JSON", "POST", "/v1/verify", b"{not json", {}),
        ("not an object", "POST", "/v1/verify", b"[1, 2]", {}),
        ("unknown field", "POST", "/v1/verify", json.dumps({"token": token, "x": 1}).encode(), {}),
        ("bad context", "POST", "/v1/verify", b'{"token": "a", "context": {"operation": 5}}', {}),
        ("empty body", "POST", "/v1/verify", b"", {}),
        ("gzip", "POST", "/v1/verify", gz, {"Content-Encoding": "gzip"}),
        ("bad gzip", "POST", "/v1/verify", b"nope", {"Content-Encoding": "gzip"}),
        ("br", "POST", "/v1/verify", verify_body(token), {"Content-Encoding": "br"}),
        ("GET", "GET", "/v1/verify", b"", {}),
        ("no such path", "POST", "/v1/nope", b"", {}),
        ("healthz", "GET", "/healthz", b"", {}),
    ]
    server = listener_of(client)
    for name, method, path, body, headers in cases:
        answers = []
        listener = server.app_url(path).with_port(server.verify_port)
        for url in (listener, server.app_url(path)):
            resp = await client.session.request(
                method,
                url,
                data=body,
                headers={"Content-Type": "application/json", **headers},
                skip_auto_headers={"Accept-Encoding"},
            )
            got = {k.lower(): v for k, v in resp.headers.items() if k.lower() not in PER_ANSWER}
            answers.append((resp.status, got, await resp.read()))
            assert "x-request-id" in {k.lower() for k in resp.headers}, name
        assert answers[0] == answers[1], name


async def test_a_body_over_the_limit_is_413_and_ends_the_connection(
    client: Client, app_config: Config
) -> None:
    body = b'{"token": "' + b"a" * app_config.max_body_bytes + b'"}'
    reader, writer = await connect(client)
    try:
        writer.write(verify_request(body))
        status, headers, answer = await read_answer(reader)
        assert status == 413 and json.loads(answer)["error"]["code"] == "payload_too_large"
        assert headers["connection"] == "close" and await closed(reader)
    finally:
        writer.close()


async def test_a_safe_request_id_is_echoed_and_an_unsafe_one_replaced(
    client: Client, token: str
) -> None:
    resp = await client.post(
        "/v1/verify", data=verify_body(token), headers={"X-Request-ID": "abc-1"}
    )
    assert resp.status == 200 and resp.headers["X-Request-ID"] == "abc-1"
    resp = await client.post(
        "/v1/verify", data=verify_body(token), headers={"X-Request-ID": "bad id<>"}
    )
    assert resp.status == 200
    assert resp.headers["X-Request-ID"] != "bad id<>"
    assert len(resp.headers["X-Request-ID"]) == 32


# ---- order and connection handling ---------------------------------------------------------------


async def test_pipelined_answers_keep_request_order_across_one_that_waits_for_a_key(
    client: Client, token: str, admin_token: str
) -> None:
    """A verify that must read its root key is answered later than the ones behind it are
    decided; their answers wait for it, so the client reads them in request order."""
    app = client.server.app
    verifier = app[appkeys.VERIFIER]
    other = str((await mint(client, admin_token, subject="bob", ttl="1h"))["token"])
    key_id = decode_identifier(verifier.parse(other).identifier).key_id
    # The key is read again (a task), and the token was never verified: no chain cached.
    app[appkeys.KEYRING]._cache.evict(key_id)  # not forget(): that marks it revoked
    reader, writer = await connect(client)
    try:
        writer.write(
            verify_request(verify_body(token), extra="X-Request-ID: first\r\n")
            + verify_request(
                json.dumps({"token": other}).encode(), extra="X-Request-ID: second\r\n"
            )
            + verify_request(verify_body("tsv1_nope"), extra="X-Request-ID: third\r\n")
            + b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Request-ID: fourth\r\n\r\n"
            + verify_request(verify_body(token), extra="X-Request-ID: fifth\r\n")
        )
        answers = [await read_answer(reader) for _ in range(5)]
    finally:
        writer.close()
    assert [(status, headers["x-request-id"]) for status, headers, _ in answers] == [
        (200, "first"),
        (200, "second"),
        (401, "third"),
        (200, "fourth"),
        (200, "fifth"),
    ]
    assert json.loads(answers[1][2])["subject"] == "bob"


async def test_many_pipelined_verifies_unread_by_the_client_all_get_answers_in_order(
    client: Client, token: str
) -> None:
    # Enough that the answers fill the socket buffers while the client is not reading: the
    # listener must pause reading, then resume once the client reads, without losing one.
    count = 3000
    reader, writer = await connect(client)
    try:
        writer.write(
            b"".join(
                verify_request(verify_body(token), extra=f"X-Request-ID: r{i}\r\n")
                for i in range(count)
            )
        )
        await asyncio.sleep(0.5)
        answers = [await read_answer(reader) for _ in range(count)]
    finally:
        writer.close()
    assert [headers["x-request-id"] for _, headers, _ in answers] == [f"r{i}" for i in range(count)]
    assert {status for status, _, _ in answers} == {200}


async def test_a_request_split_across_segments_is_answered_byte_by_byte(
    client: Client, token: str
) -> None:
    request = verify_request(verify_body(token))
    reader, writer = await connect(client)
    try:
        for i in range(len(request)):
            writer.write(request[i : i + 1])
            await writer.drain()
            if i % 40 == 0:
                await asyncio.sleep(0.001)
        status, _, answer = await read_answer(reader)
        writer.write(verify_request(verify_body(token)))
        next_status, _, _ = await read_answer(reader)
    finally:
        writer.close()
    assert status == 200 and json.loads(answer)["subject"] == "alice"
    assert next_status == 200


async def test_a_chunked_body_and_expect_100_continue_are_answered(
    client: Client, token: str
) -> None:
    body = verify_body(token)
    reader, writer = await connect(client)
    try:
        writer.write(
            b"POST /v1/verify HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(body[:20]):x}\r\n".encode()
            + body[:20]
            + b"\r\n"
            + f"{len(body[20:]):x}\r\n".encode()
            + body[20:]
            + b"\r\n0\r\n\r\n"
        )
        assert (await read_answer(reader))[0] == 200
        writer.write(
            b"POST /v1/verify HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(body)
        assert (await read_answer(reader))[0] == 200
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("version", "extra"), [("1.1", "Connection: close\r\n"), ("1.0", "")], ids=["close", "http10"]
)
async def test_a_request_that_ends_the_connection_is_answered_then_the_connection_closed(
    client: Client, token: str, version: str, extra: str
) -> None:
    reader, writer = await connect(client)
    try:
        # A second request after it is never answered.
        writer.write(
            verify_request(verify_body(token), extra=extra, version=version)
            + verify_request(verify_body(token))
        )
        status, headers, _ = await read_answer(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await closed(reader)
    finally:
        writer.close()


async def test_a_half_closed_connection_gets_its_answers(client: Client, token: str) -> None:
    reader, writer = await connect(client)
    try:
        writer.write(verify_request(verify_body(token)) * 3)
        writer.write_eof()
        assert [(await read_answer(reader))[0] for _ in range(3)] == [200, 200, 200]
        assert await closed(reader)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        # Request smuggling: two lengths, a bad chunk size, a space before the colon.
        b"POST /v1/verify HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /v1/verify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/verify HTTP/1.1\r\nContent-Length : 4\r\n\r\nabcd",
        b"POST /v1/verify HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
    ],
    ids=["not-http", "cl-and-te", "bad-chunk", "space-before-colon", "two-lengths"],
)
async def test_what_llhttp_refuses_is_a_400_after_the_answers_before_it_then_the_end(
    client: Client, token: str, garbage: bytes
) -> None:
    reader, writer = await connect(client)
    try:
        writer.write(verify_request(verify_body(token)) + garbage)
        assert (await read_answer(reader))[0] == 200
        status, headers, body = await read_answer(reader)
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
        assert headers["connection"] == "close" and await closed(reader)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "shape",
    ["one-long-header", "many-headers", "endless-head", "endless-trailer", "endless-chunk-line"],
)
async def test_a_head_over_the_bounds_is_431_and_ends_the_connection(
    client: Client, token: str, shape: str
) -> None:
    """Red team (the trailers): llhttp holds an unfinished trailer line, copying it at every
    read, and no head bound saw it — one connection grew the server by hundreds of MB and stalled
    its loop for seconds. Trailers and chunk lines are bounded like the head now."""
    reader, writer = await connect(client)
    try:
        writer.write(b"POST /v1/verify HTTP/1.1\r\nHost: t\r\n")
        if shape in ("endless-trailer", "endless-chunk-line"):
            body = verify_body(token)
            writer.write(b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(body), body))
            writer.write(b"0\r\nX-A: " if shape == "endless-trailer" else b"1;ext=")
            for _ in range(2 * verifyport.MAX_HEAD_BYTES // 1000 + 4):
                writer.write(b"c" * 1000)  # a line that never ends
                await writer.drain()
                await asyncio.sleep(0.001)
        elif shape == "one-long-header":
            writer.write(b"X-Long: " + b"a" * (verifyport.MAX_HEAD_BYTES + 10) + b"\r\n\r\n")
        elif shape == "many-headers":
            writer.write(b"".join(b"X-%d: a\r\n" % i for i in range(verifyport.MAX_HEADERS + 1)))
            writer.write(b"\r\n")
        else:  # a head that never ends, sent in small pieces
            for _ in range(verifyport.MAX_HEAD_BYTES // 1000 + 2):
                writer.write(b"X-Slow: " + b"b" * 990 + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.001)
        status, headers, _ = await read_answer(reader)
        assert status == 431 and headers["connection"] == "close"
        assert await closed(reader)
    finally:
        writer.close()


async def test_a_body_in_many_small_chunks_is_not_mistaken_for_long_trailers(
    client: Client, token: str
) -> None:
    """The trailer bound allows each chunk its own line: 9,000 one-byte chunks (~45 KB of chunk
    lines, over twice the head bound) sent over many reads are a body, answered 200."""
    body = verify_body(token) + b" " * (9000 - len(verify_body(token)))
    framed = b"".join(b"1\r\n%c\r\n" % byte for byte in body) + b"0\r\n\r\n"
    reader, writer = await connect(client)
    try:
        writer.write(b"POST /v1/verify HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for at in range(0, len(framed), 3000):
            writer.write(framed[at : at + 3000])
            await writer.drain()
            await asyncio.sleep(0.001)
        status, _, answer = await read_answer(reader)
        assert status == 200 and json.loads(answer)["valid"] is True
    finally:
        writer.close()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    client: Client, token: str
) -> None:
    listener = listener_of(client).listener
    assert listener is not None
    listener[1].keepalive_timeout = 0.3
    reader, writer = await connect(client)
    try:
        writer.write(verify_request(verify_body(token)))
        assert (await read_answer(reader))[0] == 200
        writer.write(b"POST /v1/verify HTTP/1.1\r\n")  # and never the rest
        assert await closed(reader)
    finally:
        writer.close()


async def test_over_native_tls_answers_carry_hsts_and_match_the_apps(
    app_config: Config, clock: FakeClock, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    config = app_config.model_copy(update={"tls_cert_file": str(cert), "tls_key_file": str(key)})
    server = ServedTestServer(create_app(config, clock=clock), verify_ssl=ssl_context(config))
    context = ssl.create_default_context(cafile=str(cert))
    async with TestClient(server) as served:
        login = await served.post(
            "/v1/login", json={"username": "admin", "password": config.admin_password}
        )
        token = (await login.json())["token"]
        resp = await served.post("/v1/verify", json={"token": token}, ssl=context)
        assert resp.status == 200 and resp.headers["Strict-Transport-Security"] == HSTS
        reference = await served.session.post(server.app_url("/v1/verify"), json={"token": token})
        assert await resp.json() == await reference.json()
        assert {k.lower() for k in resp.headers if k.lower() not in PER_ANSWER} == {
            k.lower() for k in reference.headers if k.lower() not in PER_ANSWER
        } | {"strict-transport-security"}


# ---- what a red-team pass found (issue 17) ----------------------------------------------------------


async def test_one_clients_pipelined_flood_does_not_hold_the_loop_for_another(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 requests in one write on one connection are answered PER_TURN at a time with the
    loop yielded in between: a health check on another connection is answered among them, not
    after all of them."""
    answered: list[str] = []
    record = verifyport.record_request

    def recording(request_id: str, method: str, path: str, *args: object) -> None:
        answered.append(path)
        record(request_id, method, path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(verifyport, "record_request", recording)
    count = 2000
    flood_reader, flood = await connect(client)
    reader, writer = await connect(client)
    try:
        flood.write(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" * count)
        await flood.drain()
        for _ in range(200):  # until the listener has begun on the flood
            if answered:
                break
            await asyncio.sleep(0.005)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_answer(reader))[0] == 200
        for _ in range(count):
            assert (await read_answer(flood_reader))[0] == 404
    finally:
        flood.close()
        writer.close()
    assert answered.index("/healthz") < count


@pytest.mark.parametrize(
    "after",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nX\r\n",
        b"GET /healthz HTTP/1.0\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
    ],
    ids=["bytes-after-close", "http10-twice"],
)
async def test_bytes_after_a_request_that_ends_the_connection_are_dropped_quietly(
    client: Client, after: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await connect(client)
    try:
        writer.write(after)
        assert (await read_answer(reader))[0] == 200
        assert await closed(reader)
    finally:
        writer.close()
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_trailers_are_never_read_as_headers(client: Client, token: str) -> None:
    """Fields after a chunked body (trailers) change nothing: not the coding of the body, not
    the request id; the listener answers what the app answers."""
    body = gzip.compress(verify_body(token))
    request = (
        b"POST /v1/verify HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"X-Request-ID: in-the-head\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\nContent-Encoding: gzip\r\nX-Request-ID: in-a-trailer\r\n\r\n"
    )
    server = listener_of(client)
    statuses = []
    for port in (server.verify_port, server.port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            status, headers, _ = await read_answer(reader)
        finally:
            writer.close()
        statuses.append(status)
        assert headers["x-request-id"] == "in-the-head"
    assert statuses == [400, 400]  # gzip bytes read as they are: not JSON, on both ports


async def test_a_head_request_gets_headers_and_no_body(client: Client) -> None:
    reader, writer = await connect(client)
    try:
        writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /v1/verify HTTP/1.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 405 ")  # the next answer starts right there
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_answer(reader))[0] == 200
    finally:
        writer.close()


async def test_a_client_that_never_reads_is_dropped_after_the_keepalive_timeout(
    client: Client,
) -> None:
    listener = listener_of(client).listener
    assert listener is not None
    endpoint = listener[1]
    endpoint.keepalive_timeout = 0.5
    _, writer = await connect(client)
    try:
        writer.write(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" * 20000)  # ~2 MB of answers
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not endpoint.connections:
                break
        assert not endpoint.connections
    finally:
        writer.close()


async def test_a_declared_length_over_the_limit_and_an_expect_elsewhere_are_answered_at_once(
    client: Client, app_config: Config
) -> None:
    reader, writer = await connect(client)
    try:
        writer.write(
            b"POST /v1/verify HTTP/1.1\r\nHost: t\r\n"
            + f"Content-Length: {app_config.max_body_bytes + 1}\r\n\r\n".encode()
        )
        status, headers, _ = await read_answer(reader)  # without the body ever being sent
        assert status == 413 and headers["connection"] == "close"
    finally:
        writer.close()
    reader, writer = await connect(client)
    try:
        writer.write(b"POST /nope HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n")
        writer.write(b"Content-Length: 10\r\n\r\n")
        status, headers, _ = await read_answer(reader)
        assert status == 404 and headers["connection"] == "close"
    finally:
        writer.close()


async def test_a_request_target_over_the_head_bound_is_431(client: Client) -> None:
    reader, writer = await connect(client)
    try:
        path = "/v1/verify?" + "a" * (verifyport.MAX_HEAD_BYTES + 10)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".encode())
        assert (await read_answer(reader))[0] == 431
    finally:
        writer.close()


class RecordingTransport(asyncio.Transport):
    """A transport that keeps what is written (the listener's write timing, not a socket's)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


async def test_answers_of_one_turn_are_written_after_its_reads_one_write_a_connection(
    client: Client, token: str
) -> None:
    """Answers decided while the loop reads are written once it has read every socket: each
    connection gets its answers in one write (pipelined ones joined, in order), none before."""
    endpoint = verifyport.VerifyEndpoint.for_app(client.server.app)
    first, second = RecordingTransport(), RecordingTransport()
    a, b = verifyport.VerifyConnection(endpoint), verifyport.VerifyConnection(endpoint)
    a.connection_made(first)
    b.connection_made(second)
    body = verify_body(token)
    a.data_received(verify_request(body) + verify_request(b"{}") + verify_request(body))
    b.data_received(verify_request(body))
    assert first.writes == [] and second.writes == []  # decided, not yet written
    await asyncio.sleep(0)
    assert len(first.writes) == 1 and len(second.writes) == 1
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", first.writes[0])
    assert statuses == [b"200", b"400", b"200"]
    assert second.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    a.connection_lost(None)
    b.connection_lost(None)


async def test_a_remembered_body_is_decided_again_every_time(
    client: Client, admin_token: str
) -> None:
    """The listener reuses a body's parse and the rendering of its allow, never the decision:
    the same bytes are allowed, then refused once the context they carry no longer holds for the
    token (a revocation), and a body it no longer remembers is parsed again."""
    minted = await mint(
        client, admin_token, subject="carol", ttl="1h", operations=["read"], audience=["files"]
    )
    body = verify_body(str(minted["token"]))
    reader, writer = await connect(client)
    try:
        writer.write(verify_request(body) * 2)
        first, second = [await read_answer(reader) for _ in range(2)]
        assert first[0] == second[0] == 200 and first[2] == second[2]
        assert json.loads(first[2])["subject"] == "carol"
        revoked = await client.delete(
            f"/v1/tokens/{minted['token_id']}", headers={"Authorization": f"Bearer {admin_token}"}
        )
        assert revoked.status in (200, 204)
        writer.write(verify_request(body))
        status, _, refused = await read_answer(reader)
        assert status == 401 and "revoked" in json.loads(refused)["reason"]
    finally:
        writer.close()


async def test_the_body_memo_is_bounded(client: Client, token: str) -> None:
    """At most MEMO_ENTRIES bodies are remembered (then it starts again), and none larger than
    MEMO_BODY_BYTES: distinct callers cannot grow it."""
    endpoint = verifyport.VerifyEndpoint.for_app(client.server.app)
    for n in range(verifyport.MEMO_ENTRIES + 10):
        assert isinstance(
            endpoint.decide(verify_body(token, operation=f"op{n}"), None), bytes | verifyport.Answer
        )
    assert 0 < endpoint.remembered() <= verifyport.MEMO_ENTRIES
    before = endpoint.remembered()
    big = json.dumps({"token": token, "context": {**CONTEXT, "resource": "/" + "x" * 1900}})
    assert len(big) > verifyport.MEMO_BODY_BYTES
    decided = endpoint.decide(big.encode(), None)
    assert isinstance(decided, verifyport.Answer) and decided.status == 403  # not /docs/*
    assert endpoint.remembered() == before


@pytest.mark.parametrize(
    ("version", "extra", "kept", "header"),
    [
        ("1.1", "", True, None),
        ("1.1", "Connection: keep-alive\r\n", True, None),
        ("1.0", "Connection: keep-alive\r\n", True, "keep-alive"),
        ("1.0", "", False, "close"),
        ("1.1", "Connection: close\r\n", False, "close"),
    ],
)
async def test_the_connection_header_follows_the_version_and_the_request(
    client: Client, token: str, version: str, extra: str, kept: bool, header: str | None
) -> None:
    """HTTP/1.0 is kept alive only when it asks, and is then told so; HTTP/1.1 is by default."""
    reader, writer = await connect(client)
    try:
        writer.write(verify_request(verify_body(token), extra=extra, version=version))
        status, headers, _ = await read_answer(reader)
        assert status == 200 and headers.get("connection") == header
        if kept:
            writer.write(verify_request(verify_body(token), extra=extra, version=version))
            assert (await read_answer(reader))[0] == 200
        else:
            assert await closed(reader)
    finally:
        writer.close()


class SlowReaderTransport(RecordingTransport):
    """A transport whose client reads nothing: past 64 KB it tells the protocol to pause
    writing, as asyncio's transports do at their high-water mark."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.paused = False
        self.reading = False  # the client reads again: no more pauses

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        if not (self.paused or self.reading) and sum(map(len, self.writes)) > 64 * 1024:
            self.paused = True
            self.protocol.pause_writing()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_a_client_that_stops_reading_gets_no_more_answers_made_until_it_reads(
    client: Client,
) -> None:
    """One read of tiny pipelined requests holds thousands of them (each answer ~15× its
    request): while the client does not read, the listener makes no more answers; once it
    reads again, every answer comes, in order."""
    endpoint = verifyport.VerifyEndpoint.for_app(client.server.app)
    connection = verifyport.VerifyConnection(endpoint)
    transport = SlowReaderTransport(connection)
    connection.connection_made(transport)
    count = 4000
    connection.data_received(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" * count)
    for _ in range(200):  # far more turns than the backlog needs
        await asyncio.sleep(0)
    made = b"".join(transport.writes).count(b"HTTP/1.1 404 ")
    assert transport.paused and made < count // 10
    transport.paused, transport.reading = False, True
    transport.writes.clear()
    connection.resume_writing()
    for _ in range(400):
        await asyncio.sleep(0)
    assert made + b"".join(transport.writes).count(b"HTTP/1.1 404 ") == count
    connection.connection_lost(None)
