"""TOKENSVC_REDIS_URL forms: one server, Redis Cluster, Sentinel; parsed without connecting."""

from __future__ import annotations

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokensvc.operations.config import ConfigError
from tokensvc.operations.redisconn import (
    close_client,
    pubsub_client_from_url,
    redis_client_from_url,
)


async def test_a_single_server_url_gets_a_blocking_pool_that_fails_fast() -> None:
    """redis:// gives a client whose pool waits a second for a connection, with short timeouts."""
    client = redis_client_from_url("redis://127.0.0.1:6379/2")

    pool = client.connection_pool if isinstance(client, Redis) else None
    await client.aclose()

    assert isinstance(pool, BlockingConnectionPool)
    assert (pool.timeout, pool.max_connections) == (1.0, 64)
    assert pool.connection_kwargs["socket_timeout"] == 1.0
    assert pool.connection_kwargs["db"] == 2


async def test_a_cluster_url_lists_every_node_with_its_credentials_and_options() -> None:
    """redis+cluster:// names several seed nodes (IPv6 in brackets); query options still apply."""
    client = redis_client_from_url(
        "redis+cluster://app:s3cret@10.0.0.1:7000,[2001:db8::1]:7001,10.0.0.3?socket_timeout=2"
    )

    assert isinstance(client, RedisCluster)
    nodes = sorted(client.nodes_manager.startup_nodes)
    options = client.connection_kwargs
    await client.aclose()

    assert nodes == ["10.0.0.1:7000", "10.0.0.3:6379", "2001:db8::1:7001"]
    assert (options["username"], options["password"]) == ("app", "s3cret")
    assert options["socket_timeout"] == 2.0


async def test_rediss_cluster_turns_tls_on() -> None:
    """rediss+cluster:// connects to every node over TLS."""
    client = redis_client_from_url("rediss+cluster://10.0.0.1:7000")

    assert isinstance(client, RedisCluster)
    connection_class = client.connection_kwargs["connection_class"]
    await client.aclose()

    assert issubclass(connection_class, SSLConnection)


async def test_a_sentinel_url_names_the_service_and_database() -> None:
    """redis+sentinel:// asks the listed Sentinels (26379 by default) for the service's master."""
    client = redis_client_from_url("redis+sentinel://:s3cret@10.0.0.1,10.0.0.2:5000/mymaster/3")

    pool = client.connection_pool if isinstance(client, Redis) else None
    assert isinstance(pool, SentinelConnectionPool)
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    await client.aclose()

    assert isinstance(pool, BlockingConnectionPool)
    assert pool.service_name == "mymaster"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (3, "s3cret")
    assert [(s["host"], s["port"]) for s in sentinels] == [("10.0.0.1", 26379), ("10.0.0.2", 5000)]
    assert all(s.get("password") is None for s in sentinels)  # the master's, not the Sentinels'


async def test_pubsub_on_a_cluster_goes_to_the_first_node() -> None:
    """Pub/sub needs no cluster client: one node hears every PUBLISH in a cluster."""
    client = pubsub_client_from_url(
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001", socket_timeout=None
    )

    options = client.connection_pool.connection_kwargs
    await client.aclose()

    assert (options["host"], options["port"]) == ("10.0.0.1", 7000)
    assert options["socket_timeout"] is None


async def test_pubsub_through_sentinel_waits_on_the_master_but_not_on_a_sentinel() -> None:
    """A pub/sub client may idle on the master without a timeout; Sentinels still answer in 1 s."""
    client = pubsub_client_from_url("redis+sentinel://10.0.0.1/mymaster", socket_timeout=None)

    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    await client.aclose()

    assert pool.connection_kwargs["socket_timeout"] is None
    assert sentinel["socket_timeout"] == 1.0


@pytest.mark.parametrize(
    "url",
    [
        "redis+shard://10.0.0.1",
        "redis+sentinel://10.0.0.1",
        "redis+sentinel://10.0.0.1/a/1/2",
        "redis+cluster://10.0.0.1:7000/3",
        "redis+cluster://10.0.0.1:http",
        "redis+cluster://10.0.0.1:7000,,10.0.0.2:7000",
    ],
)
def test_malformed_urls_are_refused_without_echoing_secrets(url: str) -> None:
    """An unknown scheme, a missing service, a database in a cluster or a bad node is refused."""
    with pytest.raises(ConfigError) as refused:
        redis_client_from_url(url.replace("://", "://:hunter2@"))

    assert "hunter2" not in str(refused.value)


async def test_a_failure_to_close_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """Shutdown must not fail because a socket was slow to close (redis-py raises TimeoutError)."""

    class SlowToClose(Redis):
        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            raise RedisTimeoutError("Timed out closing connection after 0.5")

    await close_client(SlowToClose())

    assert "closing Redis connections: TimeoutError" in caplog.text
