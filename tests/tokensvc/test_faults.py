"""Faults on real servers: PostgreSQL and Redis stopped and restarted under load; graceful shutdown.

PostgreSQL and Redis here are PRIVATE throwaway servers (the way ./dev starts them), so stopping
them never touches the shared ones the rest of the suite uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ADMIN_PASSWORD, basic_auth, make_config
from tests.pg_servers import PrivatePostgres
from tests.redis_servers import RedisServer, free_port
from tokensvc.web.app import create_app
from tokensvc.web.routes import add_routes


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    redis = RedisServer()  # fails, never skips, without redis-server
    try:
        redis.start()
        yield redis
    finally:
        redis.remove()


class VerifyLoad:
    """A steady /v1/verify load from a few concurrent loops; counts answers by status."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session, self.url, self.token = session, url, token
        self.statuses: Counter[int | str] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.session.post(self.url, json={"token": self.token}) as resp:
                    await resp.read()
                    self.statuses[resp.status] += 1
            except aiohttp.ClientError as exc:
                self.statuses[type(exc).__name__] += 1
            await asyncio.sleep(0.002)

    def start(self, workers: int = 4) -> None:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(workers)]

    def snapshot(self) -> Counter[int | str]:
        return Counter(self.statuses)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _until(predicate: object, *, timeout: float = 60.0) -> float:  # noqa: ASYNC109 - bounds the polling, not one await
    """Seconds until the async `predicate()` is true, polling every 100 ms."""
    started = time.monotonic()
    while not await predicate():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise AssertionError("did not recover within the timeout")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def _delta(after: Counter[int | str], before: Counter[int | str]) -> dict[int | str, int]:
    return {k: after[k] - before[k] for k in after if after[k] - before[k]}


async def test_postgres_then_redis_down_and_back_under_verify_load(
    aiohttp_client, private_pg: PrivatePostgres, private_redis: RedisServer, data_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    """Verify serves through both outages and readiness says so (200, degraded); minting and
    login fail fast and recover."""
    config = make_config(database_url=private_pg.url, data_dir=data_dir)
    config = config.model_copy(update={"redis_url": private_redis.url})
    client = await aiohttp_client(create_app(config))
    login = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    assert login.status == 200, await login.text()
    admin = {"Authorization": "Bearer " + (await login.json())["token"]}
    minted = await client.post("/v1/tokens", json={"subject": "svc", "ttl": "1h"}, headers=admin)
    assert minted.status == 201, await minted.text()
    token = (await minted.json())["token"]
    session = client.session
    load = VerifyLoad(session, str(client.make_url("/v1/verify")), token)
    figures: dict[str, object] = {}

    async def mint_status() -> tuple[int, dict[str, object], str | None]:
        resp = await client.post("/v1/tokens", json={"subject": "svc"}, headers=admin)
        return resp.status, await resp.json(), resp.headers.get("Retry-After")

    async def ready() -> bool:
        resp = await client.get("/readyz")
        return resp.status == 200 and (await resp.json())["status"] == "ready"

    load.start()
    await asyncio.sleep(1.0)
    baseline = load.snapshot()

    # ---- PostgreSQL down ------------------------------------------------------------------------
    await asyncio.to_thread(private_pg.stop)
    down_at = load.snapshot()
    await asyncio.sleep(2.0)
    readyz = await client.get("/readyz")
    mint_down = await mint_status()
    await asyncio.sleep(1.0)
    pg_outage = _delta(load.snapshot(), down_at)
    figures["pg_down.verify"] = pg_outage
    figures["pg_down.readyz"] = readyz.status
    figures["pg_down.readyz_body"] = {k: (await readyz.json())[k] for k in ("status", "verify")}
    figures["pg_down.mint"] = (mint_down[0], mint_down[1].get("error"), mint_down[2])

    # ---- PostgreSQL back ------------------------------------------------------------------------
    await asyncio.to_thread(private_pg.start)
    up_at = load.snapshot()

    async def minting_works() -> bool:
        return (await mint_status())[0] == 201

    figures["pg_up.seconds_to_mint"] = round(await _until(minting_works), 2)
    figures["pg_up.seconds_to_ready"] = round(await _until(ready), 2)
    figures["pg_up.verify"] = _delta(load.snapshot(), up_at)

    # ---- Redis down -----------------------------------------------------------------------------
    await asyncio.to_thread(private_redis.stop)
    redis_down_at = load.snapshot()
    login_down = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    login_down_body = await login_down.json()
    readyz_redis = await client.get("/readyz")
    await asyncio.sleep(1.5)
    figures["redis_down.verify"] = _delta(load.snapshot(), redis_down_at)
    figures["redis_down.login"] = (
        login_down.status,
        login_down_body.get("error"),
        login_down.headers.get("Retry-After"),
    )
    figures["redis_down.readyz"] = readyz_redis.status
    figures["redis_down.readyz_body"] = {
        k: (await readyz_redis.json())[k] for k in ("status", "verify")
    }

    # ---- Redis back -----------------------------------------------------------------------------
    await asyncio.to_thread(private_redis.start)
    redis_up_at = load.snapshot()

    async def login_works() -> bool:
        resp = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
        return resp.status == 200

    figures["redis_up.seconds_to_login"] = round(await _until(login_works), 2)
    figures["redis_up.seconds_to_ready"] = round(await _until(ready), 2)
    await asyncio.sleep(0.5)
    figures["redis_up.verify"] = _delta(load.snapshot(), redis_up_at)
    await load.stop()
    await client.close()  # the app's cleanup runs now, while its servers are still up
    figures["baseline.verify_per_s"] = baseline[200]
    figures["total.verify"] = dict(load.statuses)

    print("\nfault figures:")
    for name, value in figures.items():
        print(f"  {name}: {value}")

    # Verify served from cached keys through both outages, with no error at all.
    assert set(pg_outage) == {200} and pg_outage[200] > 0
    assert set(figures["redis_down.verify"]) == {200}  # type: ignore[arg-type]
    assert set(load.statuses) == {200}
    # Both times the process still verified, so it stayed ready, saying what was degraded.
    assert readyz.status == 200 and readyz_redis.status == 200
    assert figures["pg_down.readyz_body"] == {"status": "degraded", "verify": "cached keys"}
    assert figures["redis_down.readyz_body"] == {"status": "degraded", "verify": "ok"}
    assert mint_down[0] == 503 and mint_down[2] is not None
    assert login_down.status == 503 and login_down.headers.get("Retry-After")
    assert login_down_body["error"]["code"] == "unavailable"


@pytest.mark.serial  # wall-clock bound: run alone
async def test_graceful_shutdown_completes_requests_in_flight(
    sqlite_url: str, data_dir: Path
) -> None:
    """A request in flight when the server shuts down still gets its full answer."""
    app = create_app(make_config(database_url=sqlite_url, data_dir=data_dir))
    entered = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(1.0)
        return web.json_response({"done": True})

    add_routes(app, [web.get("/v1/_test/slow", slow)])
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/v1/_test/slow"))
        await entered.wait()

        started = time.monotonic()
        await runner.cleanup()
        shutdown_seconds = time.monotonic() - started

        resp = await in_flight
        assert resp.status == 200
        assert await resp.json() == {"done": True}
    print(f"\ngraceful shutdown: in-flight request completed; cleanup took {shutdown_seconds:.2f}s")
    assert shutdown_seconds < 5


async def test_a_stalled_redis_does_not_hold_a_revocation(
    aiohttp_client: object, private_redis: RedisServer, sqlite_url: str, data_dir: Path
) -> None:
    """Red team: with Redis accepting connections but answering nothing (here: the server
    stopped with SIGSTOP), POST /v1/tokens/revoke hung 616 s: the revocation was committed and
    in force, but the answer waited on the PUBLISH to other replicas; then a revocation's
    cascade took a bounded second per descendant. All of one revocation's messages are
    published together, within one bound; replicas poll for what it could not tell them."""
    import os
    import signal

    from tests.security.attack import call, login, verify
    from tests.served import ServedTestServer

    config = make_config(database_url=sqlite_url, data_dir=data_dir, redis_url=private_redis.url)
    client = await aiohttp_client(ServedTestServer(create_app(config)))  # type: ignore[operator]
    admin = await login(client, "admin", ADMIN_PASSWORD)
    status, minted = await call(client, "POST", "/v1/tokens", admin, json={"subject": "svc"})
    assert status == 201, minted
    parent = await login(client, "admin", ADMIN_PASSWORD)
    for n in range(20):  # a cascade: one publish per descendant took 1 s each behind the stall
        status, child = await call(client, "POST", "/v1/tokens", parent, json={"subject": f"c{n}"})
        assert status == 201, child
    parent_id = (await verify(client, parent))[1]["token_id"]
    assert private_redis.process is not None
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        async with asyncio.timeout(20):
            resp = await client.post("/v1/tokens/revoke", json={"token": minted["token"]})
        took = time.monotonic() - started
        refused = (await verify(client, minted["token"]))[0]
        started = time.monotonic()
        async with asyncio.timeout(60):
            cascaded = await call(client, "DELETE", f"/v1/tokens/{parent_id}", admin)
        cascade_took = time.monotonic() - started
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)

    assert resp.status == 204
    assert took < 5, took
    assert refused == 401
    assert cascaded[0] == 204
    assert cascade_took < 5, cascade_took


@contextlib.contextmanager
def stalled(redis: RedisServer, seconds: float) -> Iterator[None]:
    """Freeze the server (SIGSTOP) for `seconds` from now: it holds what it was sent meanwhile
    and runs it when it resumes, as a Redis stalled by a fork or a slow disk does."""
    assert redis.process is not None
    pid = redis.process.pid
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, os.kill, (pid, signal.SIGCONT))
    timer.start()
    try:
        yield
    finally:
        timer.join()


async def test_a_stalled_redis_is_unavailable_never_a_spent_code_or_a_double_count(
    private_redis: RedisServer,
) -> None:
    """Red team (helper-58): Redis frozen for 1.5 s, longer than the client's 1 s timeout. The
    client sent each command a second time after the timeout, and Redis ran both: a code never
    used before came back "already used" (the login answered "wrong code", counted it, and a
    recovery code was lost), and one login attempt counted twice. Now the caller is told the
    store is unavailable (a 503 that counts nothing), and what Redis ran late ran once."""
    from tokensvc.accounts.lockout import RedisLockoutStore
    from tokensvc.accounts.otpstate import RedisOnceStore
    from tokensvc.errors import Unavailable
    from tokensvc.operations.redisconn import redis_client_from_url

    client = redis_client_from_url(private_redis.url)
    once = RedisOnceStore(client, prefix="t:once:")
    lockout = RedisLockoutStore(client, prefix="t:lockout:")
    try:
        assert await once.claim("warm", ttl=60, now=0)  # a connection in the pool
        with stalled(private_redis, 1.5), pytest.raises(Unavailable):
            await once.claim("fresh", ttl=60, now=0)
        with stalled(private_redis, 1.5), pytest.raises(Unavailable):
            await lockout.begin_attempt(identity="alice", client_ip="192.0.2.7", now=time.time())
        await asyncio.sleep(0.2)  # what the frozen server held has run

        status = await lockout.status("alice", time.time())
        assert status.failures <= 1  # the attempt Redis ran late, once; never twice
        with private_redis.client() as sync:
            ip_counters = [sync.hget(key, "n") for key in sync.keys("t:lockout:ip:*")]
        assert all(int(n or 0) <= 1 for n in ip_counters), ip_counters
    finally:
        await client.aclose()


async def test_a_claim_redis_receives_twice_answers_the_same(private_redis: RedisServer) -> None:
    """The spent-code claim is its claimant's: the same command run twice (a retry after a
    dropped connection reached Redis after all) says yes both times, another claimant no."""
    from tokensvc.accounts.otpstate import _CLAIM

    with private_redis.client() as sync:
        claim = sync.register_script(_CLAIM)
        first, again = (claim(keys=["t:c"], args=["me", 60000]) for _ in range(2))
        other = claim(keys=["t:c"], args=["someone else", 60000])
    assert (first, again, other) == (1, 1, 0)


async def test_a_stalled_redis_cluster_counts_an_attempt_at_most_once(
    redis_cluster: Any,
) -> None:
    """Review (helper-60): the cluster client retries on its own, timeouts included, so with
    redis+cluster:// a stall still ran the counting scripts twice. Every node frozen for 1.5 s:
    the caller hears the store is unavailable, and the attempt counts once at most."""
    from tokensvc.accounts.lockout import RedisLockoutStore
    from tokensvc.errors import Unavailable
    from tokensvc.operations.redisconn import redis_client_from_url

    client = redis_client_from_url(redis_cluster.url)
    lockout = RedisLockoutStore(client, prefix="t-stall:lockout:")
    try:
        await lockout.status("carol", time.time())  # the slots are known, connections open
        with contextlib.ExitStack() as stack:
            for node in redis_cluster.nodes:
                stack.enter_context(stalled(node, 1.5))
            with pytest.raises(Unavailable):
                await lockout.begin_attempt(
                    identity="carol", client_ip="192.0.2.8", now=time.time()
                )
        await asyncio.sleep(0.5)  # what the frozen nodes held has run

        status = await lockout.status("carol", time.time())
        assert status.failures <= 1
        await lockout.clear("carol")
    finally:
        await client.aclose()
