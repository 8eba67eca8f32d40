"""The lockout on a three-master Redis Cluster: scripts on one slot each, counts exact across masters.

The cluster is a throwaway one on loopback ports (tests/redis_servers.py), started once per run.
The whole lockout matrix runs on it as well: the `[cluster]` cases of test_lockout_stores.py and
test_lockout_redis.py. Here is what only a cluster can show: an identity and its client IP counted
on different masters, and the app itself configured with a `redis+cluster://` URL.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tests.conftest import ADMIN_PASSWORD, FakeClock, make_config
from tests.redis_servers import ClusterServers
from tests.tokensvc.test_api_lockout import assert_locked, attempt
from tests.tokensvc.test_revocation_replicas import (
    admin_token,
    mint,
    until_all_deny,
    until_subscribed,
)
from tokensvc.accounts.lockout import (
    AttemptStanding,
    LockoutPolicy,
    RedisLockoutStore,
    redis_client_from_url,
)
from tokensvc.accounts.lockout.store import hash_identity, hash_ip
from tokensvc.errors import LockedOut
from tokensvc.operations.redisconn import pubsub_client_from_url
from tokensvc.tokens.revocation import CHANNEL_SUFFIX
from tokensvc.web.app import create_app

# Timing-bound (Redis waits and timeouts under a burst): run alone, not beside other tests.
pytestmark = pytest.mark.serial

T0 = 1_763_760_000.0
IP = "198.51.100.7"
GENEROUS = LockoutPolicy(identity_threshold=1000, identity_ip_threshold=1000, ip_threshold=1000)


@pytest.fixture
def redis_url(redis_cluster: ClusterServers) -> str:
    return redis_cluster.url


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[RedisCluster]:
    client = redis_client_from_url(redis_url, max_connections=256)
    assert isinstance(client, RedisCluster)
    await client.initialize()
    yield client
    await client.aclose()


def ip_key(prefix: str, ip: str) -> str:
    return f"{prefix}ip:{hash_ip(ip)}"


def identity_key(prefix: str, identity: str) -> str:
    return f"{prefix}{{{hash_identity(identity)}}}:n"


def identity_elsewhere(cluster: RedisCluster, prefix: str, ip: str) -> str:
    """An identity whose keys live on another master than `ip`'s counter."""
    ip_master = cluster.get_node_from_key(ip_key(prefix, ip))
    for n in itertools.count():
        identity = f"user{n}"
        if cluster.get_node_from_key(identity_key(prefix, identity)) != ip_master:
            return identity
    raise AssertionError("unreachable")


async def counted(cluster: RedisCluster, key: str) -> int:
    """The failures a counter holds (0 for no counter)."""
    return int(await cluster.hget(key, "n") or 0)


async def test_an_identity_and_its_ip_on_different_masters_lock_as_on_one_server(
    cluster: RedisCluster, redis_prefix: str
) -> None:
    """With the identity's and the IP's keys on two masters, five failures lock the pair."""
    identity = identity_elsewhere(cluster, redis_prefix, IP)
    store = RedisLockoutStore(cluster, prefix=redis_prefix)

    for _ in range(5):
        await store.begin_attempt(identity=identity, client_ip=IP, now=T0)
    with pytest.raises(LockedOut) as locked:
        await store.begin_attempt(identity=identity, client_ip=IP, now=T0 + 0.5)
    status = await store.status(identity, T0 + 0.5)

    assert cluster.keyslot(ip_key(redis_prefix, IP)) != cluster.keyslot(
        identity_key(redis_prefix, identity)
    )
    assert locked.value.retry_after == 1
    assert [c.failures for c in status.counters] == [5, 5]
    assert await counted(cluster, ip_key(redis_prefix, IP)) == 5


async def test_concurrent_failures_count_exactly_on_both_masters(
    cluster: RedisCluster, redis_prefix: str
) -> None:
    """100 concurrent failures from one IP are 100 on the identity's master and on the IP's."""
    identity = identity_elsewhere(cluster, redis_prefix, IP)
    store = RedisLockoutStore(cluster, policy=GENEROUS, prefix=redis_prefix)

    await asyncio.gather(
        *(store.begin_attempt(identity=identity, client_ip=IP, now=T0) for _ in range(100))
    )
    status = await store.status(identity, T0)

    assert [c.failures for c in status.counters] == [100, 100]
    assert await counted(cluster, ip_key(redis_prefix, IP)) == 100


async def test_attempts_the_identity_refuses_are_taken_back_off_the_ip(
    cluster: RedisCluster, redis_prefix: str
) -> None:
    """50 concurrent attempts on a locked identity leave its IP's counter as they found it."""
    identity = identity_elsewhere(cluster, redis_prefix, IP)
    store = RedisLockoutStore(cluster, prefix=redis_prefix)
    for n in range(10):
        await store.begin_attempt(identity=identity, client_ip=f"203.0.113.{n}", now=T0)
    for n in range(3):
        await store.begin_attempt(identity=f"other{n}", client_ip=IP, now=T0)

    outcomes = await asyncio.gather(
        *(store.begin_attempt(identity=identity, client_ip=IP, now=T0) for _ in range(50)),
        return_exceptions=True,
    )

    assert all(isinstance(outcome, LockedOut) for outcome in outcomes)
    assert await counted(cluster, ip_key(redis_prefix, IP)) == 3


async def test_a_burst_waits_for_a_connection_instead_of_failing(
    redis_url: str, redis_prefix: str
) -> None:
    """200 concurrent attempts through four connections all get an answer, none a 503."""
    client = redis_client_from_url(redis_url, max_connections=4)
    store = RedisLockoutStore(client, policy=GENEROUS, prefix=redis_prefix)

    outcomes = await asyncio.gather(
        *(store.begin_attempt(identity="alice", client_ip=IP, now=T0) for _ in range(200)),
        return_exceptions=True,
    )
    status = await store.status("alice", T0)
    await client.aclose()

    assert [o for o in outcomes if not isinstance(o, AttemptStanding)] == []  # no exception
    assert status.failures == 200


async def test_publish_on_one_master_reaches_a_subscriber_on_another(
    redis_cluster: ClusterServers, redis_prefix: str
) -> None:
    """A revocation published through the first node is heard on every node of the cluster."""
    publisher = pubsub_client_from_url(redis_cluster.url)
    elsewhere = Redis.from_url(redis_cluster.nodes[-1].url)
    pubsub = elsewhere.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(redis_prefix + CHANNEL_SUFFIX)

    await publisher.publish(redis_prefix + CHANNEL_SUFFIX, "k key-1")
    message = None
    for _ in range(50):  # None also stands for the subscribe confirmation, skipped
        message = message or await pubsub.get_message(timeout=0.1)
    await pubsub.aclose()
    await elsewhere.aclose()
    await publisher.aclose()

    assert message is not None
    assert message["data"] == b"k key-1"


async def test_the_app_locks_a_login_out_on_a_cluster(
    aiohttp_client: Any, sqlite_url: str, data_dir: Path, redis_url: str, redis_prefix: str
) -> None:
    """Configured with a redis+cluster:// URL, the app is ready, answers 401s, then a 429."""
    config = make_config(
        database_url=sqlite_url,
        data_dir=data_dir,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        trusted_proxies=("127.0.0.1/32",),
    )
    client = await aiohttp_client(create_app(config, clock=FakeClock()))

    ready = await client.get("/readyz")
    failures = [await attempt(client, "admin", "wrong", IP) for _ in range(5)]
    locked = await attempt(client, "admin", ADMIN_PASSWORD, IP)
    elsewhere = await attempt(client, "admin", ADMIN_PASSWORD, "203.0.113.9")

    assert ready.status == 200, await ready.text()
    assert [f.status for f in failures] == [401] * 5
    assert_locked(locked, retry_after=1)
    assert elsewhere.status == 200, elsewhere


async def test_a_revocation_reaches_another_replica_over_cluster_pubsub(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Path,
    redis_cluster: ClusterServers,
    redis_prefix: str,
) -> None:
    """With polling slowed to a minute, a revoked token is refused by a second replica at once."""
    config = make_config(database_url=pg_url, data_dir=data_dir)
    config = config.model_copy(
        update={
            "redis_url": redis_cluster.url,
            "redis_prefix": redis_prefix,
            "revocation_refresh_interval": timedelta(minutes=1),
        }
    )
    clock = FakeClock()
    replicas = [await aiohttp_client(create_app(config, clock=clock)) for _ in range(2)]
    await until_subscribed(redis_cluster.url, redis_prefix + CHANNEL_SUFFIX, subscribers=2)
    token = await admin_token(replicas[0])
    minted = await mint(replicas[0], token)

    resp = await replicas[0].delete(
        f"/v1/tokens/{minted['token_id']}", headers={"Authorization": f"Bearer {token}"}
    )
    took = await until_all_deny(replicas, minted["token"], limit=5.0)

    assert resp.status in (200, 204), await resp.text()
    assert took < 1.0
