"""Redis clients from `TOKENSVC_REDIS_URL`: one server, a Redis Cluster, or a Sentinel-managed master.

URL forms (`rediss` in place of `redis` turns TLS on; query options are redis-py's, as for
`redis://`, and apply to every connection):

- `redis://[[user]:password@]host[:port][/db]`, `rediss://…`, `unix://…`: one server;
- `redis+cluster://[[user]:password@]host:port[,host:port…][/]`: a Redis Cluster, discovered
  from any of the listed nodes;
- `redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db]`: the master that the
  listed Sentinels name for `service`, followed across failovers. The credentials are the
  master's; Sentinels that require their own (`requirepass` in sentinel.conf) take them from
  the query options `sentinel_password` and `sentinel_username`, which go to no other server.

Every client fails fast (sub-second timeouts, one retry) and waits up to a second for a free
connection rather than failing at once when all are busy, whatever the kind.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokensvc.operations.config import ConfigError

__all__ = [
    "RedisClient",
    "check_url",
    "close_client",
    "pubsub_client_from_url",
    "redis_client_from_url",
]

log = logging.getLogger("tokensvc.redis")

#: What `redis_client_from_url` returns: both run commands and Lua scripts the same way.
RedisClient: TypeAlias = Redis | RedisCluster

_CLUSTER = "+cluster"
_SENTINEL = "+sentinel"
_DEFAULT_PORTS = {_CLUSTER: 6379, _SENTINEL: 26379}


def redis_client_from_url(url: str, **overrides: Any) -> RedisClient:
    """A client that fails fast: sub-second timeouts and one retry, so login fails closed quickly.

    redis-py's defaults (5 s timeouts, 10 retries with backoff) would hold a login for most of a
    minute before answering 503. The pool blocks (up to a second) when all its connections are
    busy: redis-py's default pool raises at once past 100 connections, which turned a burst of
    logins into 503s although Redis was fine. `overrides` are redis-py connection options.
    """
    options = _options(overrides)
    target = _MultiHostURL.parse(url)
    if target is None:
        return _single_server(url, options)
    if target.kind == _CLUSTER:
        return _cluster_client(target, options)
    return _sentinel_master(target, options)


def check_url(url: str) -> None:
    """Raise ConfigError unless `url` is a Redis URL the clients above can be built from.

    Parses only, connects nowhere: the configuration checks TOKENSVC_REDIS_URL with it at start.
    The messages never quote the URL (it may hold a password).
    """
    target = _MultiHostURL.parse(url)
    if target is None:
        try:
            parse_url(url)
        except ValueError:
            raise ConfigError("a redis://, rediss:// or unix:// URL with a valid port") from None
        return
    if target.kind == _CLUSTER and target.path not in ("", "0"):
        raise ConfigError("a Redis Cluster has only database 0")
    service, _, db = target.path.partition("/")
    if target.kind == _SENTINEL and (not service or "/" in db):
        raise ConfigError("a Sentinel URL needs a service name: redis+sentinel://host:port/name")


def pubsub_client_from_url(url: str, **overrides: Any) -> Redis:
    """A client for PUBLISH and SUBSCRIBE, with the same options as `redis_client_from_url`.

    Redis Cluster carries a PUBLISH to every node over its bus, so one node serves the whole
    cluster for the plain channels tokensvc uses (and redis-py's async cluster client has no
    pub/sub before 8.0): this is a client of the first node listed. While that node is down,
    notifications stop and replicas learn revocations by polling instead.
    """
    options = _options(overrides)
    target = _MultiHostURL.parse(url)
    if target is None:
        return _single_server(url, options)
    if target.kind == _SENTINEL:
        return _sentinel_master(target, options)
    host, port = target.hosts[0]
    log.info(
        "Redis Cluster: notifications go through node %s:%s; while it is down, replicas "
        "learn revocations by polling",
        host,
        port,
    )
    return _single_server(target.single_node_url(host, port), options)


def _options(overrides: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": 0.5,
        "socket_timeout": 1.0,
        # One retry when the connection failed (a pooled connection Redis closed while idle),
        # never after a timeout: the command may then have reached Redis, which runs it when it
        # catches up, and the counting scripts and the spent-code SET must not run twice (red
        # team, helper-58: a 1-2 s stall spent a fresh code and counted it as a wrong one).
        # A timeout is reported (a 503): what Redis then runs late, it runs once.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "health_check_interval": 30,
        "max_connections": 64,
        "timeout": 1.0,  # the longest wait for a free connection
    }
    options.update(overrides)
    return options


def _single_server(url: str, options: dict[str, Any]) -> Redis:
    pool = BlockingConnectionPool.from_url(url, **options)
    # from_pool: the client owns the pool, so aclose() closes its connections too.
    return Redis.from_pool(pool)


@dataclass(frozen=True, slots=True)
class _MultiHostURL:
    """A `redis+cluster://` or `redis+sentinel://` URL, taken apart."""

    kind: str  # _CLUSTER or _SENTINEL
    scheme: str  # redis or rediss
    userinfo: str  # "user:password@" or ""
    hosts: tuple[tuple[str, int], ...]
    path: str  # without the leading slash
    query: str

    @classmethod
    def parse(cls, url: str) -> _MultiHostURL | None:
        """The URL's parts, or None for the single-server forms redis-py reads itself."""
        scheme, sep, rest = url.partition("://")
        base, plus, kind = scheme.lower().partition("+")
        if not sep or not plus:
            return None
        if base not in ("redis", "rediss") or "+" + kind not in _DEFAULT_PORTS:
            raise ConfigError(f"unsupported Redis URL scheme {scheme!r}")
        parts = urlsplit("redis://" + rest)
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        return cls(
            kind="+" + kind,
            scheme=base,
            userinfo=userinfo + "@" if userinfo else "",
            hosts=tuple(_host_port(h, _DEFAULT_PORTS["+" + kind]) for h in hostlist.split(",")),
            path=parts.path.strip("/"),
            query=parts.query,
        )

    def single_node_url(self, host: str, port: int, db: str = "0") -> str:
        """A `redis://` URL of one of the hosts, with these credentials and query options."""
        name = f"[{host}]" if ":" in host else host
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.userinfo}{name}:{port}/{db}{query}"

    def connection_options(self, db: str = "0") -> dict[str, Any]:
        """Credentials, TLS and query options, parsed the way redis-py parses a single URL."""
        options: dict[str, Any] = dict(parse_url(self.single_node_url(*self.hosts[0], db=db)))
        for key in ("host", "port"):
            options.pop(key, None)
        if options.pop("connection_class", None) is SSLConnection:
            options["ssl"] = True
        return options


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ConfigError("a Redis URL lists an empty host")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"not a port in a Redis URL: {port!r}")
    return host, int(port)


class _BoundedRedisCluster(RedisCluster):
    """A RedisCluster that waits up to `timeout` for a free connection instead of failing.

    redis-py's cluster client raises MaxConnectionsError as soon as all of a node's connections
    are busy, which is the burst-of-logins-into-503s failure the blocking pool avoids. With at
    most `max_connections` commands in flight no node can need more than that many connections.
    """

    # The cluster client retries on its own, by error type, timeouts included: not after a
    # timeout, for the reason in _options (review, helper-60: with redis+cluster:// a stall still
    # ran the counting scripts twice).
    # (Filtered rather than listed: the tuple differs between the redis-py releases we allow,
    # and the stubs type it as one fixed shape.)
    ERRORS_ALLOW_RETRY = tuple(  # type: ignore[assignment]
        error
        for error in RedisCluster.ERRORS_ALLOW_RETRY
        if not issubclass(error, RedisTimeoutError)
    )

    def __init__(self, *, timeout: float | None, **options: Any) -> None:
        super().__init__(**options)
        self._in_flight = asyncio.Semaphore(options.get("max_connections", 100))
        self._wait = timeout

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._wait):
                await self._in_flight.acquire()
        except TimeoutError as exc:
            raise RedisConnectionError("No connection available.") from exc
        try:
            # Until the slots are known, redis-py sends keyed commands to one node; a burst of
            # them then meets a storm of MOVED replies, and redis-py answers every fifth one by
            # closing all connections, in-flight commands too. Learn the slots first.
            await self.initialize()
            return await super().execute_command(*args, **kwargs)
        finally:
            self._in_flight.release()


def _cluster_client(target: _MultiHostURL, options: dict[str, Any]) -> RedisCluster:
    if target.path not in ("", "0"):
        raise ConfigError("a Redis Cluster has only database 0")
    options = {**options, **target.connection_options()}
    options.pop("db", None)
    return _BoundedRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts], **options
    )


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinel-managed pool, waiting for a free connection as BlockingConnectionPool does."""


class _SentinelMaster(Redis):
    """The master's client; closing it also closes the connections to the Sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            pool = self.connection_pool
            if isinstance(pool, SentinelConnectionPool):
                for sentinel in pool.sentinel_manager.sentinels:
                    await sentinel.aclose()


# Query options of a Sentinel URL that are the Sentinels' own credentials, not the master's.
_SENTINEL_CREDENTIALS = {"sentinel_username": "username", "sentinel_password": "password"}


def _sentinel_master(target: _MultiHostURL, options: dict[str, Any]) -> Redis:
    service, _, db = target.path.partition("/")
    if not service or "/" in db:
        raise ConfigError("a Sentinel URL needs a service name: redis+sentinel://host:port/name")
    query = parse_qsl(target.query, keep_blank_values=True)
    credentials = {
        _SENTINEL_CREDENTIALS[key]: value for key, value in query if key in _SENTINEL_CREDENTIALS
    }
    target = replace(
        target, query=urlencode([(k, v) for k, v in query if k not in _SENTINEL_CREDENTIALS])
    )
    master_options = {**options, **target.connection_options(db=db or "0")}
    tls = master_options.get("ssl", False)
    # Sentinels are asked with the same timeouts (and TLS), with their own credentials if given,
    # never the master's.
    # Every new master connection asks a Sentinel first, so the Sentinel clients need as many
    # connections as the master's pool can open at once.
    sentinel_options = {
        key: value
        for key, value in master_options.items()
        if key.startswith(("socket_", "ssl_")) or key in ("retry", "max_connections")
    }
    if tls:
        sentinel_options["ssl"] = True
    # A pub/sub client may wait on the master without a timeout; a question to a Sentinel may not.
    if sentinel_options.get("socket_timeout") is None:
        sentinel_options["socket_timeout"] = _options({})["socket_timeout"]
    sentinel_options.update(credentials)
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_options)
    master: Redis = sentinel.master_for(
        service,
        redis_class=_SentinelMaster,
        connection_pool_class=_BlockingSentinelPool,
        **master_options,
    )
    return master


async def close_client(client: RedisClient | Redis) -> None:
    """Close a client's connections; a failure to close is logged, never raised.

    redis-py waits for each socket to close within the connect timeout (0.5 s here) and raises
    TimeoutError past it, which a busy machine can hit with a large pool. Nothing is lost by a
    slow close, and shutting down (or a test's teardown) must not fail over it.
    """
    try:
        await client.aclose()
    except (RedisError, OSError) as exc:
        log.warning("closing Redis connections: %s (%s)", type(exc).__name__, exc)
