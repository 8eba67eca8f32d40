"""What only the Redis lockout store must do: fail closed, keep no usernames, expire every key.

Each test runs on one server, on a three-master Redis Cluster and on a Sentinel's master.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import REDIS_KINDS
from tokensvc.accounts.lockout import LockoutPolicy, RedisLockoutStore, redis_client_from_url
from tokensvc.errors import Unavailable
from tokensvc.operations.redisconn import RedisClient

T0 = 1_763_760_000.0


@pytest.fixture
def redis_url(any_redis_url: str) -> str:
    return any_redis_url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[RedisClient]:
    client = redis_client_from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis_client: RedisClient, redis_prefix: str) -> RedisLockoutStore:
    return RedisLockoutStore(redis_client, policy=LockoutPolicy(), prefix=redis_prefix)


async def _keys(client: RedisClient, prefix: str) -> list[str]:
    return [key.decode() async for key in client.scan_iter(match=prefix + "*", count=500)]


@pytest.mark.serial  # wall-clock bound: run alone
@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1", "redis+sentinel://127.0.0.1:1/x"],
    ids=REDIS_KINDS,
)
async def test_unreachable_redis_fails_closed_quickly(url: str) -> None:
    """With Redis unreachable every call raises Unavailable, with a Retry-After, within 2 s."""
    client = redis_client_from_url(url)
    store = RedisLockoutStore(client, prefix="tokensvc-test-unreachable:")
    started = time.monotonic()

    with pytest.raises(Unavailable) as begin:
        await store.begin_attempt(identity="alice", client_ip="192.0.2.1", now=T0)
    with pytest.raises(Unavailable):
        await store.record_success(identity="alice", client_ip="192.0.2.1", now=T0)
    with pytest.raises(Unavailable):
        await store.status("alice", T0)
    with pytest.raises(Unavailable):
        await store.clear("alice")
    elapsed = time.monotonic() - started
    await client.aclose()

    assert begin.value.retry_after == 5
    assert elapsed < 2.0


async def test_keys_hold_no_usernames_and_all_expire(
    store: RedisLockoutStore, redis_client: RedisClient, redis_prefix: str
) -> None:
    """Every key is hashed (no identity, no IP in clear), hash-tagged by identity, and has a TTL."""
    await store.begin_attempt(identity="alice.smith", client_ip="192.0.2.1", now=time.time())
    await store.record_success(identity="alice.smith", client_ip="192.0.2.1", now=time.time())
    await store.begin_attempt(identity="alice.smith", client_ip="198.51.100.7", now=time.time())

    keys = await _keys(redis_client, redis_prefix)
    ttls = [await redis_client.pttl(key) for key in keys]

    assert len(keys) == 5  # ip counter, pair counter, identity counter, trusted set, pair index
    assert not [key for key in keys if "alice" in key or "192.0.2" in key or "198.51" in key]
    assert all(ttl > 0 for ttl in ttls)
    identity_keys = [key for key in keys if not key.startswith(redis_prefix + "ip:")]
    assert len({key.split("{")[1].split("}")[0] for key in identity_keys}) == 1


async def test_counter_ttl_covers_the_lock_and_the_window(
    store: RedisLockoutStore, redis_client: RedisClient, redis_prefix: str
) -> None:
    """A counter's real TTL is the window plus its current wait, so it outlives its lock."""
    now = time.time()
    for n in range(10):
        await store.begin_attempt(identity="alice", client_ip=f"198.51.100.{n}", now=now)

    counter = next(k for k in await _keys(redis_client, redis_prefix) if k.endswith("}:n"))
    ttl = await redis_client.pttl(counter)

    assert 900_000 < ttl <= 901_000


async def test_scripts_are_reloaded_after_a_script_flush(
    store: RedisLockoutStore, redis_client: RedisClient
) -> None:
    """EVALSHA falls back to loading the script when Redis has forgotten it."""
    await store.begin_attempt(identity="alice", client_ip="192.0.2.1", now=T0)
    await redis_client.script_flush()

    await store.begin_attempt(identity="alice", client_ip="192.0.2.1", now=T0)

    assert (await store.status("alice", T0)).failures == 2


async def test_prefix_with_braces_is_rejected(redis_client: RedisClient) -> None:
    """A prefix holding braces would move the hash tag, so it is refused."""
    with pytest.raises(ValueError, match="braces"):
        RedisLockoutStore(redis_client, prefix="tokensvc:{x}:")


async def test_client_with_decoded_responses_works(redis_url: str, redis_prefix: str) -> None:
    """The store works whether the client decodes responses to str or not."""
    client = redis_client_from_url(redis_url, decode_responses=True)
    store = RedisLockoutStore(client, prefix=redis_prefix)
    await store.begin_attempt(identity="alice", client_ip="192.0.2.1", now=T0)

    status = await store.status("alice", T0)
    await client.aclose()

    assert status.failures == 1
