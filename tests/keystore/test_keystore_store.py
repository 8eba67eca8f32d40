"""RootKeyStore against real PostgreSQL and SQLite: SQL semantics and failure translation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from keystore_fakes import START
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from keystore import StoreUnavailable
from keystore.db import SQLITE_BEGIN_IMMEDIATE
from keystore.models import RootKeyRow
from keystore.store import RootKeyStore
from tokensvc.storage.migrate import upgrade


async def _aiosqlite_threads_finished() -> None:
    # aiosqlite stops the worker thread of a failed connect without awaiting it; let it finish
    # while this test's event loop still runs, or it reports "Event loop is closed" later.
    for _ in range(200):
        if not any(
            thread.name.endswith("(_connection_worker_thread)") for thread in threading.enumerate()
        ):
            return
        await asyncio.sleep(0.01)


def _row(key_id: str, *, slot: int | None, created_at: datetime = START) -> RootKeyRow:
    return RootKeyRow(
        id=key_id,
        slot=slot,
        created_at=created_at,
        expires_at=created_at + timedelta(hours=24),
        kek_id="0badc0de",
        ciphertext=key_id.encode() * 3,
    )


async def test_insert_then_get_returns_every_column(engine: AsyncEngine) -> None:
    """What goes in comes back unchanged, as a detached row."""
    store = RootKeyStore(engine)

    await store.insert(_row("a", slot=7))
    row = await store.get("a")

    assert row is not None
    assert (row.id, row.slot, row.created_at, row.expires_at, row.kek_id, row.ciphertext) == (
        "a",
        7,
        START,
        START + timedelta(hours=24),
        "0badc0de",
        b"aaa",
    )


async def test_get_of_an_unknown_id_is_none(engine: AsyncEngine) -> None:
    """An id with no row gives None, not an error."""
    store = RootKeyStore(engine)

    row = await store.get("nope")

    assert row is None


async def test_insert_for_slot_leaves_exactly_one_row_per_slot(engine: AsyncEngine) -> None:
    """The first insert for a slot wins; later ones are no-ops that report False."""
    store = RootKeyStore(engine)

    first = await store.insert_for_slot(_row("a", slot=1))
    second = await store.insert_for_slot(_row("b", slot=1))
    other_slot = await store.insert_for_slot(_row("c", slot=2))

    assert (first, second, other_slot) == (True, False, True)
    assert {row.id for row in await store.list()} == {"a", "c"}


async def test_concurrent_inserts_for_one_slot_all_succeed_and_one_wins(
    engine: AsyncEngine,
) -> None:
    """Ten concurrent inserts for one slot raise nothing and leave a single row."""
    store = RootKeyStore(engine)

    results = await asyncio.gather(
        *(store.insert_for_slot(_row(f"k{i}", slot=5)) for i in range(10))
    )

    assert results.count(True) == 1
    assert len(await store.list()) == 1


async def test_manual_keys_without_a_slot_do_not_conflict(engine: AsyncEngine) -> None:
    """Any number of rows may have a NULL slot (manual rotations)."""
    store = RootKeyStore(engine)

    await store.insert(_row("a", slot=None))
    await store.insert(_row("b", slot=None))

    assert {row.slot for row in await store.list()} == {None}
    assert len(await store.list()) == 2


async def test_insert_for_slot_needs_a_slot(engine: AsyncEngine) -> None:
    """A scheduled insert without a slot is a programming error."""
    store = RootKeyStore(engine)

    with pytest.raises(ValueError, match="slot"):
        await store.insert_for_slot(_row("a", slot=None))


async def test_newest_since_picks_the_latest_row_at_or_after_the_bound(engine: AsyncEngine) -> None:
    """Rows before the bound are ignored; of the rest the most recently created wins."""
    store = RootKeyStore(engine)
    for minutes, key_id in [(-30, "old"), (0, "edge"), (20, "mid"), (40, "new")]:
        await store.insert(_row(key_id, slot=None, created_at=START + timedelta(minutes=minutes)))

    newest = await store.newest_since(START)
    at_edge = await store.newest_since(START + timedelta(minutes=40))
    none = await store.newest_since(START + timedelta(minutes=41))

    assert newest is not None and newest.id == "new"
    assert at_edge is not None and at_edge.id == "new"
    assert none is None


async def test_at_equal_creation_times_a_manual_key_counts_as_newer(engine: AsyncEngine) -> None:
    """A rotation made in the same instant as the scheduled key is the newest of the two."""
    store = RootKeyStore(engine)
    await store.insert(_row("zzz-scheduled", slot=1))
    await store.insert(_row("aaa-manual", slot=None))

    newest = await store.newest_since(START)
    listed = await store.list()

    assert newest is not None and newest.id == "aaa-manual"
    assert [row.id for row in listed] == ["aaa-manual", "zzz-scheduled"]


async def test_list_returns_every_row_newest_first(engine: AsyncEngine) -> None:
    """list() is ordered by creation time, newest first."""
    store = RootKeyStore(engine)
    for minutes, key_id in [(10, "b"), (0, "a"), (20, "c")]:
        await store.insert(_row(key_id, slot=None, created_at=START + timedelta(minutes=minutes)))

    rows = await store.list()

    assert [row.id for row in rows] == ["c", "b", "a"]


async def test_delete_expired_removes_rows_expired_at_or_before_now(engine: AsyncEngine) -> None:
    """Rows whose expiry is at or before now go; the count says how many."""
    store = RootKeyStore(engine)
    for hours, key_id in [(0, "a"), (1, "b"), (2, "c")]:
        await store.insert(_row(key_id, slot=None, created_at=START + timedelta(hours=hours)))

    deleted = await store.delete_expired(START + timedelta(hours=25))

    assert deleted == 2
    assert [row.id for row in await store.list()] == ["c"]


async def test_unreachable_postgres_is_store_unavailable(
    make_engine: Callable[[str], AsyncEngine],
) -> None:
    """A refused connection surfaces as StoreUnavailable, for reads and writes alike."""
    store = RootKeyStore(make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none"))

    with pytest.raises(StoreUnavailable) as read_error:
        await store.get("a")
    with pytest.raises(StoreUnavailable):
        await store.insert(_row("a", slot=None))

    assert "password" not in str(read_error.value)


async def test_unopenable_sqlite_is_store_unavailable(
    tmp_path: Path, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """A SQLite file that cannot be opened surfaces as StoreUnavailable."""
    store = RootKeyStore(make_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'db.sqlite'}"))

    with pytest.raises(StoreUnavailable):
        await store.list()

    await _aiosqlite_threads_finished()


async def test_locked_sqlite_is_store_unavailable(
    sqlite_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """A SQLite write lock held past the busy timeout surfaces as StoreUnavailable."""
    blocker, engine = make_engine(sqlite_url), make_engine(sqlite_url)
    await upgrade(engine)
    async with engine.connect() as conn:
        # The pool hands this one connection back to the store: wait 50 ms, not 5 s.
        await conn.exec_driver_sql("PRAGMA busy_timeout=50")
    store = RootKeyStore(engine)

    async with blocker.connect() as holder:
        await holder.execution_options(**{SQLITE_BEGIN_IMMEDIATE: True})
        await holder.begin()
        with pytest.raises(StoreUnavailable):
            await store.insert(_row("a", slot=None))
        await holder.rollback()


async def test_a_missing_table_is_not_mistaken_for_an_outage(
    db_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """Querying an unmigrated database raises the database error, not StoreUnavailable."""
    store = RootKeyStore(make_engine(db_url))

    with pytest.raises(sa_exc.DBAPIError) as caught:
        await store.get("a")

    assert not isinstance(caught.value, StoreUnavailable)
    assert "root_keys" in str(caught.value)


async def test_pooled_connections_killed_by_the_server_are_replaced_transparently(
    pg_engine: AsyncEngine, pg_url: str
) -> None:
    """After the server terminates every pooled connection, the next read still succeeds."""
    store = RootKeyStore(pg_engine)
    await store.insert(_row("a", slot=None))
    await asyncio.gather(*(store.get("a") for _ in range(3)))
    database = make_url(pg_url).database
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            database,
        )
    finally:
        await admin.close()
    await asyncio.sleep(0.1)

    rows = [await store.get("a") for _ in range(3)]

    assert killed >= 1
    assert all(row is not None and row.id == "a" for row in rows)


async def test_server_side_errors_are_not_retried_or_translated(pg_engine: AsyncEngine) -> None:
    """A constraint violation is a bug to see, not an outage: it passes through untouched."""
    store = RootKeyStore(pg_engine)
    await store.insert(_row("a", slot=None))

    with pytest.raises(sa_exc.IntegrityError):
        await store.insert(_row("a", slot=None))

    async with pg_engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM root_keys"))).scalar()
    assert count == 1
