"""The key cache on its own, and the keyring's cache in front of a real database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from keystore_fakes import START, FakeClock, StatementLog
from sqlalchemy.ext.asyncio import AsyncEngine

from keystore import KeyEncryptionKey, Keyring, StoreUnavailable
from keystore.cache import KeyCache


@dataclass(frozen=True)
class Entry:
    id: str
    expires_at: datetime

    @property
    def expires_ts(self) -> float:
        return self.expires_at.timestamp()


def _entry(key_id: str, hours: float = 1) -> Entry:
    return Entry(key_id, START + timedelta(hours=hours))


def test_cached_entries_are_served_until_they_expire() -> None:
    """An entry is returned before its expiry and dropped at it."""
    cache: KeyCache[Entry] = KeyCache()
    cache.put(_entry("a"))

    before = cache.get("a", now=START + timedelta(minutes=59))
    at_expiry = cache.get("a", now=START + timedelta(hours=1))

    assert before == _entry("a")
    assert at_expiry is None
    assert len(cache) == 0


def test_a_full_cache_drops_the_entry_that_expires_soonest() -> None:
    """The cache is bounded; making room evicts the soonest-expiring entry."""
    cache: KeyCache[Entry] = KeyCache(max_entries=2)
    cache.put(_entry("late", hours=3))
    cache.put(_entry("soon", hours=1))

    cache.put(_entry("new", hours=2))

    assert len(cache) == 2
    assert cache.get("soon", now=START) is None
    assert cache.get("late", now=START) is not None


def test_evict_expired_drops_expired_entries_and_stale_misses() -> None:
    """evict_expired removes keys expired at now and unknown-id notes that ran out."""
    cache: KeyCache[Entry] = KeyCache(negative_ttl=timedelta(seconds=5))
    cache.put(_entry("a", hours=1))
    cache.put(_entry("b", hours=2))
    cache.remember_missing("x", now=START)

    evicted = cache.evict_expired(START + timedelta(hours=1))

    assert evicted == 1
    assert len(cache) == 1
    assert not cache.is_known_missing("x", now=START)


def test_unknown_ids_are_remembered_for_the_negative_ttl_only() -> None:
    """An id noted missing stays known-missing for negative_ttl, then is asked about again."""
    cache: KeyCache[Entry] = KeyCache(negative_ttl=timedelta(seconds=5))
    cache.remember_missing("x", now=START)

    during = cache.is_known_missing("x", now=START + timedelta(seconds=4.9))
    after = cache.is_known_missing("x", now=START + timedelta(seconds=5))

    assert during is True
    assert after is False


def test_the_negative_cache_is_bounded_and_forgets_the_oldest() -> None:
    """Beyond max_negative unknown ids, the oldest note is dropped."""
    cache: KeyCache[Entry] = KeyCache(max_negative=3)
    for key_id in ["w", "x", "y", "z"]:
        cache.remember_missing(key_id, now=START)

    known = [cache.is_known_missing(key_id, now=START) for key_id in ["w", "x", "y", "z"]]

    assert known == [False, True, True, True]


def test_putting_a_key_clears_its_missing_note() -> None:
    """A key that appears after being looked up in vain is served at once."""
    cache: KeyCache[Entry] = KeyCache()
    cache.remember_missing("a", now=START)

    cache.put(_entry("a"))

    assert not cache.is_known_missing("a", now=START)
    assert cache.get("a", now=START) == _entry("a")


async def test_concurrent_loads_of_one_id_run_the_loader_once() -> None:
    """Fifty concurrent misses for one id share a single load and its result."""
    cache: KeyCache[Entry] = KeyCache()
    calls = 0

    async def loader() -> Entry | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return _entry("a")

    results = await asyncio.gather(*(cache.load("a", loader, now=START) for _ in range(50)))

    assert calls == 1
    assert all(result == _entry("a") for result in results)
    assert cache.get("a", now=START) == _entry("a")


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    """If the load fails, all waiters see the error, and the next miss tries again."""
    cache: KeyCache[Entry] = KeyCache()
    calls = 0

    async def failing() -> Entry | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise StoreUnavailable("down")

    results = await asyncio.gather(
        *(cache.load("a", failing, now=START) for _ in range(5)), return_exceptions=True
    )
    with pytest.raises(StoreUnavailable):
        await cache.load("a", failing, now=START)

    assert all(isinstance(result, StoreUnavailable) for result in results)
    assert calls == 2
    assert not cache.is_known_missing("a", now=START)


async def test_a_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    """A caller that goes away (client hung up) leaves the load running for the others."""
    cache: KeyCache[Entry] = KeyCache()
    release = asyncio.Event()

    async def loader() -> Entry | None:
        await release.wait()
        return _entry("a")

    impatient = asyncio.create_task(cache.load("a", loader, now=START))
    patient = asyncio.create_task(cache.load("a", loader, now=START))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()

    result = await patient

    assert result == _entry("a")
    assert impatient.cancelled()


async def test_a_miss_reads_the_database_once_under_fifty_concurrent_gets(
    db_url: str,
    engine: AsyncEngine,
    make_engine: Callable[[str], AsyncEngine],
    kek: KeyEncryptionKey,
    clock: FakeClock,
) -> None:
    """Fifty concurrent get() of a key not yet in memory cost exactly one SELECT."""
    made = await Keyring(engine, kek=kek, clock=clock).current()
    reader_engine = make_engine(db_url)
    reader = Keyring(reader_engine, kek=kek, clock=clock)
    log = StatementLog(reader_engine)

    keys = await asyncio.gather(*(reader.get(made.id) for _ in range(50)))
    again = await reader.get(made.id)

    log.close()
    assert log.count("SELECT") == 1
    assert {key.id for key in keys if key is not None} == {made.id}
    assert all(key is not None for key in keys)
    assert again is not None and again.secret == made.secret
    assert reader.get_cached(made.id) is not None


async def test_unknown_ids_are_looked_up_once_per_negative_ttl(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """A forged key id hits the database once; repeats within a few seconds do not."""
    ring = Keyring(engine, kek=kek, clock=clock, negative_ttl=timedelta(seconds=5))
    log = StatementLog(engine)

    first = await asyncio.gather(*(ring.get("0123456789abcdef") for _ in range(20)))
    clock.advance(timedelta(seconds=4))
    repeated = await ring.get("0123456789abcdef")
    queries_within_ttl = log.count("SELECT")
    clock.advance(timedelta(seconds=2))
    after_ttl = await ring.get("0123456789abcdef")

    log.close()
    assert first == [None] * 20
    assert repeated is None and after_ttl is None
    assert queries_within_ttl == 1
    assert log.count("SELECT") == 2


@pytest.mark.parametrize("key_id", ["", "x" * 65, "key id with spaces", "ключ", "a'; DROP--"])
async def test_implausible_key_ids_never_reach_the_database(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock, key_id: str
) -> None:
    """Ids no key could have (empty, too long, odd characters) are answered from memory."""
    ring = Keyring(engine, kek=kek, clock=clock)
    log = StatementLog(engine)

    found = await ring.get(key_id)

    log.close()
    assert found is None
    assert log.statements == []


async def test_get_cached_never_touches_the_database(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """The hot path answers from memory only: a miss is None, without a query."""
    made = await Keyring(engine, kek=kek, clock=clock).current()
    ring = Keyring(engine, kek=kek, clock=clock)
    log = StatementLog(engine)

    miss = ring.get_cached(made.id)

    log.close()
    assert miss is None
    assert log.statements == []


async def test_expired_keys_are_not_served_from_the_cache(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """Once the clock passes a cached key's expiry, neither get_cached nor get returns it; nor
    does get_cached on the caller's float clock (`at`, the verifier's) from the expiry on."""
    ring = Keyring(engine, kek=kek, clock=clock)
    key = await ring.current()
    cached_before = ring.get_cached(key.id)
    assert key.expires_ts == key.expires_at.timestamp()
    assert ring.get_cached(key.id, at=key.expires_ts - 0.5) is key
    assert ring.get_cached(key.id, at=key.expires_ts) is None

    clock.set(key.expires_at)
    cached_after = ring.get_cached(key.id)
    fetched_after = await ring.get(key.id)

    assert cached_before is key
    assert cached_after is None
    assert fetched_after is None


def test_get_at_answers_on_a_float_clock_without_evicting() -> None:
    """The verify path's lookup: live before the expiry instant, None from it on; `get` still
    sees (and drops) the expired entry afterwards."""
    cache: KeyCache[Entry] = KeyCache()
    entry = _entry("k", hours=1)
    cache.put(entry)
    expiry = entry.expires_ts
    assert cache.get_at("k", expiry - 0.001) is entry
    assert cache.get_at("k", expiry) is None
    assert cache.get_at("missing", expiry - 3600) is None
    assert len(cache) == 1
    assert cache.get("k", now=entry.expires_at) is None
    assert len(cache) == 0
