"""The lane (tokensvc.web.lane): connections that are not verifying move to a second process.

In-process tests run both ends in one event loop: the verify app with a Handoff on one end of a
SOCK_SEQPACKET pair, and a second app serving what arrives on the other end, exactly as the
lane process does. The last tests run `tokensvc serve` itself: one or two verify workers and
their lane.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import ADMIN_PASSWORD, basic_auth, make_config
from tests.tokensvc.test_fastverify import read_answer, verify_request
from tests.tokensvc.test_workers import serving
from tokensvc.web import fastverify
from tokensvc.web.app import create_app
from tokensvc.web.fastverify import AppRunner, FastServer
from tokensvc.web.lane import Handoff, is_lane_request, receive_connections
from tokensvc.web.server import lane_enabled

if TYPE_CHECKING:
    from tests.conftest import FakeClock
    from tokensvc.operations.config import Config


class _VerifyServer(TestServer):
    """The verify process's side: the fast path, handing other connections to `handoff`."""

    def __init__(self, app: web.Application, handoff: Handoff) -> None:
        super().__init__(app)
        self.handoff = handoff

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return AppRunner(self.app, handoff=self.handoff, **kwargs)


@dataclasses.dataclass
class Lanes:
    verify: _VerifyServer
    lane: FastServer  # the lane's aiohttp server: its requests_count says what it answered
    lane_end: socket.socket
    receiving: asyncio.Task[None] | None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.verify.host, self.verify.port)


async def _lanes(app_config: Config, clock: FakeClock, *, receive: bool) -> AsyncIterator[Lanes]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lane_runner = AppRunner(create_app(app_config, clock=clock))
    await lane_runner.setup()
    assert isinstance(lane_runner.server, FastServer)
    verify = _VerifyServer(create_app(app_config, clock=clock), Handoff(ours))
    await verify.start_server()
    receiving = None
    if receive:
        receiving = asyncio.create_task(receive_connections(lane_runner.server, theirs))
    try:
        yield Lanes(verify, lane_runner.server, theirs, receiving)
    finally:
        await verify.close()
        verify.handoff.close()  # the receiver reads EOF and returns
        if receiving is not None:
            await asyncio.wait_for(receiving, 10)
        else:
            theirs.close()
        await lane_runner.cleanup()


@pytest.fixture
async def lanes(app_config: Config, clock: FakeClock) -> AsyncIterator[Lanes]:
    async for pair in _lanes(app_config, clock, receive=True):
        yield pair


@pytest.fixture
async def token(lanes: Lanes) -> str:
    """A token for the bootstrap admin, from a login the lane answers."""
    reader, writer = await lanes.connect()
    writer.write(_login_request())
    status, _, body = await read_answer(reader)
    writer.close()
    assert status == 200, body
    return str(json.loads(body)["token"])


def _login_request() -> bytes:
    auth = basic_auth("admin", ADMIN_PASSWORD)["Authorization"]
    return f"POST /v1/login HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n".encode()


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def _verify(token: str) -> bytes:
    return verify_request(json.dumps({"token": token}).encode())


# ---- which requests move ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "moves"),
    [
        (b"POST /v1/login HTTP/1.1\r\nHost: t\r\n", True),
        (b"GET /healthz HTTP/1.1\r\n", True),
        (b"GET /metrics?x=1 HTTP/1.1\r\n", True),
        (b"POST /v1/verify HTTP/1.1\r\nHost: t\r\n", False),  # a verify the byte reader left
        (b"GET /v1/verify HTTP/1.1\r\n", False),  # its 405 is as cheap as a verify
        (b"GET /v1/auth?rd=/x HTTP/1.1\r\n", False),  # forward-auth: proxies call it per request
        (b"PUT /v1/auth HTTP/1.1\r\n", False),
        (b"GET /heal", False),  # no whole first line yet: aiohttp's parser judges it
        (b"GARBAGE\r\n\r\n", False),  # not a request line: aiohttp answers 400 here
        (b"\r\nGET / HTTP/1.1\r\n", False),
    ],
)
def test_only_whole_request_lines_off_the_hot_paths_move(data: bytes, moves: bool) -> None:
    assert is_lane_request(data) is moves


def test_the_lane_runs_only_where_a_connection_can_move_and_lockout_is_shared(
    tmp_path: Path,
) -> None:
    base = make_config(
        database_url="sqlite+aiosqlite:///x.db",
        data_dir=tmp_path,
        redis_url="redis://127.0.0.1:6379/0",
    )
    assert lane_enabled(base)
    assert not lane_enabled(base.model_copy(update={"verify_process": False}))
    assert not lane_enabled(base.model_copy(update={"fast_verify": False}))
    assert not lane_enabled(base.model_copy(update={"redis_url": None}))
    tls = base.model_copy(update={"tls_cert_file": "c.pem", "tls_key_file": "k.pem"})
    assert not lane_enabled(tls)  # a TLS session cannot move between processes


# ---- moving a connection ------------------------------------------------------------------------


async def test_a_connection_that_is_not_verifying_moves_and_stays_with_the_lane(
    lanes: Lanes, token: str
) -> None:
    answered_before = lanes.lane.requests_count  # the token fixture's login
    reader, writer = await lanes.connect()
    writer.write(_get("/healthz"))
    status, _, body = await read_answer(reader)
    assert (status, json.loads(body)["status"]) == (200, "ok")
    assert lanes.verify.handoff.handed == 2  # the fixture's login connection, and this one
    # Later requests on the moved connection, verifies included, are the lane's to answer.
    writer.write(_verify(token))
    status, _, body = await read_answer(reader)
    assert (status, json.loads(body)["valid"]) == (200, True)
    writer.write(_login_request())
    status, _, _ = await read_answer(reader)
    assert status == 200
    assert lanes.lane.requests_count == answered_before + 3
    writer.close()


async def test_verifying_connections_stay_in_the_verify_process(lanes: Lanes, token: str) -> None:
    handed_before = lanes.verify.handoff.handed
    answered_before = lanes.lane.requests_count
    reader, writer = await lanes.connect()
    for _ in range(3):
        writer.write(_verify(token))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["valid"]) == (200, True)
    writer.write(_get("/v1/auth"))  # forward-auth without a token: 401, still answered here
    status, _, _ = await read_answer(reader)
    assert status == 401
    assert lanes.verify.handoff.handed == handed_before
    assert lanes.lane.requests_count == answered_before
    writer.close()


async def test_a_verify_and_a_login_in_one_packet_are_answered_in_order(
    lanes: Lanes, token: str
) -> None:
    reader, writer = await lanes.connect()
    writer.write(_verify(token) + _get("/healthz") + _verify(token))
    answers = [await read_answer(reader) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert json.loads(answers[0][2])["valid"] is True  # by the verify process
    assert json.loads(answers[1][2])["status"] == "ok"  # by the lane, with what followed it
    assert json.loads(answers[2][2])["valid"] is True
    writer.close()


async def test_without_a_lane_the_verify_process_serves_everything(
    app_config: Config, clock: FakeClock
) -> None:
    async for pair in _lanes(app_config, clock, receive=False):
        pair.lane_end.close()  # the lane process is gone
        for _ in range(2):
            reader, writer = await pair.connect()
            writer.write(_get("/healthz"))
            status, _, _ = await read_answer(reader)
            assert status == 200
            writer.close()
        assert pair.verify.handoff.handed == 0
        assert pair.lane.requests_count == 0


def _fill(handoff: Handoff) -> None:
    """Fill the pair as a lane that reads nothing would: the next send would block."""
    with pytest.raises(BlockingIOError):  # noqa: PT012 - the loop is the one action: send until it would block
        for _ in range(100_000):
            handoff._sock.send(b"x" * 1024)


async def test_a_lane_that_is_behind_is_waited_for_with_reading_paused(
    app_config: Config, clock: FakeClock
) -> None:
    async for pair in _lanes(app_config, clock, receive=False):
        _fill(pair.verify.handoff)
        reader, writer = await pair.connect()
        writer.write(_get("/healthz"))
        with pytest.raises(TimeoutError):  # not served here meanwhile
            await asyncio.wait_for(reader.read(1), 0.3)
        # The lane catches up (reads the queue), and gets the connection.
        lane_server = AppRunner(create_app(app_config, clock=clock))
        await lane_server.setup()
        assert isinstance(lane_server.server, FastServer)
        receiving = asyncio.create_task(receive_connections(lane_server.server, pair.lane_end))
        try:
            status, _, _ = await read_answer(reader)
            assert status == 200
            assert pair.verify.handoff.handed == 1
            assert lane_server.server.requests_count == 1
        finally:
            writer.close()
            pair.verify.handoff.close()
            await asyncio.wait_for(receiving, 10)
            await lane_server.cleanup()


async def test_a_lane_that_stays_behind_leaves_the_connection_here(
    app_config: Config, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastverify, "LANE_WAIT", 0.2)
    async for pair in _lanes(app_config, clock, receive=False):
        _fill(pair.verify.handoff)
        reader, writer = await pair.connect()
        started = time.monotonic()
        writer.write(_get("/healthz") + _get("/healthz"))
        for _ in range(2):
            status, _, _ = await read_answer(reader)
            assert status == 200
        assert time.monotonic() - started >= 0.2  # after the wait, not at once
        assert pair.verify.handoff.handed == 0
        assert pair.lane.requests_count == 0
        writer.close()


@pytest.mark.parametrize(
    "loop_factory",
    [asyncio.new_event_loop, uvloop.new_event_loop],
    ids=["asyncio", "uvloop"],  # uvloop, as `tokensvc serve` runs: it reads soonest
)
def test_bytes_waiting_when_the_lane_adopts_a_connection_come_after_the_handed_ones(
    app_config: Config, clock: FakeClock, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """A login's body that reached the socket before the lane adopted the connection is read
    after the headers handed over with it, never parsed before them as a request of its own."""
    body = json.dumps({"username": "admin", "password": ADMIN_PASSWORD}).encode()
    headers = f"POST /v1/login HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"

    async def scenario() -> list[tuple[int, bytes]]:
        answers = []
        async for pair in _lanes(app_config, clock, receive=False):
            reader, writer = await pair.connect()
            writer.write(headers.encode())  # handed over, but the lane reads nothing yet
            for _ in range(1000):  # up to 10 s on a loaded host
                if pair.verify.handoff.handed:
                    break
                await asyncio.sleep(0.01)
            writer.write(body)  # the rest waits in the socket the lane will adopt
            await writer.drain()
            await asyncio.sleep(0.1)
            receiving = asyncio.create_task(receive_connections(pair.lane, pair.lane_end))
            try:
                status, _, answer = await read_answer(reader)
                answers.append((status, answer))
            finally:
                writer.close()
                pair.verify.handoff.close()  # the receiver reads EOF and returns
                await asyncio.wait_for(receiving, 10)
        return answers

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        answers = runner.run(scenario())

    assert [status for status, _ in answers] == [200], answers
    assert json.loads(answers[0][1])["subject"] == "admin"


# ---- `tokensvc serve`: the two processes --------------------------------------------------------


def _http(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return (
            json.loads(resp.read())
            if "json" in resp.headers.get("Content-Type", "")
            else resp.read().decode()
        )


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _serving(pid: int) -> list[int]:
    """The supervisor's serving children (not multiprocessing's resource tracker)."""
    return [
        child
        for child in _children(pid)
        if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text()
    ]


def _nice(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def served(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[tuple[str, subprocess.Popen[bytes], int]]:
    """`tokensvc serve [--workers 2]` with Redis: the verify worker(s) and one lane; 1 s after
    the first answer, so that every worker is up."""
    workers = request.param
    args = ("--workers", str(workers)) if workers > 1 else ()
    with serving(tmp_path, redis_url, redis_prefix, *args, settle=1.0 if args else 0.0) as (
        base,
        proc,
    ):
        yield base, proc, workers


_VERIFY_COUNT = re.compile(
    r'^tokensvc_verify_total\{endpoint="verify",reason="valid"\} (\S+)$', re.MULTILINE
)


def _holder(server_port: int, client_port: int, pids: list[int]) -> int:
    """Which of `pids` holds the server side of the TCP connection from `client_port`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            inodes.add(f"socket:[{inode}]")
    holders = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if fd.readlink().as_posix() in inodes:
                    holders.add(pid)
            except OSError:
                continue  # closed meanwhile
    assert len(holders) == 1, (inodes, holders)
    return holders.pop()


def _exchange(
    conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]
) -> Any:
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    return json.loads(resp.read())


def test_serve_runs_verify_workers_and_a_lower_priority_lane(
    served: tuple[str, subprocess.Popen[bytes], int],
) -> None:
    """Each worker at nice 0, one lane at nice 10. A connection that logs in is held by the
    lane; one that verifies, by a verify worker; the lane's scrape counts every verify."""
    base, proc, workers = served
    children = _serving(proc.pid)
    assert sorted(_nice(pid) for pid in children) == [0] * workers + [10]
    lane = next(pid for pid in children if _nice(pid) == 10)
    port = int(base.rpartition(":")[2])

    login = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    token = _exchange(login, "/v1/login", b"", basic_auth("admin", ADMIN_PASSWORD))["token"]
    assert _holder(port, login.sock.getsockname()[1], children) == lane
    body = json.dumps({"token": token}).encode()
    as_json = {"Content-Type": "application/json"}
    # The login connection stays with the lane, and its verifies are answered there.
    assert _exchange(login, "/v1/verify", body, as_json)["valid"]
    assert _holder(port, login.sock.getsockname()[1], children) == lane
    login.close()

    verifiers = []
    for _ in range(2 * workers + 2):  # new connections: the kernel spreads them over workers
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        assert _exchange(conn, "/v1/verify", body, as_json)["valid"]
        assert _holder(port, conn.sock.getsockname()[1], children) != lane
        verifiers.append(conn)
    for conn in verifiers:
        conn.close()

    # The scrape is answered by the lane, yet counts every worker's verifies too.
    expected = 1 + len(verifiers)
    deadline = time.monotonic() + 10
    while True:
        match = _VERIFY_COUNT.search(_http(base + "/metrics"))
        if (match and float(match.group(1)) >= expected) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert match is not None and float(match.group(1)) == expected


def test_serve_stops_every_process_cleanly_on_sigterm(
    served: tuple[str, subprocess.Popen[bytes], int],
) -> None:
    _base, proc, workers = served
    children = _serving(proc.pid)
    assert len(children) == workers + 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
