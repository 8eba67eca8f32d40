"""Attacks through outages: a dependency down is an honest 503, never a 500, never an allow, and
an attempt that could not be judged never counts against anyone (hole B5).

The database is made unavailable three ways: PostgreSQL refusing connections to the test's own
database (`ALLOW_CONNECTIONS false`, SQLSTATE 55000, the reproduction), a private PostgreSQL
server stopped outright, and the embedded SQLite file held locked by another writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import ADMIN_PASSWORD, PG_ADMIN_DSN, FakeClock, basic_auth, make_config
from tests.pg_servers import PrivatePostgres
from tests.security.attack import bearer, call, create_user, login, verify
from tests.served import ServedTestServer
from tokensvc.web import appkeys
from tokensvc.web.app import create_app

PASSWORD = "her long lantern passphrase"


def assert_unavailable(status: int, headers: Any, body: Any) -> None:
    """A 503 with Retry-After and the JSON error shape."""
    assert status == 503, body
    assert int(headers["Retry-After"]) >= 1
    assert body["error"]["code"] == "unavailable", body


async def request(client: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    resp = await client.request(method, path, **kwargs)
    body = await resp.json() if resp.content_type == "application/json" else await resp.text()
    return resp.status, resp.headers, body


@asynccontextmanager
async def refusing_connections(database: str) -> AsyncIterator[None]:
    """PostgreSQL refuses new connections to `database` (55000) and drops the open ones."""
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()


async def pg_redis_app(
    aiohttp_client: Any, url: str, data_dir: Path, redis_url: str, prefix: str, clock: FakeClock
) -> Any:
    config = make_config(
        database_url=url, data_dir=data_dir, redis_url=redis_url, redis_prefix=prefix
    )
    return await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))


async def test_a_database_refusing_connections_is_503_everywhere_and_counts_nothing(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Path,
    redis_url: str,
    redis_prefix: str,
    clock: FakeClock,
) -> None:
    """The reproduction: with the database refusing connections, login, the user list and
    minting answer 503 + Retry-After (never 500); verify of a token whose key is cached still
    answers; thirty right-password logins during the outage are not counted, so the owner logs in
    at once afterwards."""
    client = await pg_redis_app(aiohttp_client, pg_url, data_dir, redis_url, redis_prefix, clock)
    admin = await login(client, "admin", ADMIN_PASSWORD)
    await create_user(client, admin, "alice", PASSWORD)
    token = (await call(client, "POST", "/v1/tokens", admin, json={"subject": "svc"}))[1]["token"]

    async with refusing_connections(pg_url.rsplit("/", 1)[1]):
        logins = [
            await request(client, "POST", "/v1/login", headers=basic_auth("alice", PASSWORD))
            for _ in range(30)
        ]
        users = await request(client, "GET", "/v1/users", headers=bearer(admin))
        mint = await request(client, "POST", "/v1/tokens", headers=bearer(admin), json={})
        verified = await verify(client, token)

    for answer in [*logins, users, mint]:
        assert_unavailable(*answer)
    assert verified[0] == 200
    assert await login(client, "alice", PASSWORD)


async def test_a_stopped_database_server_is_503_and_counts_nothing(
    aiohttp_client: Any,
    private_pg: PrivatePostgres,
    data_dir: Path,
    redis_url: str,
    redis_prefix: str,
    clock: FakeClock,
) -> None:
    """A real outage (the server stopped): wrong and right passwords alike get 503, none of them
    is counted, and after the restart the owner logs in with no lockout."""
    client = await pg_redis_app(
        aiohttp_client, private_pg.url, data_dir, redis_url, redis_prefix, clock
    )
    admin = await login(client, "admin", ADMIN_PASSWORD)
    await create_user(client, admin, "alice", PASSWORD)

    private_pg.stop()
    try:
        answers = [
            await request(client, "POST", "/v1/login", headers=basic_auth("alice", password))
            for password in [PASSWORD, "wrong guess"] * 10
        ]
        revoke_all = await request(
            client, "POST", "/v1/subjects/alice/revoke-all", headers=bearer(admin)
        )
        keys = await request(client, "POST", "/v1/keys/rotate", headers=bearer(admin))
    finally:
        private_pg.start()

    for answer in [*answers, revoke_all, keys]:
        assert_unavailable(*answer)
    assert await login(client, "alice", PASSWORD)


async def test_a_key_that_is_neither_cached_nor_readable_is_503_not_a_verdict(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Path,
    redis_url: str,
    redis_prefix: str,
    clock: FakeClock,
) -> None:
    """With the key store down and the token's root key not in this process's memory, /v1/verify
    and POST /v1/tokens answer 503 + Retry-After: neither an allow nor a deny."""
    client = await pg_redis_app(aiohttp_client, pg_url, data_dir, redis_url, redis_prefix, clock)
    admin = await login(client, "admin", ADMIN_PASSWORD)
    status, minted = await call(
        client, "POST", "/v1/tokens", admin, json={"subject": "svc", "service": True, "ttl": "2d"}
    )
    assert status == 201, minted
    client.app[appkeys.SERVICE_KEYS].forget(minted["key_id"])
    client.app[appkeys.VERIFIER].cache.forget_key(minted["key_id"])

    async with refusing_connections(pg_url.rsplit("/", 1)[1]):
        verified = await request(client, "POST", "/v1/verify", json={"token": minted["token"]})
        mint = await request(client, "POST", "/v1/tokens", headers=bearer(admin), json={})

    assert_unavailable(*verified)
    assert_unavailable(*mint)
    assert (await verify(client, minted["token"]))[0] == 200


async def test_a_locked_sqlite_database_is_503_and_counts_nothing(
    aiohttp_client: Any, sqlite_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """Embedded: while another writer holds the SQLite file locked past the busy timeout, a
    user change answers 503 (not 500), and the right password still logs in afterwards."""
    config = make_config(database_url=sqlite_url, data_dir=data_dir)
    client = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    admin = await login(client, "admin", ADMIN_PASSWORD)
    await create_user(client, admin, "alice", PASSWORD)
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///"), timeout=0.1)
    holder.isolation_level = None

    holder.execute("BEGIN EXCLUSIVE")
    try:
        patched = await request(
            client, "PATCH", "/v1/users/alice", headers=bearer(admin), json={"disabled": True}
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert_unavailable(*patched)
    assert await login(client, "alice", PASSWORD)


async def test_a_replica_that_cannot_read_revocations_stops_vouching_for_caches(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """Red team: with its database unreachable, a replica kept its revocation-stream subscribers
    live with heartbeats while it could learn of no revocation, and their caches allowed a token
    revoked on another replica for as long as the outage lasted (40 s and counting). Now a
    replica that has not read its log lately sends no heartbeat and ends the stream (clients
    stop trusting their caches after their bound), and answers verdicts with 503."""
    import aiohttp

    config = make_config(
        database_url=pg_url,
        data_dir=data_dir,
        revocation_refresh_interval=timedelta(milliseconds=200),
        revocation_stream_heartbeat=timedelta(milliseconds=300),
    )
    client = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    admin = await login(client, "admin", ADMIN_PASSWORD)
    status, minted = await call(
        client,
        "POST",
        "/v1/tokens",
        admin,
        json={"subject": "svc", "operations": ["tokens:verdict"], "service": True},
    )
    assert status == 201, minted
    svc = minted["token"]
    assert (await call(client, "POST", "/v1/verdict", svc, json={"token": admin}))[0] == 200

    stream = await client.get("/v1/revocations/stream", headers=bearer(svc))
    assert stream.status == 200
    assert b"event: hello" in await stream.content.readuntil(b"\n\n")
    async with refusing_connections(pg_url.rsplit("/", 1)[1]):
        pings = 0
        try:
            async with asyncio.timeout(10):
                while chunk := await stream.content.readuntil(b"\n\n"):
                    pings += chunk.startswith(b": ping")
        except (aiohttp.ClientPayloadError, asyncio.IncompleteReadError):
            pass  # ended: what a subscriber must see
        verdict = await request(
            client, "POST", "/v1/verdict", headers=bearer(svc), json={"token": admin}
        )

    assert stream.content.at_eof()
    assert pings <= 4  # those sent before the replica noticed: a heartbeat and two polls
    assert_unavailable(*verdict)


@pytest.mark.parametrize("with_redis", [False, True])
async def test_verify_refuses_once_no_revocation_can_reach_it(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Path,
    clock: FakeClock,
    redis_url: str,
    redis_prefix: str,
    with_redis: bool,
) -> None:
    """Red team: a replica cut off from its database (and without Redis) verified a token as
    valid for as long as the outage lasted, though another replica had revoked it. Serving from
    memory is bounded: after TOKENSVC_REVOCATION_STALE_AFTER without revocation news, /v1/verify
    answers 503 + Retry-After (on the verify listener too), and answers again once news flows.
    A Redis subscription that is up does not count (red team again: pub/sub is lossy, and a
    frozen or restarted Redis kept such a replica allowing a revoked token)."""
    redis: dict[str, Any] = (
        {"redis_url": redis_url, "redis_prefix": redis_prefix} if with_redis else {}
    )
    config = make_config(
        database_url=pg_url,
        data_dir=data_dir,
        revocation_refresh_interval=timedelta(milliseconds=200),
        revocation_stale_after=timedelta(seconds=1),
        **redis,
    )
    client = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    admin = await login(client, "admin", ADMIN_PASSWORD)
    token = (await call(client, "POST", "/v1/tokens", admin, json={"subject": "svc"}))[1]["token"]
    assert (await verify(client, token))[0] == 200

    async with refusing_connections(pg_url.rsplit("/", 1)[1]):
        early = await verify(client, token)
        await asyncio.sleep(2.5)
        late = await request(client, "POST", "/v1/verify", json={"token": token})

    assert early[0] == 200  # within the bound: served from memory, as documented
    assert_unavailable(*late)
    for _ in range(50):
        if (await verify(client, token))[0] == 200:
            break
        await asyncio.sleep(0.1)
    assert (await verify(client, token))[0] == 200
