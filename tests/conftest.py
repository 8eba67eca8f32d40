"""Shared fixtures: real PostgreSQL and Redis, each test in its own database or key prefix.

The servers come from TOKENSVC_TEST_PG (an admin DSN) and TOKENSVC_TEST_REDIS. `./dev test`
starts throwaway servers when the defaults are not reachable; here an unreachable server stops
the run with a message instead of skipping, so a missing server can never pass as green. The
Redis Cluster and the Sentinel that the lockout tests also run on are throwaway servers started
from the local redis-server (tests/redis_servers.py); without one those tests fail, never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from tokensvc.operations.config import Config

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from redis.exceptions import RedisClusterException, RedisError

from tests.pg_servers import PrivatePostgres, pg_bindir
from tests.redis_servers import ClusterServers, SentinelServers

# Hypothesis' per-example deadline (200 ms) and its too_slow health check measure wall-clock time,
# which on a loaded 2-core CI host, or next to other xdist workers, says more about the neighbours
# than about the code (test_checker.py's mixed-predicates test failed with DeadlineExceeded so).
# The "ci" profile drops both; what a test must bound in time it asserts itself, in a `serial`
# test. print_blob makes any failure reproducible from CI's log. It is loaded under CI (CI set)
# and in xdist workers; HYPOTHESIS_PROFILE picks one explicitly ("default" keeps the deadline).
# Under CI it builds on Hypothesis' own CI settings (derandomize, no example database), so a CI
# run draws the same examples every time and cannot fail on one that a re-run would not draw.
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
_IN_CI = bool(os.environ.get("CI")) or "PYTEST_XDIST_WORKER" in os.environ
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if _IN_CI else "default"))

PG_ADMIN_DSN = os.environ.get("TOKENSVC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TOKENSVC_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _pg_url_for(database: str) -> str:
    """The SQLAlchemy URL of `database` on the test server."""
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + database


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    async with fresh_database() as url:
        yield url


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database (its SQLAlchemy URL), dropped at the end of the block."""
    name = "tokensvc_t_" + secrets.token_hex(6)
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.exit(
            f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({exc}). "
            "Run the tests with ./dev test, which starts a throwaway server, "
            "or set TOKENSVC_TEST_PG to an admin DSN.",
            returncode=3,
        )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _pg_url_for(name)
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this test's own, which it may stop and start at will."""
    bindir = pg_bindir()
    if bindir is None:
        # A failure, not a skip: the fault tests are part of the bar.
        pytest.fail(
            "the fault tests need PostgreSQL server binaries (initdb, pg_ctl) for a private "
            "server: apt-get install postgresql"
        )
    pg = PrivatePostgres(bindir)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.remove()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file in the test's temporary directory."""
    return f"sqlite+aiosqlite:///{tmp_path / 'tokensvc.db'}"


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


#: The kinds of Redis the lockout store is tested on: one server, a Cluster, a Sentinel's master.
REDIS_KINDS = ("redis", "cluster", "sentinel")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterServers]:
    """A throwaway Redis Cluster of three masters on loopback ports, shared by the whole run."""
    cluster = ClusterServers()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelServers]:
    """A throwaway master watched by one Sentinel, shared by the whole run."""
    servers = SentinelServers()
    try:
        servers.start()
        yield servers
    finally:
        servers.remove()


def redis_url_of(request: pytest.FixtureRequest, kind: str) -> str:
    """The `TOKENSVC_REDIS_URL` of a Redis of `kind` (one of REDIS_KINDS), started if need be."""
    if kind == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    if kind == "sentinel":
        return str(request.getfixturevalue("redis_sentinel").url)
    return REDIS_URL


@pytest.fixture(params=REDIS_KINDS)
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """Each kind of Redis in turn: the shared server, a three-master Cluster, a Sentinel's master."""
    return redis_url_of(request, request.param)


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A unique key prefix for one test; every key under it is deleted afterwards."""
    async with fresh_redis_prefix(redis_url) as prefix:
        yield prefix


@contextlib.asynccontextmanager
async def fresh_redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A unique key prefix on `redis_url`; every key under it is deleted at the end of the block."""
    from tokensvc.operations.redisconn import redis_client_from_url

    prefix = "tokensvc-test-" + secrets.token_hex(6) + ":"
    client = redis_client_from_url(redis_url)
    try:
        # The service's client times out after 0.5 s; on a loaded machine one slow answer from a
        # throwaway cluster node is not "unreachable", so ask again for a few seconds first.
        for attempt in range(10):
            try:
                await client.ping()
                break
            except (OSError, RedisError, RedisClusterException):
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)
    except (OSError, RedisError, RedisClusterException) as exc:
        await client.aclose()
        pytest.exit(
            f"Redis is not reachable at {redis_url} ({exc}). "
            "Run the tests with ./dev test, which starts a throwaway server, "
            "or set TOKENSVC_TEST_REDIS.",
            returncode=3,
        )
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=500)]
        # Cluster-style hash tags put the prefix inside braces; clean those up too.
        keys += [key async for key in client.scan_iter(match="{" + prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A private data directory (KEK file, SQLite file) for one test."""
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    return path


# ---- the application ---------------------------------------------------------------------------

ADMIN_PASSWORD = "correct horse battery staple"


class FakeClock:
    """A settable UTC clock, injected into the app so tests move time instead of sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        from datetime import UTC, datetime

        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        from datetime import timedelta

        self.now += timedelta(**delta)


def mask_challenge(raw: bytes) -> bytes:
    """A 401 login body with its MFA challenge (random, real or decoy) replaced by its length:
    what must be byte-identical between failures that must look alike."""
    return re.sub(
        rb'"challenge":"([A-Za-z0-9_-]+)"', lambda m: b'"challenge":"%d"' % len(m.group(1)), raw
    )


def basic_auth(username: str, password: str) -> dict[str, str]:
    """An Authorization header for HTTP Basic."""
    import base64

    raw = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_config(*, database_url: str, data_dir: Path, **overrides: object) -> Config:
    """A test configuration: cheap argon2 (allowed explicitly), a fresh KEK, the bootstrap admin's
    known password; the overrides are validated like every configuration."""
    import base64

    from tokensvc.operations.config import Config

    values: dict[str, object] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "kek": base64.b64encode(secrets.token_bytes(32)).decode(),
        "admin_password": ADMIN_PASSWORD,
        "password_profile": "CHEAP_FOR_TESTS",
        "allow_insecure": frozenset({"test-password-profile"}),
    }
    return Config(**{**values, **overrides})


@pytest.fixture(params=["postgres", "sqlite"])
def app_config(request: pytest.FixtureRequest, data_dir: Path, sqlite_url: str) -> Config:
    """The app's configuration on real PostgreSQL, and on the embedded SQLite."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else sqlite_url
    return make_config(database_url=url, data_dir=data_dir)


@pytest.fixture
def pg_config(pg_url: str, data_dir: Path) -> Config:
    """The app's configuration on real PostgreSQL only."""
    return make_config(database_url=pg_url, data_dir=data_dir)


@pytest.fixture
async def client(aiohttp_client, app_config, clock):  # type: ignore[no-untyped-def]
    """A test client for the real app factory, served as `tokensvc serve` serves it: POST
    /v1/verify goes to the verify listener (tokensvc.web.verifyport), the rest to the app."""
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    return await aiohttp_client(ServedTestServer(create_app(app_config, clock=clock)))


@pytest.fixture
async def admin_token(client) -> str:  # type: ignore[no-untyped-def]
    """A token for the bootstrap admin, obtained through POST /v1/login."""
    resp = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


@pytest.fixture(params=["compiled", "python"])
def verify_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the compiled verify path (tokensvc._speedups) and on the pure-Python one
    that stands in where the extension could not be built."""
    from tokensvc.macaroons import chain, macaroon, tokenformat

    if request.param == "compiled":
        assert chain._first_party_chain is not None, SPEEDUPS_MISSING
    else:
        monkeypatch.setattr(chain, "_hmac", chain._hmac_python)
        monkeypatch.setattr(chain, "_first_party_chain", None)
        monkeypatch.setattr(macaroon, "_compiled_parse_v2", None)
        monkeypatch.setattr(tokenformat, "_compiled_b64decode", None)
        monkeypatch.setattr(tokenformat, "_compiled_decode_tsv1", None)
    return str(request.param)


SPEEDUPS_MISSING = (
    "tokensvc._speedups is not built: install a C compiler and the OpenSSL headers "
    "(apt-get install gcc libssl-dev) and run ./dev again (or pip install -e .)"
)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the system's openssl."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
