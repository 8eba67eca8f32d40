"""The lockout on a Sentinel-managed master: found through Sentinel, followed through a failover.

The master and its Sentinel are throwaway ones on loopback ports (tests/redis_servers.py). The
whole lockout matrix runs on them as well: the `[sentinel]` cases of test_lockout_stores.py and
test_lockout_redis.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.redis_servers import SentinelServers
from tokensvc.accounts.lockout import RedisLockoutStore, redis_client_from_url
from tokensvc.errors import LockedOut, Unavailable
from tokensvc.operations.redisconn import pubsub_client_from_url

# Timing-bound (failover, Redis waits and timeouts): run alone, not beside other tests.
pytestmark = pytest.mark.serial

T0 = 1_763_760_000.0
IP = "198.51.100.7"


@pytest.fixture
def redis_url(redis_sentinel: SentinelServers) -> str:
    return redis_sentinel.url


@pytest.fixture
def replicated() -> Iterator[SentinelServers]:
    """A master with one replica and a Sentinel of their own, for a test that fails one over."""
    servers = SentinelServers(service="tokensvc-failover", replicas=1)
    try:
        servers.start()
        yield servers
    finally:
        servers.remove()


async def test_counts_survive_a_failover_and_the_store_follows_the_new_master(
    replicated: SentinelServers,
) -> None:
    """After the master dies, Sentinel promotes the replica and the lockout carries on there."""
    client = redis_client_from_url(replicated.url)
    store = RedisLockoutStore(client, prefix="tokensvc-test-failover:")
    for _ in range(4):
        await store.begin_attempt(identity="alice", client_ip=IP, now=T0)
    with replicated.master.client() as master:
        assert master.execute_command("WAIT", 1, 5000) == 1  # the replica has every count

    replicated.master.kill()
    deadline = time.monotonic() + 30
    while True:
        try:
            await store.begin_attempt(identity="alice", client_ip=IP, now=T0)
            break
        except Unavailable:
            assert time.monotonic() < deadline, "the store never reached a new master"
            await asyncio.sleep(0.2)
    with pytest.raises(LockedOut):
        await store.begin_attempt(identity="alice", client_ip=IP, now=T0)
    status = await store.status("alice", T0)
    await client.aclose()

    assert replicated.master_port() == replicated.replicas[0].port
    assert status.counters[1].failures == 5


@pytest.fixture
def guarded() -> Iterator[SentinelServers]:
    """A Sentinel that requires a password of its own (the master requires none)."""
    servers = SentinelServers(service="tokensvc-guarded", sentinel_password="s3ntinel/p@ss")
    try:
        servers.start()
        yield servers
    finally:
        servers.remove()


async def test_a_sentinel_with_a_password_is_asked_with_the_sentinel_password(
    guarded: SentinelServers, redis_prefix: str
) -> None:
    """`sentinel_password` (percent-encoded in the URL) reaches the Sentinel and only the
    Sentinel; without it the Sentinel refuses, and attempts fail closed."""
    with_password = f"{guarded.url}?sentinel_password=s3ntinel%2Fp%40ss&health_check_interval=5"
    client = redis_client_from_url(with_password)
    store = RedisLockoutStore(client, prefix=redis_prefix)
    for _ in range(2):
        await store.begin_attempt(identity="alice", client_ip=IP, now=T0)
    status = await store.status("alice", T0)
    await client.aclose()
    assert status.failures == 2

    # The master took no password: had it been sent one, it would have refused the commands.
    with guarded.master.client() as master:
        assert master.config_get("requirepass") == {"requirepass": ""}

    unguarded = redis_client_from_url(guarded.url)
    store = RedisLockoutStore(unguarded, prefix=redis_prefix)
    with pytest.raises(Unavailable):
        await store.begin_attempt(identity="alice", client_ip=IP, now=T0)
    await unguarded.aclose()


async def test_an_unknown_service_fails_closed(
    redis_sentinel: SentinelServers, redis_prefix: str
) -> None:
    """A service name no Sentinel knows refuses attempts with Unavailable, as an outage does."""
    client = redis_client_from_url(
        f"redis+sentinel://127.0.0.1:{redis_sentinel.sentinel_port}/nope"
    )
    store = RedisLockoutStore(client, prefix=redis_prefix)

    with pytest.raises(Unavailable):
        await store.begin_attempt(identity="alice", client_ip=IP, now=T0)
    await client.aclose()


async def test_notifications_pass_through_the_master(
    redis_sentinel: SentinelServers, redis_prefix: str
) -> None:
    """Revocation pub/sub works on the Sentinel-managed master."""
    client = pubsub_client_from_url(redis_sentinel.url, socket_timeout=None)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(redis_prefix + "revocations")

    await client.publish(redis_prefix + "revocations", "k key-1")
    message = None
    for _ in range(50):  # None also stands for the subscribe confirmation, skipped
        message = message or await pubsub.get_message(timeout=0.1)
    await pubsub.aclose()
    await client.aclose()

    assert message is not None
    assert message["data"] == b"k key-1"
