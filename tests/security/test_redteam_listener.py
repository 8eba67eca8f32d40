"""Red-team attacks on the verify listener (tokensvc.web.verifyport): deferred writes and the
body memo. Each test asserts the SAFE behaviour, so it fails while the hole exists."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any

import pytest
import uvloop

from tests.listener.test_verifyport import (
    connect,
    listener_of,
    read_answer,
    read_token,
    verify_body,
    verify_request,
)
from tests.tokensvc.test_api_verify import mint
from tokensvc.macaroons.identifier import decode_identifier
from tokensvc.web import appkeys, verifyport

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tests.conftest import FakeClock

    Client = TestClient[web.Request, web.Application]


def admin(admin_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token}"}


async def listener_post(client: Client, body: bytes, extra: str = "") -> tuple[int, bytes]:
    reader, writer = await connect(client)
    try:
        writer.write(verify_request(body, extra=extra))
        status, _, answer = await read_answer(reader)
    finally:
        writer.close()
    return status, answer


async def app_post(client: Client, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    server = listener_of(client)
    resp = await client.session.post(
        server.app_url("/v1/verify"),
        data=body,
        headers={"Content-Type": "application/json", **headers},
        skip_auto_headers={"Accept-Encoding"},
    )
    return resp.status, await resp.read()


# ---- the memo: a remembered body is decided again -----------------------------------------------


async def test_memo_does_not_outlive_revoke_all(client: Client, admin_token: str) -> None:
    minted = await mint(client, admin_token, subject="dave", ttl="1h", operations=["read"])
    body = verify_body(str(minted["token"]), operation="read")
    for _ in range(3):
        assert (await listener_post(client, body))[0] == 200
    resp = await client.post("/v1/subjects/dave/revoke-all", headers=admin(admin_token))
    assert resp.status in (200, 204), await resp.text()
    status, answer = await listener_post(client, body)
    assert status == 401, answer


async def test_memo_does_not_outlive_expiry(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    minted = await mint(client, admin_token, subject="erin", ttl="2m", operations=["read"])
    body = verify_body(str(minted["token"]), operation="read")
    assert (await listener_post(client, body))[0] == 200
    assert (await listener_post(client, body))[0] == 200
    clock.advance(minutes=10)
    status, answer = await listener_post(client, body)
    assert status == 401, answer


async def test_memo_encoding_and_json_variants_of_a_revoked_token_are_refused(
    client: Client, admin_token: str
) -> None:
    """Every byte variant (gzip, deflate, whitespace, key order, duplicate keys) of a body that
    was allowed and memoised is refused after the revocation, as the app refuses it."""
    minted = await mint(client, admin_token, subject="fay", ttl="1h", operations=["read"])
    tok = str(minted["token"])
    other = str((await mint(client, admin_token, subject="gus", ttl="1h"))["token"])
    plain = json.dumps({"token": tok, "context": {"operation": "read"}}).encode()
    variants: list[tuple[bytes, str]] = [
        (plain, ""),
        (gzip.compress(plain), "Content-Encoding: gzip\r\n"),
        (zlib.compress(plain), "Content-Encoding: deflate\r\n"),
        (plain + b"  \n", ""),
        (json.dumps({"context": {"operation": "read"}, "token": tok}).encode(), ""),
        (b'{"token": "%s", "token": "%s"}' % (other.encode(), tok.encode()), ""),
        (b'{"token": "%s", "token": "%s"}' % (tok.encode(), other.encode()), ""),
        (plain.replace(b'"token"', b'"\\u0074oken"'), ""),
    ]
    for body, extra in variants:  # memoise every variant while allowed
        await listener_post(client, body, extra)
        await listener_post(client, body, extra)
    resp = await client.delete(f"/v1/tokens/{minted['token_id']}", headers=admin(admin_token))
    assert resp.status in (200, 204)
    for body, extra in variants:
        headers = dict(
            [line.split(": ", 1) for line in extra.strip().split("\r\n")] if extra else []
        )
        got = await listener_post(client, body, extra)
        expected = await app_post(client, body, headers)
        assert got[0] == expected[0], (body[:60], extra, got, expected)
        if expected[0] == 200:
            assert json.loads(got[1]) == json.loads(expected[1])
        assert not (got[0] == 200 and json.loads(got[1])["token_id"] == minted["token_id"])


async def test_memo_never_serves_another_tokens_allow(client: Client, admin_token: str) -> None:
    """Many distinct tokens and contexts, interleaved on one pipelined connection and through the
    memo's clear: each 200 names its own token."""
    tokens = []
    for i in range(6):
        m = await mint(client, admin_token, subject=f"s{i}", ttl="1h", operations=["read"])
        tokens.append((str(m["token"]), str(m["token_id"]), f"s{i}"))
    endpoint = listener_of(client).listener[1]  # type: ignore[index]
    reader, writer = await connect(client)
    try:
        expected = []
        batch = b""
        for n in range(verifyport.MEMO_ENTRIES + 200):
            tok, tid, sub = tokens[n % len(tokens)]
            op = "read" if n % 7 else "write"
            batch += verify_request(
                json.dumps(
                    {"token": tok, "context": {"operation": op, "resource": f"/{n % 300}"}}
                ).encode(),
                extra=f"X-Request-ID: r{n}\r\n",
            )
            expected.append((f"r{n}", 200 if op == "read" else 403, tid, sub))
        writer.write(batch)
        got = []
        for _ in expected:
            status, headers, body = await read_answer(reader)
            data = json.loads(body)
            got.append((headers["x-request-id"], status, data.get("token_id"), data.get("subject")))
    finally:
        writer.close()
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    assert [g for g in got if g[1] == 200] == [e for e in expected if e[1] == 200]
    assert endpoint.remembered() <= verifyport.MEMO_ENTRIES


async def test_memo_require_mfa_after_allow(client: Client, admin_token: str) -> None:
    tok = str((await mint(client, admin_token, subject="hal", ttl="1h"))["token"])
    assert (await listener_post(client, json.dumps({"token": tok}).encode()))[0] == 200
    body = json.dumps({"token": tok, "context": {"require_mfa": True}}).encode()
    for _ in range(2):
        assert (await listener_post(client, body))[0] == 403


# ---- order on a connection ----------------------------------------------------------------------


async def test_pipeline_mixing_memo_hits_key_reads_errors_and_head_keeps_order(
    client: Client, admin_token: str
) -> None:
    app = client.server.app
    verifier = app[appkeys.VERIFIER]
    fresh = [
        str((await mint(client, admin_token, subject=f"k{i}", ttl="1h"))["token"]) for i in range(3)
    ]
    hot = str((await mint(client, admin_token, subject="hot", ttl="1h"))["token"])
    for t in fresh:
        # Out of memory, not revoked (forget() would mark it revoked): read again on use.
        app[appkeys.KEYRING]._cache.evict(decode_identifier(verifier.parse(t).identifier).key_id)
    parts = []
    expected = []
    for n in range(60):
        kind = n % 6
        rid = f"x{n}"
        if kind == 0:
            parts.append(
                verify_request(
                    json.dumps({"token": fresh[(n // 6) % 3]}).encode(),
                    extra=f"X-Request-ID: {rid}\r\n",
                )
            )
            expected.append((rid, 200))
        elif kind == 1:
            parts.append(
                verify_request(
                    json.dumps({"token": hot}).encode(), extra=f"X-Request-ID: {rid}\r\n"
                )
            )
            expected.append((rid, 200))
        elif kind == 2:
            parts.append(verify_request(b"{bad", extra=f"X-Request-ID: {rid}\r\n"))
            expected.append((rid, 400))
        elif kind == 3:
            parts.append(
                f"HEAD /healthz HTTP/1.1\r\nHost: t\r\nX-Request-ID: {rid}\r\n\r\n".encode()
            )
            expected.append((rid, 200))
        elif kind == 4:
            parts.append(
                verify_request(
                    gzip.compress(json.dumps({"token": hot}).encode()),
                    extra=f"Content-Encoding: gzip\r\nX-Request-ID: {rid}\r\n",
                )
            )
            expected.append((rid, 200))
        else:
            parts.append(
                f"GET /v1/verify HTTP/1.1\r\nHost: t\r\nX-Request-ID: {rid}\r\n\r\n".encode()
            )
            expected.append((rid, 405))
    data = b"".join(parts)
    reader, writer = await connect(client)
    try:
        for i in range(0, len(data), 997):  # split across segments
            writer.write(data[i : i + 997])
            await writer.drain()
            await asyncio.sleep(0)
        got = []
        for rid, _ in expected:
            if rid.startswith("x") and int(rid[1:]) % 6 == 3:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                status = int(head.split()[1])
                hid = re.search(rb"X-Request-ID: (\S+)", head)
                got.append((hid.group(1).decode() if hid else "", status))
            else:
                status, headers, _ = await read_answer(reader)
                got.append((headers["x-request-id"], status))
    finally:
        writer.close()
    assert got == expected


# ---- half-close on uvloop (what `tokensvc serve` runs) ------------------------------------------


def _serve_on_uvloop(endpoint: verifyport.VerifyEndpoint) -> tuple[Any, int, threading.Thread]:
    loop = uvloop.new_event_loop()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            server = await loop.create_server(
                lambda: verifyport.VerifyConnection(endpoint), sock=lsock
            )
            started.set()
            try:
                await asyncio.sleep(3600)
            finally:
                server.close()
                for connection in list(endpoint.connections):
                    connection.abort()
                await asyncio.sleep(0.05)

        try:
            loop.run_until_complete(main())
        except BaseException:  # noqa: BLE001, S110 - cancelled at the end of the test
            pass
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    return loop, port, thread


def _stop(loop: Any, thread: threading.Thread) -> None:
    def cancel_all() -> None:
        for task in asyncio.all_tasks(loop):
            task.cancel()

    loop.call_soon_threadsafe(cancel_all)
    thread.join(10)


def _recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        got += chunk
    return got


def _exact_batch(token: str, total: int, count: int) -> bytes:
    """`count` pipelined verifies (JSON padded with spaces) of exactly `total` bytes."""
    base = verify_body(token)
    size = total // count
    parts = []
    for i in range(count):
        want = size if i < count - 1 else total - size * (count - 1)
        pad = want - len(verify_request(base))
        while len(verify_request(base + b" " * pad)) > want:
            pad -= 1
        req = verify_request(base + b" " * pad)
        assert len(req) == want, (len(req), want)
        parts.append(req)
    data = b"".join(parts)
    assert len(data) == total
    return data


@pytest.mark.parametrize("total", [256000, 250000], ids=["exactly-uvloop-buffer", "less"])
async def test_half_closed_client_gets_its_answers_on_uvloop(
    client: Client, admin_token: str, total: int
) -> None:
    """A client sends a few pipelined verifies and shuts its write side (shutdown(SHUT_WR)).
    When uvloop reads the requests and the FIN in one callback (a read that fills its 256000
    byte buffer, then EOF), eof_received runs before the turn's answers are written; nothing is
    pending, so it returns False, the transport closes, and the queued answers are dropped."""
    tok = await read_token(client, admin_token)
    endpoint = verifyport.VerifyEndpoint.for_app(client.server.app)
    data = _exact_batch(tok, total, 4)
    loop, port, thread = _serve_on_uvloop(endpoint)
    gate = threading.Event()
    try:
        loop.call_soon_threadsafe(gate.wait, 10)  # hold the server's loop while we send
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        gate.set()
        got = _recv_all(sock)
        sock.close()
    finally:
        gate.set()
        _stop(loop, thread)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", got)
    assert statuses == [b"200"] * 4, (len(got), statuses)
