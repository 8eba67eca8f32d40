"""Three app instances (separate engines and connections) on one PostgreSQL, rotating together.

Each instance is the real app factory behind its own test server; they share the database, the
key-encryption key and one fake clock, set just past an interval boundary so that every instance
races for the same new key at the same simulated moment.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from keystore import RotationPolicy
from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tokensvc.web import appkeys
from tokensvc.web.app import create_app

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_aiohttp import AiohttpClient

INTERVAL = timedelta(hours=1)
LIFETIME = timedelta(hours=24)


def just_past_a_boundary() -> datetime:
    """One second into the next full hour from now."""
    now = datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) + INTERVAL + timedelta(seconds=1)


async def replicas(aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock) -> list[Any]:
    config = make_config(database_url=pg_url, data_dir=data_dir)
    return [await aiohttp_client(create_app(config, clock=clock)) for _ in range(3)]


async def login(client: Any) -> str:
    resp = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


async def mint(client: Any, admin_token: str) -> dict[str, Any]:
    resp = await client.post(
        "/v1/tokens",
        json={"subject": "alice", "ttl": 600},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def verify(client: Any, token: str) -> int:
    return int((await client.post("/v1/verify", json={"token": token})).status)


async def slot_counts(pg_url: str) -> dict[int | None, int]:
    """Rows per slot in root_keys, read with plain SQL over a separate engine."""
    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT slot, count(*) FROM root_keys GROUP BY slot"))
            return dict(rows.all())
    finally:
        await engine.dispose()


async def test_replicas_racing_at_each_boundary_make_exactly_one_key_per_interval(
    aiohttp_client: AiohttpClient, pg_url: str, data_dir: Path
) -> None:
    """Over 48 simulated hours, three replicas racing at every boundary leave exactly one key per interval."""
    clock = FakeClock(just_past_a_boundary())
    policy = RotationPolicy(lifetime=LIFETIME, generate_interval=INTERVAL)
    first_slot = policy.slot(clock.now)
    clients = await replicas(aiohttp_client, pg_url, data_dir, clock)
    keyrings = [c.app[appkeys.KEYRING] for c in clients]
    agreed: dict[int, set[str]] = {}

    for _ in range(48):
        clock.advance(hours=1)
        keys = await asyncio.gather(
            *(ring.current() for ring in keyrings for _ in range(3)),
            *(ring.maintain() for ring in keyrings),
        )
        agreed[policy.slot(clock.now)] = {k.id for k in keys if k is not None}

    counts = await slot_counts(pg_url)
    last_slot = first_slot + 48
    assert all(len(ids) == 1 for ids in agreed.values()), agreed
    assert len(set().union(*agreed.values())) == 48
    # Keys live 24 h: the last 24 intervals' keys remain, one each; older ones were purged.
    assert counts == dict.fromkeys(range(last_slot - 23, last_slot + 1), 1)


async def test_replicas_minting_concurrently_share_one_key_and_verify_each_others_tokens(
    aiohttp_client: AiohttpClient, pg_url: str, data_dir: Path
) -> None:
    """Logging in and minting on three replicas at once, interval after interval, uses one key per interval, and every replica verifies every token."""
    clock = FakeClock(just_past_a_boundary())
    policy = RotationPolicy(lifetime=LIFETIME, generate_interval=INTERVAL)
    clients = await replicas(aiohttp_client, pg_url, data_dir, clock)
    key_ids_per_interval: dict[int, set[str]] = {}
    cross_verify: dict[tuple[int, int, int], int] = {}

    for _ in range(4):
        clock.advance(hours=1)
        admin_tokens = await asyncio.gather(*(login(c) for c in clients))
        minted = await asyncio.gather(
            *(mint(c, t) for c, t in zip(clients, admin_tokens, strict=True) for _ in range(2))
        )
        key_ids_per_interval[policy.slot(clock.now)] = {m["key_id"] for m in minted}
        for i, m in enumerate(minted):
            for j, other in enumerate(clients):
                cross_verify[(policy.slot(clock.now), i, j)] = await verify(other, m["token"])

    counts = await slot_counts(pg_url)
    assert all(len(ids) == 1 for ids in key_ids_per_interval.values()), key_ids_per_interval
    assert cross_verify == dict.fromkeys(cross_verify, 200)
    assert all(n == 1 for n in counts.values()), counts
    assert set(key_ids_per_interval) <= set(counts)


async def test_token_on_a_key_rotated_by_one_replica_verifies_on_the_others(
    aiohttp_client: AiohttpClient, pg_url: str, data_dir: Path
) -> None:
    """After a manual rotation on one replica, its new tokens verify on the replicas that never cached the key."""
    clock = FakeClock(just_past_a_boundary())
    clients = await replicas(aiohttp_client, pg_url, data_dir, clock)
    admin_token = await login(clients[0])
    clock.advance(minutes=5)

    rotated = await clients[0].post(
        "/v1/keys/rotate", headers={"Authorization": f"Bearer {admin_token}"}
    )
    minted = await mint(clients[0], admin_token)

    assert rotated.status == 201
    assert minted["key_id"] == (await rotated.json())["id"]
    assert [await verify(c, minted["token"]) for c in clients] == [200, 200, 200]
    assert (await slot_counts(pg_url)).get(None) == 1
