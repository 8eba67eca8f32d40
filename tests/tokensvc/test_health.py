"""Honest health: /readyz answers whether this process can verify, names what is degraded, and
the metrics and the log say the same; an outage is logged once, then sparingly, then once more.

Redis here is a private redis-server that the tests stop (never the shared one); the database is
the test's own PostgreSQL database, made to refuse connections.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FakeClock, make_config
from tests.redis_servers import RedisServer
from tests.security.test_outages import refusing_connections
from tokensvc.operations.outages import Outage, Outages, cause_of, is_outage
from tokensvc.tokens.minting import MintRequest
from tokensvc.web import appkeys
from tokensvc.web.app import create_app


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own on a free port, which the test may stop."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def gauge(text: str, name: str, labels: str = "") -> float:
    """The value of one series in a Prometheus text exposition."""
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in the metrics"
    return float(match.group(1))


async def ready_and_metrics(client: Any) -> tuple[int, dict[str, Any], str]:
    resp = await client.get("/readyz")
    body = await resp.json()
    metrics = await (await client.get("/metrics")).text()
    return resp.status, body, metrics


async def test_redis_down_leaves_the_verifier_ready_and_says_what_is_degraded(
    aiohttp_client: Any, pg_url: str, data_dir: Path, own_redis: RedisServer, clock: FakeClock
) -> None:
    """Redis stopped: /readyz stays 200 ("degraded", redis unavailable, logins named as what
    fails), /v1/verify answers 200, tokensvc_dependency_up{redis} is 0 while tokensvc_ready is 1;
    Redis back: "ready" again and the gauge is 1."""
    config = make_config(database_url=pg_url, data_dir=data_dir, redis_url=own_redis.url)
    client = await aiohttp_client(create_app(config, clock=clock))
    minted = await client.app[appkeys.MINTER].mint(
        MintRequest(subject="svc", ttl=timedelta(hours=1))
    )
    before = await ready_and_metrics(client)

    own_redis.stop()
    during = await ready_and_metrics(client)
    verified = await client.post("/v1/verify", json={"token": minted.token})
    own_redis.start()
    after = await ready_and_metrics(client)

    assert before[0] == 200 and before[1]["status"] == "ready", before[1]
    assert during[0] == 200, during[1]
    assert during[1]["status"] == "degraded"
    assert during[1]["checks"] == {"database": "ok", "redis": "unavailable"}
    assert during[1]["verify"] == "ok"
    assert "logins" in during[1]["degraded"]["redis"]
    assert gauge(during[2], "tokensvc_dependency_up", '{dependency="redis"}') == 0
    assert gauge(during[2], "tokensvc_dependency_up", '{dependency="database"}') == 1
    assert gauge(during[2], "tokensvc_ready") == 1
    assert verified.status == 200, await verified.text()
    assert after[0] == 200 and after[1]["status"] == "ready", after[1]
    assert "degraded" not in after[1]
    assert gauge(after[2], "tokensvc_dependency_up", '{dependency="redis"}') == 1


async def test_database_down_is_ready_only_while_the_signing_key_is_in_memory(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """Database refusing connections: /readyz is 200 "degraded" with verify "cached keys" while
    this process holds the key it mints with (and a token on it verifies); once that key is gone
    from memory the process cannot verify, and /readyz is 503 "not ready" with tokensvc_ready 0."""
    client = await aiohttp_client(
        create_app(make_config(database_url=pg_url, data_dir=data_dir), clock=clock)
    )
    keyring = client.app[appkeys.KEYRING]
    minted = await client.app[appkeys.MINTER].mint(
        MintRequest(subject="svc", ttl=timedelta(hours=1))
    )

    async with refusing_connections(pg_url.rsplit("/", 1)[1]):
        cached = await ready_and_metrics(client)
        verified = await client.post("/v1/verify", json={"token": minted.token})
        keyring.forget((await keyring.current()).id)
        lost = await ready_and_metrics(client)
    recovered = await ready_and_metrics(client)

    assert cached[0] == 200, cached[1]
    assert cached[1]["status"] == "degraded"
    assert cached[1]["verify"] == "cached keys"
    assert cached[1]["checks"]["database"] == "unavailable"
    assert "minting" in cached[1]["degraded"]["database"]
    assert gauge(cached[2], "tokensvc_dependency_up", '{dependency="database"}') == 0
    assert verified.status == 200, await verified.text()
    assert lost[0] == 503, lost[1]
    assert lost[1]["status"] == "not ready" and lost[1]["verify"] == "unavailable"
    assert gauge(lost[2], "tokensvc_ready") == 0
    assert recovered[0] == 200 and recovered[1]["status"] == "ready", recovered[1]
    assert gauge(recovered[2], "tokensvc_ready") == 1


async def test_a_redis_outage_is_logged_once_then_once_on_recovery(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Path,
    own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reproduction: Redis down for 3 s with the revocation subscription retrying every
    0.1 s and /readyz asked 10 times: one line when it starts (naming the cause, no traceback),
    one when Redis is back, nothing else from tokensvc about it."""
    config = make_config(
        database_url=pg_url,
        data_dir=data_dir,
        redis_url=own_redis.url,
        revocation_refresh_interval=timedelta(seconds=0.1),
    )
    client = await aiohttp_client(create_app(config))
    await asyncio.sleep(0.3)  # the subscription is up
    caplog.set_level(logging.DEBUG, logger="tokensvc")
    caplog.clear()

    own_redis.stop()
    for _ in range(10):
        await client.get("/readyz")
        await asyncio.sleep(0.3)
    own_redis.start()
    await asyncio.sleep(1.0)  # the subscription is back

    lines = [
        r
        for r in caplog.records
        if r.levelno >= logging.INFO
        and r.name.startswith("tokensvc")
        and r.name != "tokensvc.access"  # one line per request, by design
    ]
    messages = [r.getMessage() for r in lines]
    assert len(lines) == 2, messages
    assert messages[0].startswith("redis unavailable ("), messages
    assert "Connection" in messages[0] or "refused" in messages[0], messages
    assert messages[1].startswith("redis available again after"), messages
    assert all(r.exc_info is None for r in lines)
    assert sum(len(m) for m in messages) < 600


async def test_readiness_answers_within_the_probe_timeout_when_dependencies_hang() -> None:
    """A database host that accepts connections and never answers, and a Redis probe that
    hangs: readiness still answers in about PROBE_TIMEOUT (not the driver's 5 s connect timeout,
    past a kubelet's probe timeout), saying both are unavailable and naming the timeout."""
    import socket
    import time

    from keystore import create_engine
    from tokensvc.services.health import PROBE_TIMEOUT, HealthService

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never speaks
    engine = create_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{silent.getsockname()[1]}/x")
    outages = Outages(dependencies=("database", "redis"))
    health = HealthService(
        engine=engine, probes={"redis": lambda: asyncio.sleep(30)}, outages=outages
    )
    try:
        started = time.monotonic()
        readiness = await health.readiness()
        elapsed = time.monotonic() - started
    finally:
        await engine.dispose()
        silent.close()

    assert elapsed < PROBE_TIMEOUT + 0.5, elapsed
    assert readiness.checks == {"database": "unavailable", "redis": "unavailable"}
    assert not readiness.ready  # no keyring: nothing in memory to verify with
    assert outages.is_down("database") and outages.is_down("redis")


def test_a_long_outage_is_reminded_at_most_once_a_minute_with_a_count() -> None:
    """Ten minutes of failures twice a second: the start, nine reminders (each counting the
    failures since the previous line) and the recovery: 11 lines, not 1,200."""
    now = [0.0]
    logger = logging.getLogger("tokensvc.test.outage")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    outage = Outage("refreshing things", logger=logger, clock=lambda: now[0])
    try:
        for _ in range(1200):
            outage.failed(ConnectionRefusedError(111, "Connection refused"))
            now[0] += 0.5
        outage.recovered()
    finally:
        logger.removeHandler(handler)

    messages = [r.getMessage() for r in records]
    assert len(messages) == 11, messages
    assert (
        messages[0]
        == "refreshing things failed: ConnectionRefusedError: [Errno 111] Connection refused; retrying"
    )
    assert all("still failing" in m and "120 failures" in m for m in messages[1:10]), messages
    assert messages[10] == "refreshing things recovered after 600s (1200 failures)"


def test_a_flapping_dependency_is_held_to_the_same_rate() -> None:
    """A dependency that goes down and up every second for two minutes writes a start line and
    its recovery at most once a minute, not 240 lines."""
    now = [0.0]
    logger = logging.getLogger("tokensvc.test.flap")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    outage = Outage("redis", logger=logger, clock=lambda: now[0])
    try:
        for _ in range(120):
            outage.failed(TimeoutError("timed out"))
            now[0] += 0.5
            outage.recovered()
            now[0] += 0.5
    finally:
        logger.removeHandler(handler)

    assert len(records) == 4, [r.getMessage() for r in records]


def test_outage_causes_are_recognised_and_named_in_one_line() -> None:
    """Connection failures (also wrapped) are outages and are named by their innermost cause;
    a programming error is not an outage."""
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("the store\ncould not connect") from inner
    except RuntimeError as exc:
        wrapped = exc

    assert is_outage(wrapped)
    assert not is_outage(KeyError("bug"))
    assert cause_of(wrapped) == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert "\n" not in cause_of(RuntimeError("a\nb"))


def test_dependency_gauges_start_up_and_follow_outages() -> None:
    """Each watched dependency has a tokensvc_dependency_up series from the start (1), set to 0
    by a failure and back to 1 by a success."""
    from prometheus_client import REGISTRY

    def value() -> float | None:
        return REGISTRY.get_sample_value("tokensvc_dependency_up", {"dependency": "redis"})

    outages = Outages(dependencies=("database", "redis"))

    start = value()
    outages.failed("redis", ConnectionRefusedError(), during="test")
    down = value()
    outages.ok("redis")

    assert (start, down, value()) == (1, 0, 1)
    assert outages.is_down("redis") is False
