"""Lockout semantics shared by the Redis and the in-memory store, each test run against each.

The Redis store runs on one server, on a three-master Redis Cluster and on a Sentinel's master.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from tests.conftest import REDIS_KINDS, redis_url_of
from tokensvc.accounts.lockout import (
    LockoutPolicy,
    LockoutStore,
    MemoryLockoutStore,
    RedisLockoutStore,
    redis_client_from_url,
)
from tokensvc.errors import LockedOut
from tokensvc.operations.redisconn import RedisClient, close_client

T0 = 1_763_760_000.0
MakeStore = Callable[[LockoutPolicy], LockoutStore]


@pytest.fixture(params=[*REDIS_KINDS, "memory"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, store_kind: str) -> str:
    """The Redis of the store under test (for the in-memory store, one that goes unused)."""
    return redis_url_of(request, "redis" if store_kind == "memory" else store_kind)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[RedisClient]:
    client = redis_client_from_url(redis_url, max_connections=256)
    yield client
    await close_client(client)  # a 256-connection pool can be slow to close


@pytest.fixture
def make_store(store_kind: str, redis_client: RedisClient, redis_prefix: str) -> MakeStore:
    """Build a store of the parametrised kind with a given policy."""
    if store_kind == "memory":
        return lambda policy: MemoryLockoutStore(policy=policy)
    return lambda policy: RedisLockoutStore(redis_client, policy=policy, prefix=redis_prefix)


@pytest.fixture
def store(make_store: MakeStore) -> LockoutStore:
    return make_store(LockoutPolicy())


async def attempt(store: LockoutStore, identity: str, ip: str, now: float) -> int | None:
    """Begin an attempt and leave it failed: None if it was let through, else its retry_after."""
    try:
        await store.begin_attempt(identity=identity, client_ip=ip, now=now)
    except LockedOut as exc:
        return exc.retry_after
    return None


async def login(store: LockoutStore, identity: str, ip: str, now: float) -> None:
    """A successful login: begin, then record the success."""
    await store.begin_attempt(identity=identity, client_ip=ip, now=now)
    await store.record_success(identity=identity, client_ip=ip, now=now)


async def test_past_threshold_refused_until_the_wait_passes(store: LockoutStore) -> None:
    """Once an identity+IP counter reaches its threshold, attempts are refused until the wait ends."""
    for _ in range(5):
        assert await attempt(store, "alice", "192.0.2.1", T0) is None

    refused = await attempt(store, "alice", "192.0.2.1", T0 + 0.5)
    let_through = await attempt(store, "alice", "192.0.2.1", T0 + 1.0)

    assert refused == 1
    assert let_through is None
    with pytest.raises(LockedOut) as locked:
        await store.begin_attempt(identity="alice", client_ip="192.0.2.1", now=T0 + 2.5)
    assert locked.value.retry_after == 1  # 2 s after T0 + 1.0, half a second left, rounded up


async def test_waits_double_and_are_capped(store: LockoutStore) -> None:
    """Each failure past the threshold doubles the wait, up to max_wait."""
    now = T0
    for _ in range(5):
        await attempt(store, "alice", "192.0.2.1", now)
    waits: list[int] = []

    while len(waits) < 14:
        retry_after = await attempt(store, "alice", "192.0.2.1", now)
        if retry_after is None:
            continue
        waits.append(retry_after)
        now += retry_after

    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900]


async def test_identity_counter_locks_across_ips(store: LockoutStore) -> None:
    """Ten failures on one identity from ten IPs lock the identity from any untrusted IP."""
    for n in range(10):
        assert await attempt(store, "alice", f"198.51.100.{n}", T0) is None

    elsewhere = await attempt(store, "alice", "203.0.113.7", T0)
    other_user = await attempt(store, "bob", "203.0.113.7", T0)

    assert elsewhere == 1
    assert other_user is None


async def test_ip_counter_locks_an_ip_across_identities(store: LockoutStore) -> None:
    """Fifty failures from one IP on fifty identities lock that IP for every identity."""
    for n in range(50):
        assert await attempt(store, f"user{n}", "198.51.100.9", T0) is None

    same_ip = await attempt(store, "alice", "198.51.100.9", T0)
    other_ip = await attempt(store, "alice", "198.51.100.10", T0)

    assert same_ip == 1
    assert other_ip is None


async def test_concurrent_attempts_at_the_threshold_let_exactly_one_through(
    store: LockoutStore,
) -> None:
    """200 concurrent attempts on an identity one failure below its threshold let through one."""
    for n in range(9):
        await attempt(store, "alice", f"198.51.100.{n}", T0)

    outcomes = await asyncio.gather(
        *(attempt(store, "alice", f"203.0.113.{n % 250}", T0 + 0.001 * n) for n in range(200))
    )

    assert sum(outcome is None for outcome in outcomes) == 1


async def test_concurrent_attempts_on_a_locked_identity_let_none_through(
    store: LockoutStore,
) -> None:
    """200 concurrent attempts on a locked identity, from anywhere, are all refused."""
    for n in range(10):
        await attempt(store, "alice", f"198.51.100.{n}", T0)

    outcomes = await asyncio.gather(
        *(attempt(store, "alice", f"203.0.113.{n % 250}", T0 + 0.5) for n in range(200))
    )

    assert sum(outcome is None for outcome in outcomes) == 0
    assert (await store.status("alice", T0 + 0.5)).failures == 10


async def test_concurrent_failures_are_counted_exactly(make_store: MakeStore) -> None:
    """100 concurrent failures on one identity are counted as exactly 100."""
    store = make_store(
        LockoutPolicy(identity_threshold=1000, identity_ip_threshold=1000, ip_threshold=1000)
    )

    outcomes = await asyncio.gather(
        *(attempt(store, "alice", f"203.0.113.{n}", T0) for n in range(100))
    )

    assert outcomes == [None] * 100
    assert (await store.status("alice", T0)).failures == 100


async def test_owner_keeps_their_trusted_ip_during_an_attack(store: LockoutStore) -> None:
    """After alice logs in from A, 1,000 failures from other IPs lock her elsewhere, never on A."""
    await login(store, "alice", "192.0.2.1", T0)
    attacker_ips = [f"198.51.100.{n}" for n in range(10)]
    owner_logins = 0

    for n in range(1000):
        now = T0 + 60 + n * 0.5
        await attempt(store, "alice", attacker_ips[n % 10], now)
        if n % 100 == 99:
            await login(store, "alice", "192.0.2.1", now)  # raises LockedOut if A were locked
            owner_logins += 1
    end = T0 + 60 + 500
    for n in range(10):  # a last burst from fresh IPs, as the owner's logins reset the identity
        await attempt(store, "alice", f"203.0.113.{n}", end)

    assert owner_logins == 10
    assert await attempt(store, "alice", "203.0.113.50", end) is not None
    assert await attempt(store, "alice", attacker_ips[0], end) is not None
    assert await attempt(store, "alice", "192.0.2.1", end) is None


async def test_trust_in_an_ip_expires(store: LockoutStore) -> None:
    """An IP stops being trusted trusted_ip_window after the last login from it."""
    await login(store, "alice", "192.0.2.1", T0)
    later = T0 + 30 * 24 * 3600 + 1
    for n in range(10):
        await attempt(store, "alice", f"198.51.100.{n}", later)

    from_old_ip = await attempt(store, "alice", "192.0.2.1", later)

    assert from_old_ip == 1


async def test_unknown_identity_is_counted_like_a_known_one(store: LockoutStore) -> None:
    """A user who does not exist gets the same counts, locks and waits as one who does."""
    await login(store, "alice", "192.0.2.99", T0 - 3600)  # alice exists and logged in before
    outcomes: dict[str, list[int | None]] = {}

    for identity in ("alice", "nobody-by-that-name"):
        outcomes[identity] = [
            await attempt(store, identity, "198.51.100.1", T0 + n * 0.25) for n in range(16)
        ]

    assert outcomes["alice"] == outcomes["nobody-by-that-name"]
    assert outcomes["alice"][5] == 1


async def test_identities_are_normalised(store: LockoutStore) -> None:
    """`Alice ` and `alice` are counted as one identity."""
    for n in range(5):
        await attempt(store, "alice" if n % 2 else " ALICE ", "192.0.2.1", T0)

    refused = await attempt(store, "Alice", "192.0.2.1", T0)

    assert refused == 1


async def test_success_resets_the_identity_counters(store: LockoutStore) -> None:
    """A success clears the identity's failures, so earlier failures no longer count."""
    for _ in range(4):
        await attempt(store, "alice", "192.0.2.1", T0)
    await login(store, "alice", "192.0.2.1", T0)

    outcomes = [await attempt(store, "alice", "192.0.2.1", T0) for _ in range(5)]

    assert outcomes == [None] * 5
    assert (await store.status("alice", T0)).counters[1].failures == 5


async def test_success_takes_only_its_own_attempt_off_the_ip_counter(
    make_store: MakeStore,
) -> None:
    """A success from an IP undoes its own provisional count there, and no other failure."""
    store = make_store(LockoutPolicy(ip_threshold=3))
    await attempt(store, "u1", "192.0.2.1", T0)
    await attempt(store, "u2", "192.0.2.1", T0)
    await login(store, "alice", "192.0.2.1", T0)

    third = await attempt(store, "u3", "192.0.2.1", T0)
    fourth = await attempt(store, "u4", "192.0.2.1", T0)

    assert third is None
    assert fourth == 1


async def test_abandoned_attempts_are_not_counted(store: LockoutStore) -> None:
    """An attempt abandoned before its password was checked leaves no failure behind."""
    for _ in range(20):
        await store.begin_attempt(identity="alice", client_ip="192.0.2.1", now=T0)
        await store.abandon_attempt(identity="alice", client_ip="192.0.2.1", now=T0)

    status = await store.status("alice", T0)

    assert status.failures == 0
    assert not status.locked


async def test_failures_are_forgotten_after_the_window(store: LockoutStore) -> None:
    """Failures older than the window (after their lock) no longer count towards a lock."""
    for _ in range(4):
        await attempt(store, "alice", "192.0.2.1", T0)
    later = T0 + 15 * 60 + 1

    outcomes = [await attempt(store, "alice", "192.0.2.1", later) for _ in range(5)]

    assert outcomes == [None] * 5


async def test_retry_after_names_the_latest_of_the_locks(make_store: MakeStore) -> None:
    """Locked by its IP's counter for 10 s and by its identity + IP counter for 20 s: wait 20 s."""
    store = make_store(
        LockoutPolicy(ip_threshold=3, identity_ip_threshold=1, base_wait=10, max_wait=1000)
    )
    await attempt(store, "alice", "192.0.2.1", T0)
    await attempt(store, "alice", "192.0.2.1", T0 + 10)  # the pair's second lock: 20 s
    await attempt(store, "bob", "192.0.2.1", T0 + 10)  # the IP's first lock: 10 s

    retry_after = await attempt(store, "alice", "192.0.2.1", T0 + 10)

    assert retry_after == 20


async def test_sitting_out_a_capped_lock_does_not_reset_the_count(make_store: MakeStore) -> None:
    """A counter is remembered for the window after its lock ends, so the wait stays capped."""
    store = make_store(LockoutPolicy(identity_ip_threshold=1, base_wait=60, max_wait=60, window=60))
    await attempt(store, "alice", "192.0.2.1", T0)

    just_after_the_lock = await attempt(store, "alice", "192.0.2.1", T0 + 60)
    refused_again = await attempt(store, "alice", "192.0.2.1", T0 + 61)

    assert just_after_the_lock is None
    assert refused_again == 59


async def test_status_reports_counters_without_ips(store: LockoutStore) -> None:
    """Status shows the identity counter, each identity+IP counter, locks and trusted IPs."""
    await login(store, "alice", "192.0.2.1", T0)
    for n in range(10):
        await attempt(store, "alice", "198.51.100.1" if n < 5 else "198.51.100.2", T0 + 1)

    status = await store.status("alice", T0 + 1.5)

    assert status.failures == 10
    assert status.locked_until == pytest.approx(T0 + 2)
    assert status.locked
    assert status.trusted_ips == 1
    assert sorted(c.failures for c in status.counters if c.scope == "identity_ip") == [5, 5]
    assert "198.51.100" not in repr(status)


async def test_clear_unlocks_an_identity(store: LockoutStore) -> None:
    """An admin's clear forgets the identity's failures, so it can be tried again at once."""
    for n in range(10):
        await attempt(store, "alice", f"198.51.100.{n % 2}", T0)
    assert await attempt(store, "alice", "198.51.100.0", T0) is not None

    await store.clear("alice")

    assert await attempt(store, "alice", "198.51.100.0", T0) is None
    assert (await store.status("alice", T0)).failures == 1


async def test_status_of_an_untouched_identity_is_empty(store: LockoutStore) -> None:
    """An identity never tried has no failures, no lock and no trusted IPs."""
    status = await store.status("carol", T0)

    assert (status.failures, status.locked_until, status.trusted_ips) == (0, None, 0)
    assert not status.locked


async def test_a_clock_behind_sees_no_phantom_lock(store: LockoutStore) -> None:
    """Failures stamped by a replica whose clock runs ahead do not lock an open counter."""
    for _ in range(4):
        await attempt(store, "alice", "192.0.2.1", T0 + 10)

    from_a_slower_clock = await attempt(store, "alice", "192.0.2.1", T0)

    assert from_a_slower_clock is None


async def test_begin_attempt_says_where_the_attempt_stands(store: LockoutStore) -> None:
    """begin_attempt answers, in the same step, whether the address is one the identity recently
    logged in from and whether the attempt's counters already held failures."""
    fresh = await store.begin_attempt(identity="alice", client_ip="192.0.2.1", now=T0)
    await store.record_success(identity="alice", client_ip="192.0.2.1", now=T0)

    trusted = await store.begin_attempt(identity="Alice", client_ip="192.0.2.1", now=T0 + 1)
    elsewhere = await store.begin_attempt(identity="alice", client_ip="192.0.2.2", now=T0 + 2)
    again_elsewhere = await store.begin_attempt(identity="alice", client_ip="192.0.2.2", now=T0 + 3)
    other_identity = await store.begin_attempt(identity="bob", client_ip="192.0.2.1", now=T0 + 4)

    assert (fresh.trusted, fresh.recent_failures) == (False, False)
    assert trusted.trusted
    assert (elsewhere.trusted, elsewhere.recent_failures) == (False, False)
    assert (again_elsewhere.trusted, again_elsewhere.recent_failures) == (False, True)
    # Trust is per (identity, address): bob gains nothing from alice's address, but the address
    # now holds alice's failed attempt at T0 + 1 (left failed here), so bob's attempt is suspect.
    assert (other_identity.trusted, other_identity.recent_failures) == (False, True)


async def test_an_unknown_identity_stands_like_a_known_one_from_a_new_address(
    store: LockoutStore,
) -> None:
    """Before any failure, a never-seen identity and a real user at a new address stand alike:
    the standing cannot tell who exists."""
    await store.begin_attempt(identity="alice", client_ip="192.0.2.1", now=T0)
    await store.record_success(identity="alice", client_ip="192.0.2.1", now=T0)

    known = await store.begin_attempt(identity="alice", client_ip="198.51.100.1", now=T0 + 1)
    unknown = await store.begin_attempt(identity="nobody", client_ip="198.51.100.2", now=T0 + 1)

    assert known == unknown


async def test_is_trusted_reads_without_counting(store: LockoutStore) -> None:
    """is_trusted answers per (identity, address) and counts nothing, however often it is asked."""
    await store.begin_attempt(identity="alice", client_ip="192.0.2.1", now=T0)
    await store.record_success(identity="alice", client_ip="192.0.2.1", now=T0)

    answers = [
        await store.is_trusted(identity=name, client_ip=ip, now=T0 + 1)
        for name, ip in [("ALICE", "192.0.2.1"), ("alice", "192.0.2.2"), ("bob", "192.0.2.1")]
    ]
    for _ in range(20):
        await store.is_trusted(identity="alice", client_ip="192.0.2.2", now=T0 + 1)
    status = await store.status("alice", T0 + 1)

    assert answers == [True, False, False]
    assert status.failures == 0
