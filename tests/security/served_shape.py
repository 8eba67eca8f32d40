"""The production shape, served for attack tests: `tokensvc serve --workers 2` with Redis set.

That is the default deployment of DESIGN.md: the API in one process on the service port, two
verify processes sharing the verify listener's port, Redis for the shared lockout state (these
tests talk to it only through raw sockets, so they hold for any process layout behind it). The database
is its own (a fresh PostgreSQL database, or a SQLite file), and so is its Redis key prefix.

Also: a blocking raw-socket HTTP/1.1 client that sends a request in as many TCP segments as
asked (TCP_NODELAY, a pause between the sends) and reads answers one at a time, by their
Content-Length, so that every answer, and every byte that is not one, is seen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, Self

import asyncpg
import redis

from tests.conftest import ADMIN_PASSWORD, PG_ADMIN_DSN, REDIS_URL, _pg_url_for
from tests.ports import free_port
from tests.tokensvc.test_cli_login import TOKENSVC, _clean_env

# A bound on one answer, not a goal: a login on a loaded 2-core host takes milliseconds.
ANSWER_TIMEOUT = 30.0
# Between two sends of one connection: long enough that they leave as separate TCP segments
# and usually arrive in separate reads, short enough for hundreds of requests.
SEGMENT_PAUSE = 0.002


@dataclasses.dataclass(frozen=True)
class Served:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    verify_port: int = 0  # the verify listener's (tokensvc.web.verifyport)

    def on_verify_port(self) -> Served:
        """The same service, its verify listener's port as the one the tests talk to."""
        return dataclasses.replace(self, port=self.verify_port)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())


@contextlib.contextmanager
def own_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own ("sqlite": a file under `tmp_path`; "postgres": a fresh database
    on the test server, dropped afterwards), as conftest's `sqlite_url` and `pg_url` make them
    for one test, for a fixture wider than one test."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'tokensvc.db'}"
        return
    name = "tokensvc_t_" + secrets.token_hex(6)
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url_for(name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _pg_admin(statement: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@contextlib.contextmanager
def own_redis_prefix() -> Iterator[str]:
    """A Redis key prefix of its own on the test Redis; every key under it deleted afterwards."""
    prefix = "tokensvc-test-" + secrets.token_hex(6) + ":"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=500))
            # Cluster-style hash tags put the prefix inside braces; those too.
            keys += client.scan_iter(match="{" + prefix + "*", count=500)
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@contextlib.contextmanager
def serving(tmp_path: Path, database_url: str, redis_prefix: str, *args: str) -> Iterator[Served]:
    """`tokensvc serve --workers 2 *args` on `database_url`, the test Redis under `redis_prefix`
    and a cheap argon2 profile, once it answers /healthz; stopped with SIGTERM at the end."""
    port, verify_port = free_port(), free_port()
    env = _clean_env(tmp_path)
    env.update(
        TOKENSVC_DATA_DIR=str(tmp_path / "data"),
        TOKENSVC_DATABASE_URL=database_url,
        TOKENSVC_KEK=base64.b64encode(secrets.token_bytes(32)).decode(),
        TOKENSVC_REDIS_URL=REDIS_URL,
        TOKENSVC_REDIS_PREFIX=redis_prefix,
        TOKENSVC_ADMIN_PASSWORD=ADMIN_PASSWORD,
        TOKENSVC_PASSWORD_PROFILE="CHEAP_FOR_TESTS",
        TOKENSVC_ALLOW_INSECURE="test-password-profile",
        TOKENSVC_LOG_LEVEL="warning",  # hundreds of requests: no access line each
    )
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                TOKENSVC,
                "serve",
                "--port",
                str(port),
                "--verify-port",
                str(verify_port),
                "--workers",
                "2",
                *args,
            ],
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 60  # a start-up bound on a loaded host
            while True:
                try:
                    _get(f"http://127.0.0.1:{port}/healthz")
                    _get(f"http://127.0.0.1:{verify_port}/healthz")
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("tokensvc serve did not start") from None
                    time.sleep(0.2)
            yield Served("127.0.0.1", port, proc, verify_port)
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- requests ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """One HTTP/1.1 request: its header block (through the blank line) and its body."""

    rid: str  # its X-Request-ID, which the answer echoes
    head: bytes
    body: bytes = b""

    @property
    def raw(self) -> bytes:
        return self.head + self.body


def request(
    method: str,
    target: str,
    rid: str,
    *,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Request:
    """A request with an X-Request-ID, and a Content-Length when it has a body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: tokensvc.test", f"X-Request-ID: {rid}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return Request(rid, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body or b"")


def json_request(
    method: str,
    target: str,
    rid: str,
    payload: dict[str, Any],
    *,
    token: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Request:
    extra = [("Content-Type", "application/json"), *headers]
    if token is not None:
        extra.append(("Authorization", f"Bearer {token}"))
    return request(method, target, rid, body=json.dumps(payload).encode(), headers=extra)


# ---- the client -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def rid(self) -> str | None:
        return self.headers.get("x-request-id")

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """A blocking client connection that sends segments as given and reads whole answers."""

    def __init__(self, served: Served) -> None:
        self.sock = socket.create_connection((served.host, served.port), timeout=ANSWER_TIMEOUT)
        # Each sendall leaves at once, as its own segment, instead of waiting for an ACK.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, *segments: bytes, pause: float = SEGMENT_PAUSE) -> None:
        """Send each segment on its own, `pause` s apart."""
        for i, segment in enumerate(segments):
            if i:
                time.sleep(pause)
            self.sock.sendall(segment)

    def send_split(self, data: bytes, at: Sequence[int], pause: float = SEGMENT_PAUSE) -> None:
        """Send `data` cut at the offsets `at`, one segment between each two cuts."""
        cuts = [0, *sorted(set(at) - {0, len(data)}), len(data)]
        self.send(*(data[a:b] for a, b in pairwise(cuts)), pause=pause)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def answer(self) -> Answer:
        """The next answer; EOFError if the server closes the connection before a whole one."""
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                raise EOFError(f"connection closed; unanswered bytes: {self._buffer!r}")
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            if not self._fill():
                raise EOFError(f"connection closed inside an answer to {status_line!r}")
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return Answer(int(status_line.split()[1]), headers, body)

    def rest(self) -> bytes:
        """Every byte the server sends until it closes the connection."""
        while self._fill():
            pass
        rest, self._buffer = self._buffer, b""
        return rest
