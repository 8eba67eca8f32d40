"""The request governor: concurrency caps, a bounded timed queue, quick refusals under overload."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from aiohttp.typedefs import Handler

from tests.conftest import ADMIN_PASSWORD, basic_auth, make_config
from tokensvc.operations.config import Config, ConfigError
from tokensvc.web import appkeys
from tokensvc.web import governor as governor_module
from tokensvc.web.app import create_app
from tokensvc.web.governor import GOVERNOR, Budget, Governor
from tokensvc.web.pipeline import request_pipeline
from tokensvc.web.routes import add_routes

SLOW_PATH = "/v1/_test/slow"
SLOW_SECONDS = 0.05


# ---- the budget on its own -----------------------------------------------------------------------


async def test_budget_queues_then_hands_over_in_order() -> None:
    """A freed slot goes to the longest waiter, and the count of active requests stays capped."""
    budget = Budget("t", max_concurrent=1, max_queue=2, timeout=1.0)
    assert budget.try_acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        assert await budget.wait() is None
        order.append(n)
        budget.release()

    tasks = [asyncio.create_task(waiter(n)) for n in (1, 2)]
    await asyncio.sleep(0)

    budget.release()
    await asyncio.gather(*tasks)

    assert order == [1, 2]
    assert budget.active == 0 and budget.queue_depth == 0


@pytest.mark.serial  # wall-clock bound: run alone
async def test_budget_refuses_when_queue_full_and_times_out_waiters() -> None:
    """A full queue refuses at once; a queued request gives up after the timeout, not later."""
    budget = Budget("t", max_concurrent=1, max_queue=1, timeout=0.1)
    assert budget.try_acquire()
    queued = asyncio.create_task(budget.wait())
    await asyncio.sleep(0)

    started = time.monotonic()
    assert await budget.wait() == "queue_full"
    assert time.monotonic() - started < 0.01
    assert await queued == "timeout"

    assert budget.stats.queue_full == 1 and budget.stats.timeout == 1
    assert 0.09 <= budget.stats.max_wait < 0.3
    assert budget.queue_depth == 0 and budget.active == 1


async def test_cancelled_waiter_passes_its_slot_on() -> None:
    """A client that goes away while queued neither leaks a slot nor blocks the next waiter."""
    budget = Budget("t", max_concurrent=1, max_queue=4, timeout=1.0)
    assert budget.try_acquire()
    gone = asyncio.create_task(budget.wait())
    stays = asyncio.create_task(budget.wait())
    await asyncio.sleep(0)

    budget.release()  # the slot is handed to `gone`, which is cancelled before it runs
    gone.cancel()

    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await stays is None
    budget.release()
    assert budget.active == 0 and budget.queue_depth == 0


def test_config_reads_governor_limits() -> None:
    """The governor's limits come from TOKENSVC_* variables, and nonsense is refused."""
    config = Config.from_env(
        {
            "TOKENSVC_MAX_CONCURRENT": "10",
            "TOKENSVC_MAX_QUEUE": "20",
            "TOKENSVC_QUEUE_TIMEOUT": "3s",
            "TOKENSVC_LOGIN_MAX_CONCURRENT": "2",
            "TOKENSVC_LOGIN_MAX_QUEUE": "4",
        }
    )

    assert (config.max_concurrent, config.max_queue) == (10, 20)
    assert config.queue_timeout == timedelta(seconds=3)
    assert (config.login_max_concurrent, config.login_max_queue) == (2, 4)
    with pytest.raises(ConfigError):
        Config.from_env({"TOKENSVC_MAX_CONCURRENT": "0"})


def test_login_and_basic_discharge_use_the_login_budget() -> None:
    """Password checks (login, Basic-authenticated discharge) are counted apart from the rest."""
    gov = Governor.from_config(Config())

    def budget(method: str, path: str, **headers: str) -> str | None:
        found = gov.budget_for(make_mocked_request(method, path, headers=headers))
        return None if found is None else found.name

    assert budget("POST", "/v1/login") == "login"
    assert budget("POST", "/bakery/discharge", Authorization="Basic eDp5") == "login"
    assert budget("POST", "/bakery/discharge", Authorization="Bearer x") == "default"
    assert budget("POST", "/v1/verify") == "default"
    assert budget("GET", "/healthz") is None
    assert budget("GET", "/readyz") is None
    assert budget("GET", "/metrics") is None


async def test_a_request_under_the_cap_takes_one_slot_and_gives_it_back() -> None:
    """The request pipeline holds a slot of the right budget for exactly the handler's run."""
    gov = Governor.from_config(Config())
    wrap = request_pipeline(tls=False, governor=gov)
    seen: list[tuple[int, int]] = []

    async def handler(_: web.Request) -> web.StreamResponse:
        seen.append((gov.default.active, gov.login.active))
        return web.Response()

    app = web.Application()
    app[appkeys.TRUSTED_PROXIES] = ()  # read for the log line
    for method, path in (("POST", "/v1/verify"), ("POST", "/v1/login"), ("GET", "/healthz")):
        await wrap(handler, path)(make_mocked_request(method, path, app=app))

    assert seen == [(1, 0), (0, 1), (0, 0)]
    assert (gov.default.active, gov.login.active) == (0, 0)
    assert gov.default.queue_depth == gov.login.queue_depth == 0


# ---- the real app under overload -----------------------------------------------------------------


@pytest.fixture
def small_limits_config(sqlite_url: str, data_dir: Path) -> Config:
    return make_config(database_url=sqlite_url, data_dir=data_dir).model_copy(
        update={
            "max_concurrent": 16,
            "max_queue": 32,
            "queue_timeout": timedelta(milliseconds=500),
            "login_max_concurrent": 2,
            "login_max_queue": 8,
        }
    )


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(SLOW_SECONDS)
    return web.json_response({"ok": True})


def _overload_count(budget: str, reason: str) -> float | None:
    """The metrics' count of overloads, or None while tokensvc.operations.metrics does not exist."""
    metrics = governor_module._metrics
    if metrics is None:
        return None
    value = metrics.GOVERNOR_REJECTIONS.labels(pool=budget, reason=reason)._value.get()
    return float(value)


@pytest.mark.serial  # wall-clock bound: run alone
async def test_2000_concurrent_requests_get_quick_answers(small_limits_config: Config) -> None:
    """2,000 requests at once against small limits: the excess is refused fast, nobody waits long."""
    app = create_app(small_limits_config)
    add_routes(app, [web.get(SLOW_PATH, _slow)])
    served: list[tuple[int, float]] = []  # (status, seconds inside the server), outermost view

    @web.middleware
    async def server_timing(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        response = await handler(request)
        served.append((response.status, time.monotonic() - started))
        return response

    app.middlewares.insert(0, server_timing)
    before = {
        (b, r): _overload_count(b, r)
        for b in ("default", "login")
        for r in ("queue_full", "timeout")
    }
    timeout_s = small_limits_config.queue_timeout.total_seconds()
    lag = 0.0  # how late the event loop runs timers: the slack every deadline in it gets

    async def measure_lag() -> None:
        nonlocal lag
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            lag = max(lag, time.monotonic() - started - 0.01)

    async with TestServer(app) as server:
        gov = app[GOVERNOR]
        monitor = asyncio.create_task(measure_lag())
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(kind: str) -> tuple[str, int, float, str | None, bool]:
                started = time.monotonic()
                if kind == "login":
                    resp = await session.post(
                        server.make_url("/v1/login"), headers=basic_auth("admin", ADMIN_PASSWORD)
                    )
                else:
                    resp = await session.get(server.make_url(SLOW_PATH))
                async with resp:
                    body = await resp.json()
                elapsed = time.monotonic() - started
                is_error_json = isinstance(body, dict) and "error" in body
                return kind, resp.status, elapsed, resp.headers.get("Retry-After"), is_error_json

            kinds = ["login"] * 300 + ["slow"] * 1700
            started = time.monotonic()
            results = await asyncio.gather(*(one(k) for k in kinds))
            wall = time.monotonic() - started
            monitor.cancel()
            healthz = await session.get(server.make_url("/healthz"))
            assert healthz.status == 200

    by_status = Counter((k, s) for k, s, *_ in results)
    latencies: dict[tuple[str, int], list[float]] = {}
    for kind, status, elapsed, retry_after, is_error_json in results:
        latencies.setdefault((kind, status), []).append(elapsed)
        if status in (429, 503):
            assert retry_after is not None and int(retry_after) >= 1
            assert is_error_json
    print(f"\noverload: 2000 requests in {wall:.2f}s; by (kind, status): {dict(by_status)}")
    for key, values in sorted(latencies.items()):
        values.sort()
        print(
            f"  {key}: n={len(values)} median={statistics.median(values) * 1000:.0f}ms "
            f"p99={values[int(len(values) * 0.99) - 1] * 1000:.0f}ms max={values[-1] * 1000:.0f}ms"
        )
    print(f"  event loop lag (max): {lag * 1000:.0f}ms")
    print(f"  governor stats: default={gov.default.stats} login={gov.login.stats}")
    inside: dict[int, list[float]] = {}
    for status, seconds in served:
        inside.setdefault(status, []).append(seconds)
    for status, values in sorted(inside.items()):
        values.sort()
        print(
            f"  server-side {status}: n={len(values)} median={statistics.median(values) * 1000:.1f}ms"
            f" max={values[-1] * 1000:.1f}ms"
        )

    assert set(by_status) <= {
        ("login", 200),
        ("login", 503),
        ("slow", 200),
        ("slow", 503),
    }
    assert by_status[("slow", 200)] >= 16 and by_status[("login", 200)] >= 2
    assert by_status[("slow", 503)] > 0 and by_status[("login", 503)] > 0
    # No request waited in the queue longer than the bound, give or take how late the (deliberately
    # flooded) event loop ran its timers.
    assert gov.default.stats.max_wait <= timeout_s + lag + 0.1
    assert gov.login.stats.max_wait <= timeout_s + lag + 0.1
    # Server side: nothing took longer than the queue bound plus the work; a full queue is
    # refused without waiting (the median refusal takes well under a millisecond of server time).
    assert max(t for _, t in served) <= timeout_s + lag + 2.0
    assert statistics.median(inside[503]) < 0.05
    # Client side: refusals and successes alike came back within the bound plus connection slack.
    assert max(e for *_, e, _r, _j in results) < timeout_s + lag + 5.0
    # Every slot came back.
    assert gov.default.active == 0 and gov.login.active == 0
    # The metrics saw the same overloads (when tokensvc.operations.metrics exists).
    for (budget, reason), start in before.items():
        now = _overload_count(budget, reason)
        if now is not None and start is not None:
            refused = getattr(getattr(gov, budget).stats, reason)
            assert now - start == refused, (budget, reason)


HOLD = "/v1/_test/hold"


def _one_slot_app(config: Config, method: str) -> tuple[web.Application, asyncio.Event]:
    """The app with one slot and no queue, and a route (`method` HOLD) that holds its slot until
    the event is set."""
    app = create_app(config.model_copy(update={"max_concurrent": 1, "max_queue": 0}))
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    add_routes(app, [web.route(method, HOLD, hold)])
    return app, release


async def _take_the_slot(
    app: web.Application, server: TestServer, session: aiohttp.ClientSession, method: str
) -> asyncio.Task[aiohttp.ClientResponse]:
    """A request to HOLD, in flight and holding the one slot."""
    held = asyncio.create_task(session.request(method, server.make_url(HOLD)))
    while app[GOVERNOR].default.active == 0:  # noqa: ASYNC110 - the governor has no event to wait on
        await asyncio.sleep(0.01)
    return held


async def test_exempt_paths_answer_while_saturated(small_limits_config: Config) -> None:
    """/healthz is answered even when every slot and the whole queue are taken."""
    app, release = _one_slot_app(small_limits_config, "GET")
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        held = await _take_the_slot(app, server, session, "GET")

        refused = await session.get(server.make_url(HOLD))
        health = await session.get(server.make_url("/healthz"))

        assert refused.status == 503
        assert (await refused.json())["error"]["code"] == "overloaded"
        assert refused.headers["Retry-After"] == "1"
        assert health.status == 200
        release.set()
        assert (await held).status == 200


@pytest.mark.parametrize("path", ["/v1/tokens/revoke", "/v1/login"])
async def test_a_body_that_trickles_in_holds_no_slot(
    small_limits_config: Config, path: str
) -> None:
    """Red team (helper-38): with the slot taken before the body was read, connections that
    sent a few bytes of a large body held every slot for the 30 s body timeout; every other
    request, an admin's included, got 503. Bodies are read first, outside the slots: the
    trickling requests hold their connections only, and a whole request is answered at once."""
    config = small_limits_config.model_copy(
        update={
            "max_concurrent": 2,
            "max_queue": 0,
            "login_max_concurrent": 2,
            "login_max_queue": 0,
        }
    )
    app = create_app(config)
    async with TestServer(app) as server:
        trickling = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                'Content-Length: 60000\r\n\r\n{"token"'.encode()
            )
            await writer.drain()
            trickling.append((reader, writer))
        await asyncio.sleep(0.3)  # the requests are in; their bodies are not
        try:
            async with aiohttp.ClientSession() as session:
                whole = await session.post(
                    server.make_url(path),
                    json={"token": "tsv1_nope"},
                    headers=basic_auth("admin", "not the password"),
                )
                answered = whole.status
        finally:
            for _, writer in trickling:
                writer.close()

    assert app[GOVERNOR].default.active == app[GOVERNOR].login.active == 0
    assert answered != 503, answered


async def test_a_body_that_fails_to_read_still_takes_a_slot(small_limits_config: Config) -> None:
    """Red team (helper-40): a request whose body failed to read (too large, here) skipped the
    governor, so requests that read no body ran past the cap: 60 of 60 answered where a cap of
    4 and a queue of 4 let 8 through. They now queue for a slot like any other."""
    app, release = _one_slot_app(small_limits_config, "POST")
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        held = await _take_the_slot(app, server, session, "POST")

        oversized = await session.post(server.make_url(HOLD), data=b"x" * 200_000)

        assert oversized.status == 503, await oversized.text()
        release.set()
        assert (await held).status == 200
