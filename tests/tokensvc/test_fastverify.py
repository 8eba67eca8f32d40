"""The fast /v1/verify path of `tokensvc serve` (tokensvc.web.fastverify), over real sockets.

It answers complete verifies inside the connection's read callback, so what matters is that its
answers are the pipeline's answers, that it keeps HTTP/1.1's order on a connection, and that
everything it does not take reaches aiohttp intact. The other API tests run through it as well
(the `client` fixture); these pin down the parts only raw HTTP can show.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.served import ServedTestServer
from tests.tokensvc.test_api_verify import bearer, mint
from tokensvc.macaroons.identifier import decode_identifier
from tokensvc.web import appkeys, fastverify
from tokensvc.web.app import create_app
from tokensvc.web.headers import HSTS
from tokensvc.web.tls import ssl_context

if TYPE_CHECKING:
    from tests.conftest import FakeClock
    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]

CONTEXT = {"operation": "read", "resource": "/docs/1", "audience": "files"}
# Headers that differ between any two answers, whichever path gives them.
PER_ANSWER = {"date", "x-request-id"}


@pytest.fixture
def fast_answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of what the fast path did: requests it answered, and ones it handed to aiohttp."""
    counts = {"answered": 0, "handed_on": 0}
    respond = fastverify.FastVerify.respond

    def counting(self: fastverify.FastVerify, *args: Any) -> bytes | None:
        response = respond(self, *args)
        counts["answered" if response is not None else "handed_on"] += 1
        return response

    monkeypatch.setattr(fastverify.FastVerify, "respond", counting)
    return counts


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every chunk the served connections read from their sockets, in order."""
    chunks: list[bytes] = []
    data_received = fastverify.FastRequestHandler.data_received

    def recording(self: fastverify.FastRequestHandler, data: bytes) -> None:
        chunks.append(bytes(data))
        data_received(self, data)

    monkeypatch.setattr(fastverify.FastRequestHandler, "data_received", recording)
    return chunks


@pytest.fixture
async def token(client: Client, admin_token: str) -> str:
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


@pytest.fixture
async def plain(app_config: Config, clock: FakeClock) -> AsyncIterator[Client]:
    """A second app on the same database and KEK, served by aiohttp's own runner: the reference."""
    async with TestClient(TestServer(create_app(app_config, clock=clock))) as plain_client:
        yield plain_client


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
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return int(status_line.split()[1]), headers, body


async def connect(client: Client) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(client.server.host, client.server.port)


# ---- the same answers as aiohttp's path --------------------------------------------------------------


async def test_every_kind_of_answer_matches_the_pipelines(
    client: Client, plain: Client, token: str, fast_answers: dict[str, int]
) -> None:
    cases: list[tuple[str, bytes]] = [
        ("valid", verify_body(token)),
        ("valid, no context", json.dumps({"token": token}).encode()),
        ("denied by a caveat", verify_body(token, operation="write", resource="/docs/1")),
        ("tampered", verify_body(token[:-1] + ("A" if token[-1] != "A" else "B"))),
        ("garbage token", verify_body("tsv1_garbage")),
        ("not JSON", b"{not json"),
        ("not an object", b"[1, 2]"),
        ("unknown field", json.dumps({"token": token, "extra": 1}).encode()),
        ("bad context", json.dumps({"token": token, "context": {"operation": 5}}).encode()),
        ("empty body", b""),
    ]
    for name, body in cases:
        answers = []
        for served in (client, plain):
            resp = await served.post(
                "/v1/verify", data=body, headers={"Content-Type": "application/json"}
            )
            headers = {k.lower(): v for k, v in resp.headers.items() if k.lower() not in PER_ANSWER}
            answers.append((resp.status, headers, await resp.json()))
            assert "x-request-id" in {k.lower() for k in resp.headers}, name
        assert answers[0] == answers[1], name
    # Every one of them was answered by the fast path, none handed on.
    assert fast_answers == {"answered": len(cases), "handed_on": 0}


async def test_a_body_over_the_limit_is_left_to_aiohttp_which_answers_413(
    client: Client, app_config: Config, fast_answers: dict[str, int]
) -> None:
    body = b'{"token": "' + b"a" * app_config.max_body_bytes + b'"}'
    resp = await client.post("/v1/verify", data=body)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
    assert fast_answers == {"answered": 0, "handed_on": 0}


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


async def test_pipelined_requests_are_answered_in_order_whichever_path_takes_them(
    client: Client, token: str, fast_answers: dict[str, int]
) -> None:
    reader, writer = await connect(client)
    try:
        writer.write(
            verify_request(verify_body(token), extra="X-Request-ID: first\r\n")
            + b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Request-ID: second\r\n\r\n"
            + verify_request(verify_body("tsv1_nope"), extra="X-Request-ID: third\r\n")
            + verify_request(verify_body(token), extra="X-Request-ID: fourth\r\n")
        )
        answers = [await read_answer(reader) for _ in range(4)]
    finally:
        writer.close()
    assert [(status, headers["x-request-id"]) for status, headers, _ in answers] == [
        (200, "first"),
        (200, "second"),
        (401, "third"),
        (200, "fourth"),
    ]
    assert json.loads(answers[1][2])["status"] == "ok"
    # The first verify was answered at once; the healthz request then queued the rest behind it.
    assert fast_answers["answered"] >= 1


async def test_more_pipelined_verifies_than_aiohttp_queues_at_once_all_get_answers(
    client: Client, token: str, fast_answers: dict[str, int]
) -> None:
    # aiohttp's parser stops at 32 queued requests and pauses reading; the fast path must let it
    # go on once it has answered them, or the connection would stall here.
    count = 200
    reader, writer = await connect(client)
    try:
        writer.write(
            b"".join(
                verify_request(verify_body(token), extra=f"X-Request-ID: r{i}\r\n")
                for i in range(count)
            )
        )
        answers = [await read_answer(reader) for _ in range(count)]
    finally:
        writer.close()
    assert [headers["x-request-id"] for _, headers, _ in answers] == [f"r{i}" for i in range(count)]
    assert {status for status, _, _ in answers} == {200}
    assert fast_answers["answered"] == count


async def test_a_body_that_arrives_after_its_headers_is_answered(
    client: Client, token: str, received: list[bytes]
) -> None:
    """A verify whose body comes in a later read than its headers is answered, and the
    connection goes on serving."""
    request = verify_request(verify_body(token))
    head, _, body = request.partition(b"\r\n\r\n")
    first, rest = head + b"\r\n\r\n" + body[:10], body[10:]
    received.clear()  # what the fixtures' own requests were read as
    reader, writer = await connect(client)
    try:
        writer.write(first)
        await writer.drain()
        # The rest goes out only once the server has read the first part: then they cannot
        # arrive in one read, whatever the timing.
        for _ in range(1000):
            if b"".join(received) == first:
                break
            await asyncio.sleep(0.01)
        reads_of_first = len(received)
        writer.write(rest)
        status, _, answer = await read_answer(reader)
        # The connection still serves the next request, on the fast path or not.
        writer.write(verify_request(verify_body(token)))
        next_status, _, _ = await read_answer(reader)
    finally:
        writer.close()

    assert b"".join(received[:reads_of_first]) == first
    assert received[reads_of_first] == rest
    assert status == 200 and json.loads(answer)["subject"] == "alice"
    assert next_status == 200


@pytest.mark.parametrize(
    ("version", "extra"), [("1.1", "Connection: close\r\n"), ("1.0", "")], ids=["close", "http10"]
)
async def test_a_request_that_ends_the_connection_is_answered_then_the_connection_closed(
    client: Client, token: str, fast_answers: dict[str, int], version: str, extra: str
) -> None:
    reader, writer = await connect(client)
    try:
        writer.write(verify_request(verify_body(token), extra=extra, version=version))
        status, headers, _ = await read_answer(reader)
        assert status == 200
        if version == "1.1":
            assert headers.get("connection", "").lower() == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    finally:
        writer.close()
    assert fast_answers["answered"] == 0  # aiohttp's path knows how to end a connection


async def answers_then_close(served: Client, packets: list[bytes]) -> list[int]:
    """Send each packet, reading one answer after each; then the server must close."""
    reader, writer = await connect(served)
    answers = []
    try:
        for packet in packets:
            writer.write(packet)
            answers.append((await read_answer(reader))[0])
            if b"NOT HTTP" in packet and packet.index(b"NOT HTTP") > 0:
                answers.append((await read_answer(reader))[0])
        # aiohttp closes the connection after a request it cannot parse.
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    return answers


async def test_garbage_after_a_verify_is_refused_by_aiohttp_and_ends_the_connection(
    client: Client, plain: Client, token: str
) -> None:
    verify = verify_request(verify_body(token))
    garbage = b"NOT HTTP AT ALL\r\n\r\n"
    # Apart: the same answers either way.
    assert await answers_then_close(client, [verify, garbage]) == [200, 400]
    assert await answers_then_close(plain, [verify, garbage]) == [200, 400]
    # In one packet, aiohttp alone refuses the whole packet (llhttp's error discards the verify
    # it had read); the fast path has answered the complete verify before aiohttp reads the rest.
    assert await answers_then_close(client, [verify + garbage]) == [200, 400]


# ---- what needs I/O, and turning the path off -------------------------------------------------------


async def test_a_root_key_not_in_memory_hands_the_request_with_its_body_to_aiohttp(
    client: Client, token: str, fast_answers: dict[str, int]
) -> None:
    app = client.server.app
    verifier = app[appkeys.VERIFIER]
    key_id = decode_identifier(verifier.parse(token).identifier).key_id
    app[appkeys.KEYRING].forget(key_id)  # and the token was never verified: no chain cached

    resp = await client.post("/v1/verify", data=verify_body(token))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["subject"] == "alice"
    # Asked from the bytes, then again from aiohttp's parsed request: both times handed on.
    assert fast_answers["answered"] == 0 and fast_answers["handed_on"] in (1, 2)
    # The key is in memory again: the next one is answered on the fast path.
    resp = await client.post("/v1/verify", data=verify_body(token))
    assert resp.status == 200
    assert fast_answers["answered"] == 1


async def test_the_fast_path_can_be_turned_off(
    app_config: Config, clock: FakeClock, fast_answers: dict[str, int]
) -> None:
    config = app_config.model_copy(update={"fast_verify": False})
    async with TestClient(ServedTestServer(create_app(config, clock=clock))) as off:
        login = await off.post(
            "/v1/login", json={"username": "admin", "password": config.admin_password}
        )
        assert login.status == 200, await login.text()
        admin = (await login.json())["token"]
        resp = await off.post("/v1/verify", json={"token": admin})
        assert resp.status == 200
        resp = await off.get("/v1/keys", headers=bearer(admin))
        assert resp.status == 200
    assert fast_answers == {"answered": 0, "handed_on": 0}


async def test_this_aiohttp_has_every_internal_the_fast_path_uses() -> None:
    """Fails on an aiohttp release that renames one (the service would then start without the
    fast path, with a warning: the next test)."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    assert fastverify.missing_internals(web.Server(handler)) == []


async def test_an_aiohttp_without_an_internal_serves_on_its_own_path(
    app_config: Config,
    clock: FakeClock,
    fast_answers: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A renamed internal turns the fast path off at start-up, said in a warning: verifies are
    still answered, by aiohttp, instead of failing."""
    monkeypatch.setattr(
        fastverify, "_HANDLER_INTERNALS", (*fastverify._HANDLER_INTERNALS, "_renamed_in_4_0")
    )
    with caplog.at_level(logging.WARNING, logger="tokensvc.web.fastverify"):
        async with TestClient(ServedTestServer(create_app(app_config, clock=clock))) as served:
            login = await served.post(
                "/v1/login", json={"username": "admin", "password": app_config.admin_password}
            )
            assert login.status == 200, await login.text()
            resp = await served.post("/v1/verify", json={"token": (await login.json())["token"]})
            assert resp.status == 200
    assert fast_answers == {"answered": 0, "handed_on": 0}
    assert "RequestHandler._renamed_in_4_0" in caplog.text


async def test_over_native_tls_answers_carry_hsts_and_match_the_pipelines(
    app_config: Config,
    clock: FakeClock,
    certificate: tuple[Path, Path],
    plain: Client,
    token: str,
    fast_answers: dict[str, int],
) -> None:
    cert, key = certificate
    config = app_config.model_copy(update={"tls_cert_file": str(cert), "tls_key_file": str(key)})
    server = ServedTestServer(create_app(config, clock=clock), host="127.0.0.1")
    await server.start_server(ssl=ssl_context(config))
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=ssl.create_default_context(cafile=str(cert))
        )
        try:
            writer.write(verify_request(verify_body(token)))
            status, headers, body = await read_answer(reader)
        finally:
            writer.close()
    finally:
        await server.close()
    assert fast_answers["answered"] == 1
    assert status == 200 and headers["strict-transport-security"] == HSTS
    reference = await plain.post("/v1/verify", data=verify_body(token))
    assert json.loads(body) == await reference.json()
    # The same headers as the pipeline's answer, plus HSTS (the reference serves plain HTTP).
    assert {k for k in headers if k not in PER_ANSWER} == {
        k.lower() for k in reference.headers if k.lower() not in PER_ANSWER
    } | {"strict-transport-security"}
