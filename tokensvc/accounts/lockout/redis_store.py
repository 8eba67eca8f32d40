"""The lockout store in Redis: Lua scripts, each atomic on one hash slot, so it runs in a cluster.

Keys, under the configured prefix (`h` is the identity's hash, `i` the client IP's):

- `{h}:n`       identity counter            HASH n (failures), t (last failure, ms)
- `{h}:p:i`     identity + IP counter       HASH n, t
- `{h}:trusted` IPs the identity succeeded from   ZSET member i, score = last success (ms)
- `{h}:pairs`   index of the identity's pair counters (for status and clear)   ZSET i → expiry
- `ip:i`        client IP counter           HASH n, t

The identity's keys share the hash tag `{h}`, so in Redis Cluster they live in one slot. The
per-IP counter is shared by every identity and lives wherever its own name hashes to; its name
has no braces, so it is the same key as before the cluster support and replicas of either
version count into it during a rolling upgrade.

So an attempt is two steps, each one script, each atomic on its own slot:

1. the client IP's counter: refuse if it is locked, else count the attempt;
2. the identity's counters (identity + IP, and identity unless the IP is trusted): the same.

If step 2 refuses, step 1's count is taken back, as a success or an abandoned attempt takes it
back: the count goes, the time of the last failure stays. If step 1 refuses, nothing is counted
and step 2 only reads, so Retry-After still names the latest of the applicable locks. Both
counts happen before argon2 runs, and each counter is checked and counted atomically, so
concurrent attempts can never slip past any counter's threshold. What the split adds is a window
between the steps in which an attempt's IP count is visible although its identity is about to
refuse it: a concurrent attempt from that IP can then meet an IP counter one above its true
count. Likewise a count whose take-back fails (Redis unreachable, the process stopped between
the steps) stays. Every such error is towards refusing, never towards another guess.

`now` comes from the caller (in ms to the script), never from Redis's clock, so tests control time
and replicas agree on the logic; counters also expire logically against that `now`. Real TTLs
are set on every key as well, so nothing outlives its usefulness.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from tokensvc.accounts.lockout.policy import LockoutPolicy
from tokensvc.accounts.lockout.store import (
    AttemptStanding,
    CounterStatus,
    LockoutStatus,
    hash_identity,
    hash_ip,
)
from tokensvc.errors import LockedOut, Unavailable
from tokensvc.operations import metrics
from tokensvc.operations.redisconn import RedisClient

__all__ = ["RedisLockoutStore"]

# Shared by every script. ARGV: 1 now ms, 2 base wait ms, 3 max wait ms, 4 window ms.
_PRELUDE = """
local now = tonumber(ARGV[1])
local base, cap, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

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

-- Milliseconds until the counter's lock ends; 0 when it is open.
local function locked_for(key, threshold)
  local n, t = load(key, threshold)
  local w = wait(n, threshold)
  if w > 0 and t + w > now then return t + w - now end
  return 0
end

-- Count one failure; returns when the counter will be forgotten (ms).
local function count(key, threshold)
  local n, t = load(key, threshold)
  n, t = n + 1, math.max(t, now)
  local expires = t + wait(n, threshold) + window
  redis.call('HSET', key, 'n', n, 't', t)
  redis.call('PEXPIRE', key, math.max(1, math.ceil(expires - now)))
  return expires
end

local function take_back(key, threshold)
  local n = load(key, threshold)
  if n <= 1 then redis.call('DEL', key) else redis.call('HINCRBY', key, 'n', -1) end
end
"""

# The client IP's counter. KEYS: 1 ip counter. ARGV 5: ip threshold.
# Returns {ms until the lock ends or 0, failures before this attempt}.
_IP_BEGIN = (
    _PRELUDE
    + """
local threshold = tonumber(ARGV[5])
local retry = locked_for(KEYS[1], threshold)
if retry > 0 then return {math.ceil(retry), 0} end
local before = load(KEYS[1], threshold)
count(KEYS[1], threshold)
return {0, before}
"""
)

_IP_TAKE_BACK = (
    _PRELUDE
    + """
take_back(KEYS[1], tonumber(ARGV[5]))
return 0
"""
)

# The identity's counters. KEYS: 1 pair counter, 2 identity counter, 3 trusted, 4 pairs index.
# ARGV: 5 ip hash, 6-7 thresholds (pair, identity), 8 trusted window ms, 9 max trusted IPs,
# 10 max pairs; for begin, 11: 1 to count the attempt, 0 only to say how long it is locked.
# Begin returns {ms until the lock ends or 0, 1 if the IP is trusted, failures before}.
_IDENTITY_PRELUDE = (
    _PRELUDE
    + """
local member = ARGV[5]
local trusted_window = tonumber(ARGV[8])

local function applicable()
  local counters = {{KEYS[1], tonumber(ARGV[6])}}
  local score = redis.call('ZSCORE', KEYS[3], member)
  if not (score and tonumber(score) > now - trusted_window) then
    counters[2] = {KEYS[2], tonumber(ARGV[7])}
  end
  return counters
end
"""
)

_BEGIN = (
    _IDENTITY_PRELUDE
    + """
local counters = applicable()
local trusted = (#counters == 1) and 1 or 0
local retry = 0
for _, c in ipairs(counters) do retry = math.max(retry, locked_for(c[1], c[2])) end
if retry > 0 or ARGV[11] == '0' then return {math.ceil(retry), trusted, 0} end

local before = 0
for i, c in ipairs(counters) do
  before = math.max(before, (load(c[1], c[2])))
  local expires = count(c[1], c[2])
  if i == 1 then redis.call('ZADD', KEYS[4], expires, member) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[10])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1) end
redis.call('PEXPIRE', KEYS[4], math.ceil(cap + window))
return {0, trusted, before}
"""
)

_SUCCESS = (
    _IDENTITY_PRELUDE
    + """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[4], member)
if trusted_window > 0 and tonumber(ARGV[9]) > 0 then
  redis.call('ZADD', KEYS[3], 'GT', now, member)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - trusted_window)
  local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[9])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, extra - 1) end
  redis.call('PEXPIRE', KEYS[3], math.ceil(trusted_window))
end
return 0
"""
)

_ABANDON = (
    _IDENTITY_PRELUDE
    + """
for _, c in ipairs(applicable()) do take_back(c[1], c[2]) end
return 0
"""
)

# Status and clear reach the pair counters through the index. Those keys are built here rather
# than passed in KEYS, which is safe in a cluster only because they share the hash tag of KEYS[1].
# KEYS: 1 identity counter, 2 trusted, 3 pairs index. ARGV for status: 5 pair key prefix,
# 6 identity threshold, 7 pair threshold, 8 trusted window ms; for clear: 1 pair key prefix.
_STATUS = (
    _PRELUDE
    + """
local function read(key, threshold, out)
  local n, t = load(key, threshold)
  local w = wait(n, threshold)
  out[#out + 1] = n
  out[#out + 1] = (w > 0 and t + w > now) and math.ceil(t + w) or 0
end
local out = {redis.call('ZCOUNT', KEYS[2], string.format('(%d', now - tonumber(ARGV[8])), '+inf')}
read(KEYS[1], tonumber(ARGV[6]), out)
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], string.format('(%d', now), '+inf')) do
  read(ARGV[5] .. member, tonumber(ARGV[7]), out)
end
return out
"""
)

_CLEAR = """
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  redis.call('DEL', ARGV[1] .. member)
end
redis.call('DEL', KEYS[1], KEYS[3])
return 0
"""

#: What the HTTP layer should put in Retry-After when Redis cannot be reached.
UNAVAILABLE_RETRY_AFTER = 5


@dataclass(frozen=True, slots=True)
class _Attempt:
    """The keys and arguments of one attempt's two steps."""

    ip_keys: list[str]
    ip_args: list[str | int]
    identity_keys: list[str]
    identity_args: list[str | int]


class RedisLockoutStore:
    """LockoutStore in Redis (one server, Sentinel or Cluster), shared by every worker and replica."""

    def __init__(
        self,
        redis: RedisClient,
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
        self._ip_begin = redis.register_script(_IP_BEGIN)
        self._ip_take_back = redis.register_script(_IP_TAKE_BACK)
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

    async def begin_attempt(self, *, identity: str, client_ip: str, now: float) -> AttemptStanding:
        """Raise LockedOut if a counter is locked, else count a failure in each.

        The IP's counter first, then the identity's, each checked and counted atomically; an
        IP count is taken back when the identity refuses (see the module docstring). The
        standing comes back from the same two scripts: no extra round trip.
        """
        attempt = self._attempt(identity, client_ip, now)
        ip_reply = await self._guard(self._ip_begin(attempt.ip_keys, attempt.ip_args))
        ip_retry_ms, ip_failures = int(ip_reply[0]), int(ip_reply[1])
        if ip_retry_ms > 0:
            # Nothing was counted; Retry-After still names the latest lock, as one script would.
            identity_retry_ms = 0
            with contextlib.suppress(Unavailable):
                identity_retry_ms, _, _ = await self._identity_begin(attempt, count=False)
            raise _locked_out(max(ip_retry_ms, identity_retry_ms))
        try:
            retry_ms, trusted, failures = await self._identity_begin(attempt, count=True)
        except Unavailable:
            await self._take_back_ip(attempt)
            raise
        if retry_ms > 0:
            await self._take_back_ip(attempt)
            raise _locked_out(retry_ms)
        return AttemptStanding(trusted=trusted, recent_failures=max(ip_failures, failures) > 0)

    async def is_trusted(self, *, identity: str, client_ip: str, now: float) -> bool:
        """Whether the identity logged in from `client_ip` within the trusted-IP window: the
        identity's begin script in its read-only mode, one round trip."""
        _, trusted, _ = await self._identity_begin(
            self._attempt(identity, client_ip, now), count=False
        )
        return trusted

    async def record_success(self, *, identity: str, client_ip: str, now: float) -> None:
        """Reset the identity's counters, take the attempt off the IP, trust the IP."""
        attempt = self._attempt(identity, client_ip, now)
        await self._guard(self._success(attempt.identity_keys, attempt.identity_args))
        await self._guard(self._ip_take_back(attempt.ip_keys, attempt.ip_args))

    async def abandon_attempt(self, *, identity: str, client_ip: str, now: float) -> None:
        """Take an unchecked attempt's provisional failure back off its counters."""
        attempt = self._attempt(identity, client_ip, now)
        await self._guard(self._abandon(attempt.identity_keys, attempt.identity_args))
        await self._guard(self._ip_take_back(attempt.ip_keys, attempt.ip_args))

    async def status(self, identity: str, now: float) -> LockoutStatus:
        """The identity's counters and trusted-IP count."""
        identity_hash = hash_identity(identity, key=self._identity_key)
        p = self._policy
        keys = self._identity_keys(identity_hash)
        args: list[str | int] = [
            *self._common_args(now),
            self._pair_prefix(identity_hash),
            p.identity_threshold,
            p.identity_ip_threshold,
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

    def _common_args(self, now: float) -> list[str | int]:
        p = self._policy
        return [_ms(now), _ms(p.base_wait), _ms(p.max_wait), _ms(p.window)]

    def _attempt(self, identity: str, client_ip: str, now: float) -> _Attempt:
        identity_hash = hash_identity(identity, key=self._identity_key)
        ip_hash = hash_ip(client_ip, key=self._identity_key)
        counter, trusted, pairs = self._identity_keys(identity_hash)
        p = self._policy
        common = self._common_args(now)
        return _Attempt(
            ip_keys=[f"{self._prefix}ip:{ip_hash}"],
            ip_args=[*common, p.ip_threshold],
            identity_keys=[self._pair_prefix(identity_hash) + ip_hash, counter, trusted, pairs],
            identity_args=[
                *common,
                ip_hash,
                p.identity_ip_threshold,
                p.identity_threshold,
                _ms(p.trusted_ip_window),
                p.max_trusted_ips,
                p.max_tracked_pairs,
            ],
        )

    async def _identity_begin(self, attempt: _Attempt, *, count: bool) -> tuple[int, bool, int]:
        """(ms until the identity's lock ends or 0, whether the IP is trusted, failures before)."""
        args = [*attempt.identity_args, 1 if count else 0]
        reply = await self._guard(self._begin(attempt.identity_keys, args))
        return int(reply[0]), int(reply[1]) == 1, int(reply[2])

    async def _take_back_ip(self, attempt: _Attempt) -> None:
        # Best effort: the attempt is refused either way, and a count left behind errs towards
        # locking the IP, never towards letting a guess through.
        with contextlib.suppress(Unavailable):
            await self._guard(self._ip_take_back(attempt.ip_keys, attempt.ip_args))

    @staticmethod
    async def _guard(call: Any) -> Any:
        # Fail closed: whatever goes wrong talking to Redis, the attempt is refused with a 503.
        # RedisClusterException (no node reachable, slots not covered) is not a RedisError.
        try:
            return await call
        except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
            metrics.REDIS_ERRORS.inc()
            raise Unavailable(
                "the lockout store is unavailable", retry_after=UNAVAILABLE_RETRY_AFTER
            ) from exc


def _locked_out(retry_ms: int) -> LockedOut:
    return LockedOut(retry_after=max(1, math.ceil(retry_ms / 1000)))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
