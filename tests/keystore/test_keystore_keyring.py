"""The keyring against real databases: rotation over time, racing replicas, encryption at rest."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from keystore_fakes import START, FakeClock, StatementLog
from pymacaroons.utils import generate_derived_key
from sqlalchemy import BigInteger, String, text
from sqlalchemy.ext.asyncio import AsyncEngine

from keystore import (
    KeyEncryptionKey,
    KeyInfo,
    Keyring,
    RootKey,
    RotationPolicy,
    SecretBytes,
    StoreUnavailable,
    UTCDateTime,
)
from keystore.errors import KeyDecryptionError
from keystore.models import RootKeyRow
from keystore.store import RootKeyStore
from tokensvc.storage.migrate import upgrade

HOUR = timedelta(hours=1)


async def _rows(engine: AsyncEngine) -> list[tuple[str, int | None, datetime, datetime]]:
    """(id, slot, created_at, expires_at) of every row, read with plain SQL."""
    query = text("SELECT id, slot, created_at, expires_at FROM root_keys").columns(
        id=String, slot=BigInteger, created_at=UTCDateTime, expires_at=UTCDateTime
    )
    async with engine.connect() as conn:
        return [(row[0], row[1], row[2], row[3]) for row in await conn.execute(query)]


async def test_current_makes_one_key_per_interval_and_reuses_it(
    keyring: Keyring, engine: AsyncEngine, clock: FakeClock
) -> None:
    """Within an interval current() returns one key, from memory after the first call."""
    first = await keyring.current()
    log = StatementLog(engine)

    clock.advance(timedelta(minutes=59, seconds=59))
    later = await keyring.current()

    log.close()
    assert later is first
    assert log.statements == []
    assert [(row[0], row[1]) for row in await _rows(engine)] == [
        (first.id, keyring.policy.slot(START))
    ]


async def test_current_moves_to_a_new_key_at_the_interval_boundary(
    keyring: Keyring, clock: FakeClock
) -> None:
    """The first call in a new interval makes that interval's key."""
    first = await keyring.current()

    clock.advance(HOUR)
    second = await keyring.current()

    assert second.id != first.id
    assert second.created_at == START + HOUR
    assert second.expires_at == START + HOUR + timedelta(hours=24)


async def test_current_key_backs_the_longest_token_ttl_at_any_point_of_the_interval(
    keyring: Keyring, clock: FakeClock
) -> None:
    """Made late in an interval or used late in it, the current key outlives max_token_ttl."""
    clock.set(START + timedelta(minutes=59, seconds=59, microseconds=999_999))
    made_late = await keyring.current()
    margin_late = made_late.expires_at - clock()

    clock.set(START + HOUR + timedelta(minutes=1))
    made_early = await keyring.current()
    clock.set(START + 2 * HOUR - timedelta(microseconds=1))
    margin_at_end = (await keyring.current()).expires_at - clock()

    assert margin_late >= keyring.policy.max_token_ttl
    assert margin_at_end >= keyring.policy.max_token_ttl
    assert made_early.id != made_late.id


async def test_forty_eight_hours_of_maintenance(
    keyring: Keyring, engine: AsyncEngine, clock: FakeClock
) -> None:
    """Over 48 simulated hours: 48 scheduled keys, none older than 24 h kept, expired ones gone."""
    policy = keyring.policy
    current_ids: list[str] = []
    ever_stored: dict[str, tuple[int | None, datetime]] = {}
    issued: dict[str, RootKey] = {}
    problems: list[str] = []

    for step in range(48 * 6):
        clock.set(START + step * timedelta(minutes=10))
        now = clock()
        await keyring.maintain()
        key = await keyring.current()
        rows = await _rows(engine)
        stored_ids = {row[0] for row in rows}
        for key_id, slot, created_at, expires_at in rows:
            ever_stored.setdefault(key_id, (slot, created_at))
            if not (now - created_at < policy.lifetime and expires_at > now):
                problems.append(f"{now}: key {key_id} made {created_at} still stored")
        if not policy.slot_start(now) <= key.created_at < policy.slot_end(now):
            problems.append(f"{now}: current key made {key.created_at} outside the interval")
        if key.expires_at - now < policy.max_token_ttl:
            problems.append(f"{now}: current key expires too soon ({key.expires_at})")
        if not current_ids or current_ids[-1] != key.id:
            current_ids.append(key.id)
        issued[key.id] = key
        for old in issued.values():
            if old.expires_at <= now and (
                old.id in stored_ids
                or keyring.get_cached(old.id) is not None
                or await keyring.get(old.id) is not None
            ):
                problems.append(f"{now}: expired key {old.id} still reachable")

    assert problems == []
    assert len(current_ids) == len(set(current_ids)) == 48
    assert len(ever_stored) == 48
    assert sorted(slot for slot, _ in ever_stored.values() if slot is not None) == list(
        range(policy.slot(START), policy.slot(START) + 48)
    )
    assert {key_id for key_id, _, _, _ in await _rows(engine)} == set(current_ids[-24:])


async def _race(
    rings: list[Keyring], clock: FakeClock, rounds: int, step: timedelta
) -> list[set[str]]:
    seen = []
    for _ in range(rounds):
        keys = await asyncio.gather(*(ring.current() for ring in rings))
        seen.append({key.id for key in keys})
        clock.advance(step)
    return seen


async def test_three_replicas_racing_make_exactly_one_key_per_interval(
    db_url: str,
    make_engine: Callable[[str], AsyncEngine],
    kek: KeyEncryptionKey,
    clock: FakeClock,
) -> None:
    """Three keyrings on three engines calling current() at once agree on one key per interval."""
    engines = [make_engine(db_url) for _ in range(3)]

    await upgrade(engines[0])
    rings = [Keyring(engine, kek=kek, clock=clock) for engine in engines]

    # 12 intervals, each visited at 4 points in time; then cold keyrings join the last interval.
    seen = await _race(rings, clock, rounds=48, step=timedelta(minutes=15))
    clock.set(START + 11 * HOUR + timedelta(minutes=30))
    cold = [Keyring(engine, kek=kek, clock=clock) for engine in engines]
    seen_cold = await _race(cold, clock, rounds=1, step=HOUR)

    assert all(len(ids) == 1 for ids in seen + seen_cold)
    assert len({next(iter(ids)) for ids in seen}) == 12
    assert seen_cold == [seen[-1]]
    rows = await _rows(engines[0])
    assert len(rows) == 12
    assert sorted(row[1] for row in rows if row[1] is not None) == list(
        range(rings[0].policy.slot(START), rings[0].policy.slot(START) + 12)
    )


async def test_replicas_forced_to_race_all_insert_and_one_key_wins(
    pg_url: str,
    make_engine: Callable[[str], AsyncEngine],
    kek: KeyEncryptionKey,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When all three replicas see no key before any inserts, all insert and still agree on one."""
    engines = [make_engine(pg_url) for _ in range(3)]

    await upgrade(engines[0])
    rings = [Keyring(engine, kek=kek, clock=clock) for engine in engines]
    logs = [StatementLog(engine) for engine in engines]
    barrier = asyncio.Barrier(3)
    original = RootKeyStore.newest_since

    async def newest_since_then_wait(
        store: RootKeyStore, created_at: datetime
    ) -> RootKeyRow | None:
        row = await original(store, created_at)
        await asyncio.wait_for(barrier.wait(), timeout=10)
        return row

    monkeypatch.setattr(RootKeyStore, "newest_since", newest_since_then_wait)

    keys = await asyncio.gather(*(ring.current() for ring in rings))

    for log in logs:
        log.close()
    assert len({key.id for key in keys}) == 1
    assert [log.count("INSERT") for log in logs] == [1, 1, 1]
    assert len(await _rows(engines[0])) == 1
    assert len({key.secret.reveal() for key in keys}) == 1


async def test_rotate_makes_a_manual_key_that_becomes_current(
    keyring: Keyring, engine: AsyncEngine, clock: FakeClock
) -> None:
    """rotate() stores a key without a slot; it is current until the next interval's key."""
    scheduled = await keyring.current()
    clock.advance(timedelta(minutes=20))

    rotated = await keyring.rotate()
    current_after_rotate = await keyring.current()
    infos = await keyring.list()
    clock.advance(HOUR)
    next_interval = await keyring.current()

    assert current_after_rotate is rotated
    assert rotated.id != scheduled.id
    assert rotated.created_at == START + timedelta(minutes=20)
    assert [(info.id, info.current) for info in infos] == [
        (rotated.id, True),
        (scheduled.id, False),
    ]
    assert {row[0]: row[1] for row in await _rows(engine)}[rotated.id] is None
    assert next_interval.id not in {rotated.id, scheduled.id}


async def test_other_replicas_see_a_manual_rotation_as_current_once_they_reload(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """A replica without a cached current key picks the rotated key, the newest of the interval."""
    admin = Keyring(engine, kek=kek, clock=clock)
    await admin.current()
    rotated = await admin.rotate()

    replica_current = await Keyring(engine, kek=kek, clock=clock).current()

    assert replica_current.id == rotated.id
    assert replica_current.secret == rotated.secret


async def test_a_replica_mints_with_another_replicas_rotation_after_its_next_round(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """Red team (helper-64): a replica with a cached current key kept minting on it after
    another replica rotated, until its interval ended (an hour). Its maintenance round, a
    minute away, now adopts the rotated key."""
    replica = Keyring(engine, kek=kek, clock=clock)
    before = await replica.current()
    rotated = await Keyring(engine, kek=kek, clock=clock).rotate()

    await replica.maintain()

    assert before.id != rotated.id
    assert (await replica.current()).id == rotated.id


@pytest.mark.parametrize("heard", ["before the round", "during the round"])
async def test_a_revoked_key_is_never_taken_on_again(
    engine: AsyncEngine,
    kek: KeyEncryptionKey,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    heard: str,
) -> None:
    """Red team (helper-68), review (helper-72): replica B's round read the newest key while
    replica A revoked it; B heard of the revocation (forget) during the read, or before the
    round while the row was still there, and minted with the revoked key and put it back in
    its cache, where its verification found it. B keeps its own key instead, and refuses the
    revoked one by id."""
    replica = Keyring(engine, kek=kek, clock=clock)
    before = await replica.current()
    other = Keyring(engine, kek=kek, clock=clock)
    rotated = await other.rotate()
    store = replica._store
    read = store.newest_since

    async def revoked_meanwhile(start: Any) -> Any:
        row = await read(start)
        replica.forget(rotated.id)  # the word of it, as the revocation feed brings it
        return row

    if heard == "before the round":
        replica.forget(rotated.id)  # the record committed, the row not deleted yet
    else:
        monkeypatch.setattr(store, "newest_since", revoked_meanwhile)
    await replica.maintain()
    monkeypatch.undo()

    assert (await replica.current()).id == before.id
    assert replica.get_cached(rotated.id) is None
    assert await replica.get(rotated.id) is None


async def test_a_revocation_rolled_back_leaves_the_key_usable(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """The key's deletion runs in its revocation's transaction; if that is rolled back (the
    revoker's check failed in it, the commit failed), this process still has the key."""
    keyring = Keyring(engine, kek=kek, clock=clock)
    key = await keyring.current()

    async def refused_in_the_transaction() -> None:
        async with engine.begin() as conn:
            assert await keyring.revoke(key.id, conn=conn)
            raise RuntimeError("the revoker's check failed")

    with pytest.raises(RuntimeError):
        await refused_in_the_transaction()

    assert (await keyring.current()).id == key.id
    assert await Keyring(engine, kek=kek, clock=clock).get(key.id) is not None


async def test_list_shows_metadata_of_live_keys_newest_first(
    keyring: Keyring, clock: FakeClock
) -> None:
    """list() gives KeyInfo (no secrets) for unexpired keys, newest first, one marked current."""
    made = []
    for _ in range(3):
        made.append(await keyring.current())
        clock.advance(HOUR)
    clock.set(made[0].expires_at)

    infos = await keyring.list()

    assert all(isinstance(info, KeyInfo) for info in infos)
    assert [info.id for info in infos] == [made[2].id, made[1].id]
    assert [info.current for info in infos] == [False, False]
    assert not any(hasattr(info, "secret") for info in infos)


async def test_list_marks_the_key_current_would_return(keyring: Keyring) -> None:
    """The KeyInfo marked current is the key current() returns."""
    key = await keyring.current()

    infos = await keyring.list()

    assert [(info.id, info.current) for info in infos] == [(key.id, True)]
    assert infos[0].created_at == key.created_at and infos[0].expires_at == key.expires_at


async def test_purge_deletes_expired_keys_and_reports_how_many(
    keyring: Keyring, engine: AsyncEngine, clock: FakeClock
) -> None:
    """purge() removes keys whose expiry has passed from the database and from memory."""
    old = await keyring.current()
    clock.advance(HOUR)
    young = await keyring.current()
    clock.set(old.expires_at)

    deleted = await keyring.purge()

    assert deleted == 1
    assert [row[0] for row in await _rows(engine)] == [young.id]
    assert keyring.get_cached(old.id) is None
    assert keyring.get_cached(young.id) is young


async def test_get_finds_keys_made_elsewhere_and_decrypts_them(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """A key made by another replica is read, decrypted and cached on first use."""
    made = await Keyring(engine, kek=kek, clock=clock).current()
    ring = Keyring(engine, kek=kek, clock=clock)

    found = await ring.get(made.id)

    assert found is not None
    assert found == made
    assert found.secret == made.secret
    assert found.derived == made.derived
    assert ring.get_cached(made.id) is found


async def test_no_root_key_is_stored_in_clear_text(
    keyring: Keyring, engine: AsyncEngine, clock: FakeClock
) -> None:
    """No column of any row holds a root key or its derived key, raw or hex or base64."""
    keys = [await keyring.current(), await keyring.rotate()]
    clock.advance(HOUR)
    keys.append(await keyring.current())
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM root_keys"))).all()

    stored = [value for row in rows for value in row]

    assert len(rows) == 3
    for key in keys:
        for material in (key.secret.reveal(), key.derived):
            forms = [
                material,
                material.hex().encode(),
                material.hex().upper().encode(),
                base64.b64encode(material),
                base64.urlsafe_b64encode(material),
                base64.b64encode(material).rstrip(b"="),
            ]
            for value in stored:
                blob = value if isinstance(value, bytes) else str(value).encode()
                assert not any(form in blob for form in forms)


async def test_the_stored_kek_id_names_the_kek(
    keyring: Keyring, engine: AsyncEngine, kek: KeyEncryptionKey
) -> None:
    """Each row records the fingerprint of the KEK that sealed it."""
    await keyring.current()

    async with engine.connect() as conn:
        kek_ids = (await conn.execute(text("SELECT kek_id FROM root_keys"))).scalars().all()

    assert kek_ids == [kek.kek_id]


async def test_keys_do_not_decrypt_under_another_kek(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """A keyring configured with a different KEK refuses the keys, naming both KEK ids."""
    made = await Keyring(engine, kek=kek, clock=clock).current()
    other_kek = KeyEncryptionKey.generate()
    ring = Keyring(engine, kek=other_kek, clock=clock)

    with pytest.raises(KeyDecryptionError) as caught:
        await ring.get(made.id)

    assert kek.kek_id in str(caught.value) and other_kek.kek_id in str(caught.value)


async def test_keys_do_not_decrypt_under_another_kek_even_with_a_forged_kek_id(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """Rewriting kek_id to match a different KEK still fails: the AEAD check decides."""
    made = await Keyring(engine, kek=kek, clock=clock).current()
    other_kek = KeyEncryptionKey.generate()
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE root_keys SET kek_id = :k"), {"k": other_kek.kek_id})

    with pytest.raises(KeyDecryptionError):
        await Keyring(engine, kek=other_kek, clock=clock).get(made.id)


async def test_ciphertext_swapped_between_rows_does_not_decrypt(
    keyring: Keyring, engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """Moving one key's ciphertext onto another row fails, because the key id is the AAD."""
    first = await keyring.current()
    second = await keyring.rotate()
    async with engine.begin() as conn:
        rows = (await conn.execute(text("SELECT id, ciphertext FROM root_keys"))).all()
        blobs = dict(rows)
        for key_id, other_id in [(first.id, second.id), (second.id, first.id)]:
            await conn.execute(
                text("UPDATE root_keys SET ciphertext = :c WHERE id = :i"),
                {"c": blobs[other_id], "i": key_id},
            )
    fresh = Keyring(engine, kek=kek, clock=clock)

    with pytest.raises(KeyDecryptionError):
        await fresh.get(first.id)
    with pytest.raises(KeyDecryptionError):
        await fresh.get(second.id)


async def test_root_key_repr_never_shows_the_secret_or_derived_key(keyring: Keyring) -> None:
    """repr/str of a RootKey name its id and times, never its secret or derived key."""
    key = await keyring.current()

    shown = [repr(key), str(key), repr([key]), repr(key.secret), str(key.secret)]

    for text_shown in shown:
        for material in (key.secret.reveal(), key.derived):
            assert material.hex() not in text_shown
            assert str(material) not in text_shown
            assert base64.b64encode(material).decode() not in text_shown
    assert key.id in repr(key)


def test_derived_key_is_the_libmacaroons_derivation_of_the_secret() -> None:
    """derived = HMAC-SHA256(key="macaroons-key-generator", msg=secret), as pymacaroons computes."""
    secret = bytes(range(32))

    key = RootKey(id="k", secret=SecretBytes(secret), created_at=START, expires_at=START + HOUR)

    assert key.derived == hmac.new(b"macaroons-key-generator", secret, hashlib.sha256).digest()
    assert key.derived == generate_derived_key(secret)


def test_root_keys_compare_by_id_and_times_not_by_secret() -> None:
    """Two RootKey values with the same id and times are equal and hash alike."""
    a = RootKey(id="k", secret=SecretBytes(b"a" * 32), created_at=START, expires_at=START + HOUR)
    b = RootKey(id="k", secret=SecretBytes(b"a" * 32), created_at=START, expires_at=START + HOUR)

    same = {a, b}

    assert a == b
    assert len(same) == 1


async def test_a_naive_clock_is_refused(engine: AsyncEngine, kek: KeyEncryptionKey) -> None:
    """A clock returning naive datetimes is a configuration error, reported at first use."""
    ring = Keyring(engine, kek=kek, clock=lambda: datetime(2025, 1, 6))

    with pytest.raises(ValueError, match="timezone-aware"):
        await ring.current()


async def test_a_custom_policy_rotates_on_its_own_schedule(
    engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """With a 2 h lifetime and 15 min interval, keys change every 15 min and live 2 h."""
    policy = RotationPolicy(lifetime=2 * HOUR, generate_interval=timedelta(minutes=15))
    ring = Keyring(engine, kek=kek, policy=policy, clock=clock)

    ids = []
    for _ in range(8):
        ids.append((await ring.current()).id)
        clock.advance(timedelta(minutes=15))
    await ring.maintain()
    live = await ring.list()

    # maintain() at 2 h made the ninth key and purged the first, which lived exactly 2 h.
    assert len(set(ids)) == 8
    assert [info.id for info in live][1:] == ids[:0:-1]
    assert live[0].id not in ids and live[0].current
    assert all(info.expires_at - info.created_at == 2 * HOUR for info in live)
    assert policy.max_token_ttl == timedelta(minutes=105)


async def test_an_unreachable_database_is_store_unavailable(
    make_engine: Callable[[str], AsyncEngine], kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    """Without a database, current(), get() and maintain() raise StoreUnavailable."""
    ring = Keyring(
        make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none"), kek=kek, clock=clock
    )
    calls: list[Callable[[], Awaitable[object]]] = [
        ring.current,
        lambda: ring.get("0123456789abcdef"),
        ring.maintain,
        ring.rotate,
    ]

    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call()
