"""In-memory caches in front of the root-key table: decrypted keys, unknown ids, loads in flight."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Generic, Protocol, TypeVar


class Expiring(Protocol):
    """What the cache needs to know about a key: its id and when it stops being valid."""

    @property
    def id(self) -> str: ...

    @property
    def expires_at(self) -> datetime: ...

    @property
    def expires_ts(self) -> float:
        """`expires_at` in unix seconds."""
        ...


K = TypeVar("K", bound=Expiring)


class KeyCache(Generic[K]):
    """Decrypted keys by id, evicted at their `expires_at`, plus a short-lived list of unknown ids.

    The cache has no clock of its own: callers pass `now`, so the keyring's injected clock rules.
    Everything but `load` is synchronous and runs on one event loop, so no locks are needed.
    """

    def __init__(
        self,
        *,
        max_entries: int = 1024,
        negative_ttl: timedelta = timedelta(seconds=5),
        max_negative: int = 4096,
    ) -> None:
        if max_entries < 1 or max_negative < 1:
            raise ValueError("cache sizes must be positive")
        self._max_entries = max_entries
        self._negative_ttl = negative_ttl
        self._max_negative = max_negative
        self._keys: dict[str, K] = {}
        # Unknown id -> until when it is known to be unknown; insertion order = age, for eviction.
        self._missing: OrderedDict[str, datetime] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[K | None]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key_id: str, *, now: datetime) -> K | None:
        """The cached key, unless absent or expired at `now` (then it is dropped)."""
        key = self._keys.get(key_id)
        if key is None:
            return None
        if key.expires_at <= now:
            del self._keys[key_id]
            return None
        return key

    def get_at(self, key_id: str, unix_now: float) -> K | None:
        """`get` on a float clock, for the verify path; an expired key is left for `get` or
        `evict_expired` to drop."""
        key = self._keys.get(key_id)
        if key is None or key.expires_ts <= unix_now:
            return None
        return key

    def put(self, key: K) -> None:
        """Cache `key`; when full, the entry that expires soonest makes room."""
        self._missing.pop(key.id, None)
        if key.id not in self._keys and len(self._keys) >= self._max_entries:
            soonest = min(self._keys.values(), key=lambda cached: cached.expires_at)
            del self._keys[soonest.id]
        self._keys[key.id] = key

    def evict(self, key_id: str) -> None:
        """Forget `key_id`, cached or known missing."""
        self._keys.pop(key_id, None)
        self._missing.pop(key_id, None)

    def evict_expired(self, now: datetime) -> int:
        """Drop every key expired at `now` and every stale unknown id; how many keys went."""
        expired = [key_id for key_id, key in self._keys.items() if key.expires_at <= now]
        for key_id in expired:
            del self._keys[key_id]
        for key_id in [key_id for key_id, until in self._missing.items() if until <= now]:
            del self._missing[key_id]
        return len(expired)

    def is_known_missing(self, key_id: str, *, now: datetime) -> bool:
        """Whether `key_id` was looked up and not found less than `negative_ttl` ago."""
        until = self._missing.get(key_id)
        if until is None:
            return False
        if until <= now:
            del self._missing[key_id]
            return False
        return True

    def remember_missing(self, key_id: str, *, now: datetime) -> None:
        """Note that `key_id` does not exist, for `negative_ttl`; the oldest note makes room."""
        self._missing.pop(key_id, None)
        self._missing[key_id] = now + self._negative_ttl
        while len(self._missing) > self._max_negative:
            self._missing.popitem(last=False)

    async def load(
        self,
        key_id: str,
        loader: Callable[[], Coroutine[Any, Any, K | None]],
        *,
        now: datetime,
    ) -> K | None:
        """Run `loader` for a miss, once for all concurrent callers asking for the same id.

        The result is cached (or the id remembered as missing). The load runs as its own task,
        so a caller that is cancelled (a client hanging up) does not fail the others waiting.
        """
        task = self._inflight.get(key_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key_id, loader, now=now))
            self._inflight[key_id] = task
            task.add_done_callback(partial(self._finished, key_id))
        return await asyncio.shield(task)

    async def _load(
        self,
        key_id: str,
        loader: Callable[[], Coroutine[Any, Any, K | None]],
        *,
        now: datetime,
    ) -> K | None:
        key = await loader()
        if key is None:
            self.remember_missing(key_id, now=now)
        else:
            self.put(key)
        return key

    def _finished(self, key_id: str, task: asyncio.Task[K | None]) -> None:
        if self._inflight.get(key_id) is task:
            del self._inflight[key_id]
        if not task.cancelled():
            # Mark the exception retrieved: every waiter may have gone away meanwhile.
            task.exception()
