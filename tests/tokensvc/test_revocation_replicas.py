"""Three tokensvc app instances on one PostgreSQL (and one Redis): revocation reaches all of them.

Each instance is the real app factory with its own engine, connections and background tasks, as
three processes would have. The time from the revoking call's answer until all three deny is
measured and printed; the documented bounds are asserted: with Redis pub/sub, well under the
poll interval; with polling alone, the poll interval (1 s) plus a query.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD, basic_auth, make_config
from tokensvc.operations.redisconn import pubsub_client_from_url
from tokensvc.tokens.revocation import CHANNEL_SUFFIX
from tokensvc.web.app import create_app

POLL_BOUND = 1.0 + 0.5  # refresh interval + one query and scheduling slack


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def start(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: Any, redis: str | None, prefix: str
) -> list[Any]:
    config = make_config(database_url=pg_url, data_dir=data_dir)
    config = config.model_copy(update={"redis_url": redis, "redis_prefix": prefix})
    clients = [await aiohttp_client(create_app(config, clock=clock)) for _ in range(3)]
    if redis is not None:
        # Wait until all three subscribers are listening, as long-running replicas would be.
        await until_subscribed(redis, prefix + CHANNEL_SUFFIX, subscribers=3)
    return clients


async def until_subscribed(redis_url: str, channel: str, *, subscribers: int) -> None:
    """Wait (up to 2 s) until `channel` has that many subscribers where tokensvc subscribes."""
    r = pubsub_client_from_url(redis_url)
    try:
        for _ in range(200):
            ((_, count),) = await r.pubsub_numsub(channel)
            if count >= subscribers:
                break
            await asyncio.sleep(0.01)
    finally:
        await r.aclose()


async def admin_token(client: Any) -> str:
    resp = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    assert resp.status == 200
    return str((await resp.json())["token"])


async def mint(client: Any, token: str, subject: str = "alice") -> dict[str, Any]:
    resp = await client.post(
        "/v1/tokens", json={"subject": subject, "ttl": 600}, headers=bearer(token)
    )
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def status(client: Any, token: str) -> int:
    resp = await client.post("/v1/verify", json={"token": token})
    resp.release()
    return int(resp.status)


async def until_all_deny(clients: list[Any], token: str, limit: float) -> float:
    """Seconds until every instance answers 401 for `token` (polled every 5 ms)."""
    started = time.monotonic()
    pending = set(range(len(clients)))
    while pending and time.monotonic() - started < limit:
        for i in list(pending):
            if await status(clients[i], token) == 401:
                pending.discard(i)
        await asyncio.sleep(0.005)
    assert not pending, f"instances {sorted(pending)} still accept the token after {limit}s"
    return time.monotonic() - started


@pytest.mark.serial  # wall-clock bound: run alone
@pytest.mark.parametrize("with_redis", [True, False], ids=["pubsub", "polling"])
async def test_a_revoked_token_is_denied_by_all_three_within_the_bound(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Any,
    clock: Any,
    redis_url: str,
    redis_prefix: str,
    with_redis: bool,
) -> None:
    """Revoked through instance 0 (by presenting it): all three deny it within the bound."""
    clients = await start(
        aiohttp_client, pg_url, data_dir, clock, redis_url if with_redis else None, redis_prefix
    )
    admin = await admin_token(clients[0])
    minted = await mint(clients[1], admin)
    assert [await status(c, minted["token"]) for c in clients] == [200, 200, 200]  # all cached

    resp = await clients[0].post("/v1/tokens/revoke", json={"token": minted["token"]})
    took = await until_all_deny(clients, minted["token"], limit=5.0)

    print(
        f"\nrevocation reached all 3 instances in {took * 1000:.1f} ms"
        f" ({'redis pub/sub' if with_redis else 'polling every 1 s'})"
    )
    assert resp.status == 204
    assert took < (0.5 if with_redis else POLL_BOUND)


@pytest.mark.serial  # wall-clock bound: run alone
@pytest.mark.parametrize("with_redis", [True, False], ids=["pubsub", "polling"])
async def test_revoke_all_reaches_all_three_and_spares_later_tokens(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Any,
    clock: Any,
    redis_url: str,
    redis_prefix: str,
    with_redis: bool,
) -> None:
    """revoke-all through instance 2: alice's older tokens die everywhere; a newer one works everywhere."""
    clients = await start(
        aiohttp_client, pg_url, data_dir, clock, redis_url if with_redis else None, redis_prefix
    )
    admin = await admin_token(clients[0])
    old = [await mint(c, admin) for c in clients]
    bobs = await mint(clients[0], admin, subject="bob")
    for token in old:
        assert [await status(c, token["token"]) for c in clients] == [200, 200, 200]

    resp = await clients[2].post("/v1/subjects/alice/revoke-all", headers=bearer(admin))
    took = max([await until_all_deny(clients, t["token"], limit=5.0) for t in old])
    later = await mint(clients[1], admin)

    # Without Redis, revoke-all rides the subject-generation poll (2 s, tokensvc.tokens.generations).
    print(
        f"\nrevoke-all reached all 3 instances in {took * 1000:.1f} ms"
        f" ({'redis pub/sub' if with_redis else 'generation polling every 2 s'})"
    )
    assert resp.status == 200
    assert took < (0.5 if with_redis else 2.5)
    assert [await status(c, later["token"]) for c in clients] == [200, 200, 200]
    assert [await status(c, bobs["token"]) for c in clients] == [200, 200, 200]


async def test_a_revoked_root_key_is_dropped_by_all_three(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Any,
    clock: Any,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """A root key revoked through instance 1 stops verifying on all three, and none mints on it."""
    clients = await start(aiohttp_client, pg_url, data_dir, clock, redis_url, redis_prefix)
    admin = await admin_token(clients[0])
    minted = await mint(clients[0], admin)
    assert [await status(c, minted["token"]) for c in clients] == [200, 200, 200]

    resp = await clients[1].post(f"/v1/keys/{minted['key_id']}/revoke", headers=bearer(admin))
    took = await until_all_deny(clients, minted["token"], limit=5.0)
    fresh_admins = [await admin_token(c) for c in clients]
    fresh = [await mint(c, t) for c, t in zip(clients, fresh_admins, strict=True)]

    print(f"\nroot-key revocation reached all 3 instances in {took * 1000:.1f} ms")
    assert resp.status == 204
    assert all(f["key_id"] != minted["key_id"] for f in fresh)
