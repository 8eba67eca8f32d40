"""Engine configuration and the UTC timestamp type, on real PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from keystore_fakes import StatementLog
from sqlalchemy import Dialect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from keystore import Base, UTCDateTime, create_engine
from keystore.db import SQLITE_BEGIN_IMMEDIATE
from keystore.models import RootKeyRow
from keystore.store import RootKeyStore


def _row(created_at: datetime) -> RootKeyRow:
    return RootKeyRow(
        id="k1",
        slot=None,
        created_at=created_at,
        expires_at=created_at + timedelta(hours=24),
        kek_id="00000000",
        ciphertext=b"\x00" * 72,
    )


async def test_timestamps_come_back_aware_and_in_utc(engine: AsyncEngine) -> None:
    """A time written in any zone reads back as the same instant, timezone-aware, in UTC."""
    written = datetime(2025, 1, 6, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    store = RootKeyStore(engine)

    await store.insert(_row(written))
    read = await store.get("k1")

    assert read is not None
    assert read.created_at == written
    assert read.created_at.tzinfo == UTC
    assert read.created_at.hour == 12 and read.created_at.microsecond == 123456


@pytest.mark.parametrize("dialect", [postgresql.asyncpg.dialect, sqlite.aiosqlite.dialect])
def test_naive_timestamps_are_refused_on_the_way_in(dialect: type[Dialect]) -> None:
    """A naive datetime cannot be written: its zone would be a guess."""
    column_type = UTCDateTime()

    with pytest.raises(ValueError, match="naive"):
        column_type.process_bind_param(datetime(2025, 1, 6), dialect())


def test_sqlite_keeps_naive_utc_and_reads_it_back_as_utc() -> None:
    """On SQLite the stored value is naive UTC text; reading it back attaches UTC."""
    column_type, dialect = UTCDateTime(), sqlite.aiosqlite.dialect()
    local = datetime(2025, 1, 6, 1, 0, tzinfo=timezone(timedelta(hours=-5)))

    stored = column_type.process_bind_param(local, dialect)
    loaded = column_type.process_result_value(stored, dialect)

    assert stored == datetime(2025, 1, 6, 6, 0)
    assert loaded == datetime(2025, 1, 6, 6, 0, tzinfo=UTC)


async def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(
    sqlite_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """Every SQLite connection has WAL journaling, enforced foreign keys and waits when busy."""
    engine = make_engine(sqlite_url)

    async with engine.connect() as conn:
        journal = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
        foreign_keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar()
        busy_timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()

    assert journal == "wal"
    assert foreign_keys == 1
    assert busy_timeout == 5000


async def test_sqlite_transactions_begin_explicitly_and_immediate_on_request(
    sqlite_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """SQLAlchemy emits BEGIN itself (so reads and DDL are transactional); IMMEDIATE on request."""
    engine = make_engine(sqlite_url)
    log = StatementLog(engine)

    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    async with engine.connect() as conn:
        await conn.execution_options(**{SQLITE_BEGIN_IMMEDIATE: True})
        async with conn.begin():
            await conn.execute(text("SELECT 2"))

    log.close()
    assert log.statements == ["BEGIN", "SELECT 1", "BEGIN IMMEDIATE", "SELECT 2"]


async def test_postgres_engine_skips_pre_ping_and_bounds_its_pool(
    pg_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """The PostgreSQL pool has no per-checkout ping, a fixed size and recycles connections."""
    engine = make_engine(pg_url)

    pool = engine.sync_engine.pool

    assert engine.dialect.driver == "asyncpg"
    assert isinstance(pool, AsyncAdaptedQueuePool)
    assert pool._pre_ping is False
    assert pool.size() == 10
    assert pool._recycle == 1800


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgres://u@h/db", "postgresql+asyncpg"),
        ("postgresql://u@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite"),
    ],
)
async def test_plain_urls_get_the_async_driver(url: str, driver: str) -> None:
    """URLs without a driver name get the async one, as operators tend to write them."""
    engine = create_engine(url)

    drivername = engine.url.drivername

    await engine.dispose()
    assert drivername == driver


def test_other_databases_are_refused() -> None:
    """Only PostgreSQL and SQLite are supported, and anything else says so."""
    with pytest.raises(ValueError, match="unsupported database"):
        create_engine("mysql+aiomysql://u@h/db")


def test_models_share_one_metadata_with_stable_constraint_names() -> None:
    """root_keys lives on Base.metadata with conventional names Alembic can refer to."""
    table = Base.metadata.tables["root_keys"]

    names = {constraint.name for constraint in table.constraints} | {
        index.name for index in table.indexes
    }

    assert table is RootKeyRow.__table__
    assert names == {"pk_root_keys", "uq_root_keys_slot", "ix_root_keys_expires_at"}


async def test_a_connection_cut_after_the_work_is_done_does_not_turn_it_into_an_error(
    pg_engine: AsyncEngine,
) -> None:
    """Red team: under cuts, 41 requests answered 500: the server dropped the connection after
    the work, and returning it to the pool (a rollback) failed in a `finally`, replacing the
    result (or the 503 being raised) with its own error. The outcome stands; the pool discards
    the dead connection and the next run gets a fresh one."""
    import asyncio

    import asyncpg

    from keystore.db import run
    from tests.conftest import PG_ADMIN_DSN

    admin = await asyncpg.connect(PG_ADMIN_DSN)

    async def read_then_cut(conn: Any) -> int:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        await asyncio.sleep(0.3)  # the server is gone before the connection goes back
        return 1

    try:
        answer = await run(pg_engine, read_then_cut, write=False, retry=False)
        again = await run(pg_engine, lambda c: _scalar(c, "SELECT 2"), write=False, retry=False)
    finally:
        await admin.close()

    assert (answer, again) == (1, 2)


async def _scalar(conn: Any, sql: str) -> Any:
    return (await conn.execute(text(sql))).scalar_one()
