"""The lockout store in process memory, for the embedded single-process mode.

Same semantics as the Redis store (see `tokensvc.accounts.lockout.store`). Each method runs without an
`await` inside, so on one event loop every step is atomic just as a Lua script is. Memory is
bounded: expired counters are dropped, and past `max_entries` the counters with the fewest
failures are evicted first (the most recently failed among equals).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass

from tokensvc.accounts.lockout.policy import LockoutPolicy
from tokensvc.accounts.lockout.store import (
    AttemptStanding,
    CounterStatus,
    LockoutStatus,
    hash_identity,
    hash_ip,
)
from tokensvc.errors import LockedOut

__all__ = ["MemoryLockoutStore"]

# ("ip", ip hash) | ("pair", identity hash, ip hash) | ("identity", identity hash)
_Key = tuple[str, ...]


@dataclass(slots=True)
class _Counter:
    threshold: int
    failures: int = 0
    last: float = 0.0  # seconds; the latest failure


class MemoryLockoutStore:
    """LockoutStore in this process only; do not use it with several workers or replicas."""

    def __init__(self, *, policy: LockoutPolicy | None = None, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._policy = policy or LockoutPolicy()
        self._max_entries = max_entries
        self._counters: OrderedDict[_Key, _Counter] = OrderedDict()
        # identity hash -> {ip hash: last success}; insertion order is success order.
        self._trusted: OrderedDict[str, dict[str, float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"MemoryLockoutStore(entries={len(self._counters)}, policy={self._policy!r})"

    def __len__(self) -> int:
        """How many counters are held (the bound `max_entries` applies to)."""
        return len(self._counters)

    @property
    def policy(self) -> LockoutPolicy:
        return self._policy

    async def begin_attempt(self, *, identity: str, client_ip: str, now: float) -> AttemptStanding:
        """Raise LockedOut if a counter is locked, else count a failure in each (atomically)."""
        keys = self._applicable(identity, client_ip, now)
        counters = [self._load(key, threshold, now) for key, threshold in keys]
        retry = max((c.last + self._wait(c) - now for c in counters if self._wait(c)), default=0.0)
        if retry > 0:
            raise LockedOut(retry_after=max(1, math.ceil(retry)))
        # The identity's own counter applies exactly when the address is not trusted.
        standing = AttemptStanding(
            trusted=not any(key[0] == "identity" for key, _ in keys),
            recent_failures=any(c.failures > 0 for c in counters),
        )
        for (key, _), counter in zip(keys, counters, strict=True):
            counter.failures += 1
            counter.last = max(counter.last, now)
            self._counters[key] = counter
            self._counters.move_to_end(key)
        self._bound(now)
        return standing

    async def is_trusted(self, *, identity: str, client_ip: str, now: float) -> bool:
        """Whether the identity logged in from `client_ip` within the trusted-IP window."""
        return not any(
            key[0] == "identity" for key, _ in self._applicable(identity, client_ip, now)
        )

    async def record_success(self, *, identity: str, client_ip: str, now: float) -> None:
        """Reset the identity's counters, take the attempt off the IP, trust the IP."""
        p = self._policy
        identity_hash, ip_hash = self._hashes(identity, client_ip)
        self._counters.pop(("identity", identity_hash), None)
        self._counters.pop(("pair", identity_hash, ip_hash), None)
        self._take_back(("ip", ip_hash), p.ip_threshold, now)
        if p.trusted_ip_window <= 0 or p.max_trusted_ips <= 0:
            return
        trusted = self._trusted.pop(identity_hash, {})
        trusted[ip_hash] = max(trusted.pop(ip_hash, now), now)
        horizon = now - p.trusted_ip_window
        kept = [(ip, at) for ip, at in trusted.items() if at > horizon][-p.max_trusted_ips :]
        self._trusted[identity_hash] = dict(kept)
        self._bound(now)

    async def abandon_attempt(self, *, identity: str, client_ip: str, now: float) -> None:
        """Take an unchecked attempt's provisional failure back off its counters."""
        for key, threshold in self._applicable(identity, client_ip, now):
            self._take_back(key, threshold, now)

    async def status(self, identity: str, now: float) -> LockoutStatus:
        """The identity's counters and trusted-IP count."""
        p = self._policy
        identity_hash = hash_identity(identity)
        own = self._load(("identity", identity_hash), p.identity_threshold, now)
        pairs = [
            self._load(key, p.identity_ip_threshold, now)
            for key in list(self._counters)
            if key[0] == "pair" and key[1] == identity_hash
        ]
        counters = (
            self._status_of("identity", own, now),
            *(self._status_of("identity_ip", c, now) for c in pairs if c.failures > 0),
        )
        horizon = now - p.trusted_ip_window
        trusted = self._trusted.get(identity_hash, {})
        return LockoutStatus(
            failures=counters[0].failures,
            locked_until=counters[0].locked_until,
            counters=counters,
            trusted_ips=sum(1 for at in trusted.values() if at > horizon),
        )

    async def clear(self, identity: str) -> None:
        """Forget the identity's failures; trusted IPs and per-IP counters stay."""
        identity_hash = hash_identity(identity)
        for key in [k for k in self._counters if k[1] == identity_hash and k[0] != "ip"]:
            del self._counters[key]

    def _hashes(self, identity: str, client_ip: str) -> tuple[str, str]:
        return hash_identity(identity), hash_ip(client_ip)

    def _applicable(self, identity: str, client_ip: str, now: float) -> list[tuple[_Key, int]]:
        p = self._policy
        identity_hash, ip_hash = self._hashes(identity, client_ip)
        keys: list[tuple[_Key, int]] = [
            (("ip", ip_hash), p.ip_threshold),
            (("pair", identity_hash, ip_hash), p.identity_ip_threshold),
        ]
        trusted_at = self._trusted.get(identity_hash, {}).get(ip_hash)
        if trusted_at is None or trusted_at <= now - p.trusted_ip_window:
            keys.append((("identity", identity_hash), p.identity_threshold))
        return keys

    def _wait(self, counter: _Counter) -> float:
        return self._policy.wait(counter.failures, counter.threshold)

    def _expired(self, counter: _Counter, now: float) -> bool:
        return now >= counter.last + self._wait(counter) + self._policy.window

    def _load(self, key: _Key, threshold: int, now: float) -> _Counter:
        """The live counter under `key`, or a fresh one (not stored until it counts a failure)."""
        counter = self._counters.get(key)
        if counter is None or self._expired(counter, now):
            return _Counter(threshold=threshold)
        return counter

    def _take_back(self, key: _Key, threshold: int, now: float) -> None:
        counter = self._load(key, threshold, now)
        if counter.failures <= 1:
            self._counters.pop(key, None)
        else:
            counter.failures -= 1

    def _status_of(self, scope: str, counter: _Counter, now: float) -> CounterStatus:
        until = counter.last + self._wait(counter)
        return CounterStatus(
            scope="identity" if scope == "identity" else "identity_ip",
            failures=counter.failures,
            locked_until=until if self._wait(counter) and until > now else None,
        )

    def _bound(self, now: float) -> None:
        if len(self._counters) > self._max_entries:
            for key in [k for k, c in self._counters.items() if self._expired(c, now)]:
                del self._counters[key]
            # Still full of live counters: evict down to 90 %, so the sweep above runs once per
            # tenth of the capacity rather than on every write. The fewest failures go first,
            # and the most recent among equals: a spray of one-off names from many addresses,
            # which fills the table with counters of one failure each, cannot push out the
            # counter of the identity it is attacking (red team: 36,000 such attempts reset a
            # locked identity's 15 failures, and with them its growing lock), nor can one whose
            # counters merely match it, made after it (red team again).
            excess = len(self._counters) - self._max_entries * 9 // 10
            if excess > 0:
                weakest = heapq.nsmallest(
                    excess, self._counters.items(), key=lambda kv: (kv[1].failures, -kv[1].last)
                )
                for key, _ in weakest:
                    del self._counters[key]
        if len(self._trusted) > self._max_entries:
            horizon = now - self._policy.trusted_ip_window
            for identity_hash in [
                h for h, ips in self._trusted.items() if max(ips.values(), default=0) <= horizon
            ]:
                del self._trusted[identity_hash]
            while len(self._trusted) > self._max_entries * 9 // 10:
                self._trusted.popitem(last=False)
