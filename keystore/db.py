"""The database plumbing every tokensvc table shares: declarative base, engine, UTC timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from sqlalchemy import DateTime, Dialect, MetaData, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so Alembic migrations can name (and later drop) what the models declare.
NAMING_CONVENTION: Final[dict[str, str]] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Execution option: on SQLite, open the transaction with BEGIN IMMEDIATE (take the write lock up
# front, waiting up to busy_timeout) instead of a deferred BEGIN. Used by migrations, so several
# processes starting at once serialise instead of failing with SQLITE_BUSY halfway.
SQLITE_BEGIN_IMMEDIATE: Final[str] = "tokensvc_sqlite_begin_immediate"

SQLITE_BUSY_TIMEOUT_MS: Final[int] = 5_000


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC on the Python side.

    PostgreSQL stores `timestamptz`; SQLite has no time zones and keeps naive UTC text, which sorts
    and compares correctly because every value is written in UTC. Naive datetimes are refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: give timezone-aware datetimes to the database")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """The declarative base of every tokensvc table (one MetaData, one migration history)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


def create_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """An async engine for PostgreSQL (asyncpg) or SQLite (aiosqlite), tuned for tokensvc.

    `postgres://`, `postgresql://` and `sqlite://` URLs get the async driver filled in. `options`
    override the defaults below and go straight to `create_async_engine`.
    """
    parsed = _with_async_driver(make_url(url))
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return create_async_engine(parsed, **(_postgres_defaults() | options))
    if backend == "sqlite":
        engine = create_async_engine(parsed, **options)
        _configure_sqlite(engine)
        return engine
    raise ValueError(
        f"unsupported database {backend!r}: use postgresql+asyncpg or sqlite+aiosqlite"
    )


def _with_async_driver(url: URL) -> URL:
    drivername = {
        "postgres": "postgresql+asyncpg",
        "postgresql": "postgresql+asyncpg",
        "sqlite": "sqlite+aiosqlite",
    }.get(url.drivername, url.drivername)
    return url.set(drivername=drivername)


def _postgres_defaults() -> dict[str, Any]:
    return {
        # Pre-ping costs a round trip on every checkout; instead the store retries an operation
        # once when its connection turns out to be dead (the pool is then invalidated), and
        # recycling keeps connections younger than typical server/proxy idle timeouts.
        "pool_pre_ping": False,
        "pool_size": 10,
        "max_overflow": 10,
        "pool_timeout": 10,
        "pool_recycle": 1800,
        "pool_use_lifo": True,
        "connect_args": {
            "timeout": 5,  # connect timeout, seconds
            "command_timeout": 30,
            "server_settings": {"application_name": "tokensvc"},
        },
    }


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine
    memory = sync_engine.url.database in (None, "", ":memory:")

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Hand transaction control to SQLAlchemy (see _on_begin): the sqlite3 module's legacy
        # mode would not BEGIN before SELECT or DDL, so reads and migrations were not atomic.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # First: switching a new database to WAL needs its lock, and connections opening it
            # at the same moment (several processes migrating) must wait for it, not fail.
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(SQLITE_BEGIN_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
