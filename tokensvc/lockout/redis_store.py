"""The lockout store in Redis: one Lua script per step, so every step is atomic across replicas.

Keys, under the configured prefix (`h` is the identity's hash, `i` the client IP's):

- `{h}:n`       identity counter            HASH n (failures), t (last failure, ms)
- `{h}:p:i`     identity + IP counter       HASH n, t
- `{h}:trusted` IPs the identity succeeded from   ZSET member i, score = last success (ms)
- `{h}:pairs`   index of the identity's pair counters (for status and clear)   ZSET i → expiry
- `ip:i`        client IP counter           HASH n, t

The identity's keys share the hash tag `{h}`, so in Redis Cluster they live in one slot. The
per-IP key cannot: it is shared by every identity. A cluster deployment needs the IP counter in
its own step — a second script on the IP's slot (check, then count), run before the identity
script, with the IP count taken back if the identity script refuses — or the IP key hashed into
the identity's slot, which turns it into a per-identity counter. Until then, scripts here name
keys in two slots and need a standalone server or Sentinel.

`now` comes from the caller (in ms to the script), never from Redis's clock, so tests control time
and replicas agree on the logic; counters also expire logically against that `now`. Real TTLs
are set on every key as well, so nothing outlives its usefulness.
"""

from __future__ import annotations

import math
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tokensvc import metrics
from tokensvc.errors import LockedOut, Unavailable
from tokensvc.lockout.policy import LockoutPolicy
from tokensvc.lockout.store import CounterStatus, LockoutStatus, hash_identity, hash_ip

__all__ = ["RedisLockoutStore", "redis_client_from_url"]

# Shared by the scripts. KEYS: 1 ip counter, 2 pair counter, 3 identity counter, 4 trusted,
# 5 pairs index. ARGV: 1 now ms, 2 ip hash, 3-5 thresholds (ip, pair, identity), 6 base wait ms,
# 7 max wait ms, 8 window ms, 9 trusted window ms, 10 max trusted IPs, 11 max pairs.
_PRELUDE = """
local now = tonumber(ARGV[1])
local member = ARGV[2]
local base, cap, window = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local trusted_window = tonumber(ARGV[9])

local function wait(n, threshold)
  if n < threshold then return 0 end
  return math.min(cap, base * 2 ^ math.min(n - threshold, 60))
end

-- A counter past its window is gone even if Redis's own TTL (on its own clock) has not fired.
local function load(key, threshold)
  local v = redis.call('HMGET', key, 'n', 't')
  local n, t = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  if n > 0 and now >= t + wait(n, threshold) + window then n = 0 end
  return n, t
end

local function applicable()
  local counters = {{KEYS[1], tonumber(ARGV[3])}, {KEYS[2], tonumber(ARGV[4])}}
  local score = redis.call('ZSCORE', KEYS[4], member)
  if not (score and tonumber(score) > now - trusted_window) then
    counters[3] = {KEYS[3], tonumber(ARGV[5])}
  end
  return counters
end

local function take_back(key, threshold)
  local n = load(key, threshold)
  if n <= 1 then redis.call('DEL', key) else redis.call('HINCRBY', key, 'n', -1) end
end
"""

_BEGIN = (
    _PRELUDE
    + """
local counters = applicable()
local loaded, retry = {}, 0
for i, c in ipairs(counters) do
  local n, t = load(c[1], c[2])
  loaded[i] = {n, t}
  local w = wait(n, c[2])
  if w > 0 and t + w - now > retry then retry = t + w - now end
end
if retry > 0 then return math.ceil(retry) end

for i, c in ipairs(counters) do
  local n, t = loaded[i][1] + 1, math.max(loaded[i][2], now)
  local expires = t + wait(n, c[2]) + window
  redis.call('HSET', c[1], 'n', n, 't', t)
  redis.call('PEXPIRE', c[1], math.max(1, math.ceil(expires - now)))
  if i == 2 then
    redis.call('ZADD', KEYS[5], expires, member)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local extra = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[11])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[5], 0, extra - 1) end
redis.call('PEXPIRE', KEYS[5], math.ceil(cap + window))
return 0
"""
)

_SUCCESS = (
    _PRELUDE
    + """
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[5], member)
take_back(KEYS[1], tonumber(ARGV[3]))
if trusted_window > 0 and tonumber(ARGV[10]) > 0 then
  redis.call('ZADD', KEYS[4], 'GT', now, member)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - trusted_window)
  local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[10])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1) end
  redis.call('PEXPIRE', KEYS[4], math.ceil(trusted_window))
end
return 0
"""
)

_ABANDON = (
    _PRELUDE
    + """
for _, c in ipairs(applicable()) do take_back(c[1], c[2]) end
return 0
"""
)

# Status and clear reach the pair counters through the index. Those keys are built here rather
# than passed in KEYS, which is safe in a cluster only because they share the hash tag of KEYS[1].
# KEYS: 1 identity counter, 2 trusted, 3 pairs index. ARGV: 1 pair key prefix, then for status
# 2 now ms, 3 identity threshold, 4 pair threshold, 5 base, 6 cap, 7 window, 8 trusted window.
_STATUS = """
local now = tonumber(ARGV[2])
local base, cap, window = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local function wait(n, threshold)
  if n < threshold then return 0 end
  return math.min(cap, base * 2 ^ math.min(n - threshold, 60))
end
local function read(key, threshold, out)
  local v = redis.call('HMGET', key, 'n', 't')
  local n, t = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  if n > 0 and now >= t + wait(n, threshold) + window then n = 0 end
  local locked_until = 0
  local w = wait(n, threshold)
  if w > 0 and t + w > now then locked_until = t + w end
  out[#out + 1] = n
  out[#out + 1] = math.ceil(locked_until)
end
local out = {redis.call('ZCOUNT', KEYS[2], string.format('(%d', now - tonumber(ARGV[8])), '+inf')}
read(KEYS[1], tonumber(ARGV[3]), out)
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], string.format('(%d', now), '+inf')) do
  read(ARGV[1] .. member, tonumber(ARGV[4]), out)
end
return out
"""

_CLEAR = """
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  redis.call('DEL', ARGV[1] .. member)
end
redis.call('DEL', KEYS[1], KEYS[3])
return 0
"""

#: What the HTTP layer should put in Retry-After when Redis cannot be reached.
UNAVAILABLE_RETRY_AFTER = 5


def redis_client_from_url(url: str, **overrides: Any) -> Redis:
    """A client that fails fast: sub-second timeouts and one retry, so login fails closed quickly.

    redis-py's defaults (5 s timeouts, 10 retries with backoff) would hold a login for most of a
    minute before answering 503. The pool blocks (up to a second) when all its connections are
    busy: redis-py's default pool raises at once past 100 connections, which turned a burst of
    logins into 503s although Redis was fine.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": 0.5,
        "socket_timeout": 1.0,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 30,
        "max_connections": 64,
        "timeout": 1.0,
    }
    options.update(overrides)
    pool = BlockingConnectionPool.from_url(url, **options)
    # from_pool: the client owns the pool, so aclose() closes its connections too.
    return Redis.from_pool(pool)


class RedisLockoutStore:
    """LockoutStore in Redis, shared by every worker and replica."""

    def __init__(
        self,
        redis: Redis,
        *,
        policy: LockoutPolicy | None = None,
        prefix: str = "tokensvc:lockout:",
        identity_key: bytes | None = None,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the prefix must not contain braces: they would move the hash tag")
        self._redis = redis
        self._policy = policy or LockoutPolicy()
        self._prefix = prefix
        self._identity_key = identity_key
        self._begin = redis.register_script(_BEGIN)
        self._success = redis.register_script(_SUCCESS)
        self._abandon = redis.register_script(_ABANDON)
        self._status = redis.register_script(_STATUS)
        self._clear = redis.register_script(_CLEAR)

    def __repr__(self) -> str:
        return f"RedisLockoutStore(prefix={self._prefix!r}, policy={self._policy!r})"

    @property
    def policy(self) -> LockoutPolicy:
        return self._policy

    async def begin_attempt(self, *, identity: str, client_ip: str, now: float) -> None:
        """Raise LockedOut if a counter is locked, else count a failure in each (atomically)."""
        retry_ms = int(await self._run(self._begin, identity, client_ip, now))
        if retry_ms > 0:
            raise LockedOut(retry_after=max(1, math.ceil(retry_ms / 1000)))

    async def record_success(self, *, identity: str, client_ip: str, now: float) -> None:
        """Reset the identity's counters, take the attempt off the IP, trust the IP."""
        await self._run(self._success, identity, client_ip, now)

    async def abandon_attempt(self, *, identity: str, client_ip: str, now: float) -> None:
        """Take an unchecked attempt's provisional failure back off its counters."""
        await self._run(self._abandon, identity, client_ip, now)

    async def status(self, identity: str, now: float) -> LockoutStatus:
        """The identity's counters and trusted-IP count."""
        identity_hash = hash_identity(identity, key=self._identity_key)
        p = self._policy
        keys = self._identity_keys(identity_hash)
        args: list[str | int] = [
            self._pair_prefix(identity_hash),
            _ms(now),
            p.identity_threshold,
            p.identity_ip_threshold,
            _ms(p.base_wait),
            _ms(p.max_wait),
            _ms(p.window),
            _ms(p.trusted_ip_window),
        ]
        reply = await self._guard(self._status(keys=keys, args=args))
        numbers = [int(value) for value in reply]
        counters = [
            CounterStatus(
                scope="identity" if index == 1 else "identity_ip",
                failures=numbers[index],
                locked_until=numbers[index + 1] / 1000 if numbers[index + 1] else None,
            )
            for index in range(1, len(numbers), 2)
        ]
        identity_counter = counters[0]
        return LockoutStatus(
            failures=identity_counter.failures,
            locked_until=identity_counter.locked_until,
            counters=(identity_counter, *(c for c in counters[1:] if c.failures > 0)),
            trusted_ips=numbers[0],
        )

    async def clear(self, identity: str) -> None:
        """Forget the identity's failures; trusted IPs and per-IP counters stay."""
        identity_hash = hash_identity(identity, key=self._identity_key)
        keys = self._identity_keys(identity_hash)
        await self._guard(self._clear(keys=keys, args=[self._pair_prefix(identity_hash)]))

    def _identity_keys(self, identity_hash: str) -> list[str]:
        tag = f"{self._prefix}{{{identity_hash}}}"
        return [f"{tag}:n", f"{tag}:trusted", f"{tag}:pairs"]

    def _pair_prefix(self, identity_hash: str) -> str:
        return f"{self._prefix}{{{identity_hash}}}:p:"

    async def _run(self, script: Any, identity: str, client_ip: str, now: float) -> Any:
        identity_hash = hash_identity(identity, key=self._identity_key)
        ip_hash = hash_ip(client_ip, key=self._identity_key)
        counter, trusted, pairs = self._identity_keys(identity_hash)
        keys = [
            f"{self._prefix}ip:{ip_hash}",
            self._pair_prefix(identity_hash) + ip_hash,
            counter,
            trusted,
            pairs,
        ]
        p = self._policy
        args: list[str | int] = [
            _ms(now),
            ip_hash,
            p.ip_threshold,
            p.identity_ip_threshold,
            p.identity_threshold,
            _ms(p.base_wait),
            _ms(p.max_wait),
            _ms(p.window),
            _ms(p.trusted_ip_window),
            p.max_trusted_ips,
            p.max_tracked_pairs,
        ]
        return await self._guard(script(keys=keys, args=args))

    @staticmethod
    async def _guard(call: Any) -> Any:
        # Fail closed: whatever goes wrong talking to Redis, the attempt is refused with a 503.
        try:
            return await call
        except (TimeoutError, RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.inc()
            raise Unavailable(
                "the lockout store is unavailable", retry_after=UNAVAILABLE_RETRY_AFTER
            ) from exc


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
