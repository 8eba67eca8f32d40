"""Real tokensvc for the client's acceptance tests: `tokensvc serve` on PostgreSQL and Redis, a
TCP proxy that can cut the client off, and an event loop in a thread for Hypothesis tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pyotp

from tests.conftest import (
    ADMIN_PASSWORD,
    REDIS_URL,
    basic_auth,
    fresh_database,
    fresh_redis_prefix,
)
from tests.ports import free_port
from tests.tokensvc.test_cli_login import TOKENSVC, _clean_env, stop

T = TypeVar("T")

#: The service token's scope: what a protected service needs to ask for verdicts.
VERDICT_OPERATION = "tokens:verdict"


@dataclass
class Served:
    """One running `tokensvc serve`: its app and verify-port URLs, an admin and a service token."""

    base: str
    verify_base: str
    admin: str
    service_token: str
    proc: subprocess.Popen[bytes]

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    async def mint(self, session: aiohttp.ClientSession, **body: Any) -> dict[str, Any]:
        """POST /v1/tokens as the admin; the body of the 201."""
        body.setdefault("ttl", "1h")
        async with session.post(self.base + "/v1/tokens", json=body, headers=self.auth()) as r:
            assert r.status == 201, await r.text()
            return dict(await r.json())

    async def revoke(self, session: aiohttp.ClientSession, token_id: str) -> None:
        """DELETE /v1/tokens/{id} as the admin."""
        async with session.delete(f"{self.base}/v1/tokens/{token_id}", headers=self.auth()) as r:
            assert r.status in (200, 204), await r.text()

    async def user_with_mfa(
        self, session: aiohttp.ClientSession, name: str, password: str
    ) -> tuple[str, str]:
        """Create user `name` and enrol a TOTP factor (pyotp computes the codes on the real
        clock); (a password-only login token from before the enrolment, an MFA login token)."""
        async with session.post(
            self.base + "/v1/users", json={"name": name, "password": password}, headers=self.auth()
        ) as r:
            assert r.status == 201, await r.text()
        plain = await self._login(session, {"username": name, "password": password})
        mine = {"Authorization": f"Bearer {plain}"}
        async with session.post(
            self.base + "/v1/mfa/enroll", json={"password": password}, headers=mine
        ) as r:
            assert r.status == 200, await r.text()
            totp = pyotp.TOTP((await r.json())["secret"])
        now = time.time()
        async with session.post(
            self.base + "/v1/mfa/activate", json={"otp": totp.at(now)}, headers=mine
        ) as r:
            assert r.status == 200, await r.text()
        # The activation's step is spent (no code is accepted twice): log in with the next
        # step's code, which tokensvc accepts within its ±1 step of skew.
        strong = await self._login(
            session, {"username": name, "password": password, "otp": totp.at(now + 30)}
        )
        return plain, strong

    async def _login(self, session: aiohttp.ClientSession, body: dict[str, str]) -> str:
        async with session.post(self.base + "/v1/login", json=body) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
            assert answer["mfa"] is ("otp" in body), answer
            return str(answer["token"])

    async def verify(
        self, session: aiohttp.ClientSession, token: str, context: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """POST /v1/verify on the verify port: the status and the body."""
        body = {"token": token, "context": context}
        async with session.post(self.verify_base + "/v1/verify", json=body) as r:
            return r.status, dict(await r.json())


async def _healthy(
    session: aiohttp.ClientSession, proc: subprocess.Popen[bytes], bases: list[str], log: Path
) -> bool:
    """Wait for /healthz on every base (the API, and the verify listener: with Redis it runs in
    a process of its own, which may bind after the API answers); False if tokensvc exited
    because a port was taken (try again)."""
    deadline = time.monotonic() + 60  # start-up on a loaded 2-core host, not a goal
    waiting = list(bases)
    while True:
        if proc.poll() is not None:
            text = log.read_text()  # noqa: ASYNC240 - a small log, once, after exit
            if "already in use" in text:
                return False
            raise RuntimeError(f"tokensvc exited: {text[-3000:]}")
        try:
            async with session.get(waiting[0] + "/healthz") as resp:
                if resp.status == 200:
                    waiting.pop(0)
                    if not waiting:
                        return True
                    continue
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("tokensvc did not become healthy")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def serve_tokensvc(
    tmp_path: Path, *, pg_url: str, redis_url: str, redis_prefix: str, **extra_env: str
) -> AsyncIterator[Served]:
    """`tokensvc serve` on its own ports until the block ends (terminated by its own pid)."""
    port, verify_port = free_port(), free_port()
    env = _clean_env(tmp_path)
    env.update(
        TOKENSVC_DATA_DIR=str(tmp_path / "data"),
        TOKENSVC_DATABASE_URL=pg_url,
        TOKENSVC_REDIS_URL=redis_url,
        TOKENSVC_REDIS_PREFIX=redis_prefix,
        TOKENSVC_KEK=base64.b64encode(secrets.token_bytes(32)).decode(),
        TOKENSVC_ADMIN_PASSWORD=ADMIN_PASSWORD,
        TOKENSVC_PASSWORD_PROFILE="CHEAP_FOR_TESTS",
        TOKENSVC_ALLOW_INSECURE="test-password-profile",
        **extra_env,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with aiohttp.ClientSession() as session:
            # Free ports are free when picked, not when bound: a parallel test may take one
            # first, so a start that loses that race is tried again on new ports.
            for attempt in range(3):
                log_path = tmp_path / f"tokensvc-{attempt}.log"
                with log_path.open("wb") as log:
                    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                        [TOKENSVC, "serve", "--port", str(port), "--verify-port", str(verify_port)],
                        env=env,
                        stdout=log,
                        stderr=log,
                    )
                procs.append(proc)
                base = f"http://127.0.0.1:{port}"
                bases = [base, f"http://127.0.0.1:{verify_port}"]
                if await _healthy(session, proc, bases, log_path):
                    break
                port, verify_port = free_port(), free_port()
            else:
                raise RuntimeError("tokensvc found its ports taken three times")
            async with session.post(
                base + "/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD)
            ) as resp:
                assert resp.status == 200, await resp.text()
                admin = str((await resp.json())["token"])
            served = Served(base, f"http://127.0.0.1:{verify_port}", admin, "", proc)
            minted = await served.mint(
                session,
                subject="svc-protected",
                operations=[VERDICT_OPERATION],
                service=True,  # the stream names subjects: only service (or admin) tokens follow it
                description="tokensvc-client tests",
            )
            served.service_token = str(minted["token"])
        yield served
    finally:
        for proc in procs:
            stop(proc)


@contextlib.contextmanager
def tokensvc_for_module(tmp_path: Path) -> Iterator[Served]:
    """One `tokensvc serve` (its own database and Redis prefix, removed at the end) for all the
    tests of a module, from a synchronous module-scoped fixture: a start costs ~10 CPU seconds
    on a 2-core CI host (three processes importing the server, a migration), which was most
    of each client test's time. The tests that share it mint their own tokens and users."""
    loop = LoopThread()
    stack = contextlib.AsyncExitStack()

    async def start() -> Served:
        pg_url = await stack.enter_async_context(fresh_database())
        prefix = await stack.enter_async_context(fresh_redis_prefix(REDIS_URL))
        return await stack.enter_async_context(
            serve_tokensvc(tmp_path, pg_url=pg_url, redis_url=REDIS_URL, redis_prefix=prefix)
        )

    try:
        yield loop.run(start(), timeout=300)
    finally:  # also after a failed start: what it did enter is left
        try:
            loop.run(stack.aclose(), timeout=120)
        finally:
            loop.close()


class TcpProxy:
    """A loopback TCP forwarder that a test can cut (every connection dropped, no new ones
    accepted) and restore: the stream's network path, broken for real."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


class LoopThread:
    """An event loop in a thread, so synchronous Hypothesis tests can drive async clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
