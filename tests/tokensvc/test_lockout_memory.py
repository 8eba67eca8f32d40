"""What only the in-memory lockout store must do: stay bounded."""

from __future__ import annotations

import contextlib

from tokensvc.accounts.lockout import LockoutPolicy, MemoryLockoutStore
from tokensvc.errors import LockedOut

T0 = 1_763_760_000.0


async def test_memory_is_bounded_under_a_flood_of_identities() -> None:
    """10,000 distinct identities from distinct IPs never hold more than max_entries counters."""
    store = MemoryLockoutStore(policy=LockoutPolicy(), max_entries=500)

    for n in range(10_000):
        await store.begin_attempt(identity=f"user{n}", client_ip=f"10.{n >> 8}.{n & 255}.1", now=T0)

    assert len(store) <= 500


async def test_expired_counters_are_evicted_first() -> None:
    """When full, expired counters go before live ones, so live locks survive a flood."""
    store = MemoryLockoutStore(policy=LockoutPolicy(), max_entries=100)
    for n in range(10):
        await store.begin_attempt(identity="alice", client_ip=f"198.51.100.{n}", now=T0 + 3600)
    for n in range(30):
        await store.begin_attempt(identity=f"old{n}", client_ip="203.0.113.1", now=T0)

    for n in range(20):
        await store.begin_attempt(identity=f"new{n}", client_ip="203.0.113.2", now=T0 + 3600)

    assert (await store.status("alice", T0 + 3600)).locked


async def test_a_spray_of_one_off_names_cannot_evict_an_attacked_identity() -> None:
    """Red team: once the table was full, the oldest live counters were evicted, the attacked
    identity's among them: 36,000 wrong passwords for junk names from fresh addresses reset a
    locked identity to 0 failures and a fresh set of free guesses. The fewest failures go first."""
    store = MemoryLockoutStore(policy=LockoutPolicy(), max_entries=300)
    now = T0
    for n in range(15):  # dave's identity-wide counter, over 15 addresses, until it locks
        now += 1
        with contextlib.suppress(LockedOut):
            await store.begin_attempt(identity="dave", client_ip=f"198.51.100.{n}", now=now)
    before = await store.status("dave", now)
    assert before.failures >= 5 and before.locked

    for n in range(2_000):  # three counters each (address, name+address, name), one failure
        await store.begin_attempt(
            identity=f"junk{n}", client_ip=f"10.{n >> 8}.{n & 255}.7", now=now + 1
        )

    after = await store.status("dave", now + 1)
    assert len(store) <= 300
    assert (after.failures, after.locked) == (before.failures, True)


async def test_a_spray_matching_the_victims_failures_cannot_evict_it_either() -> None:
    """Red team: junk counters with as many failures as the victim's, made after it, evicted it
    first among equals (the least recently failed went first). The most recent go first now."""
    store = MemoryLockoutStore(policy=LockoutPolicy(), max_entries=300)
    now = T0
    threshold = LockoutPolicy().identity_threshold
    for n in range(threshold):  # exactly at the threshold: locked, as the spray's will be
        now += 1
        await store.begin_attempt(identity="dave", client_ip=f"198.51.100.{n}", now=now)
    before = await store.status("dave", now)
    assert before.locked and before.failures == threshold

    for n in range(400):  # more identity counters with the victim's failures than fit
        for k in range(threshold):
            with contextlib.suppress(LockedOut):
                await store.begin_attempt(
                    identity=f"junk{n}", client_ip=f"2001:db8:{n:x}:{k:x}::1", now=now + 0.5
                )

    after = await store.status("dave", now + 0.5)
    assert len(store) <= 300
    assert (after.failures, after.locked) == (before.failures, True)
