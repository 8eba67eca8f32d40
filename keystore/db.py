"""The database plumbing every tokensvc table shares: declarative base, engine, UTC timestamps."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, TypeVar

from sqlalchemy import DateTime, Dialect, MetaData, Table, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

from keystore.errors import StoreUnavailable, UnusableDatabaseUrl

_T = TypeVar("_T")

log = logging.getLogger("keystore.db")

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
    """The declarative base of keystore's tables (tokensvc's own: tokensvc.storage.base)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


def create_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """An async engine for PostgreSQL (asyncpg) or SQLite (aiosqlite), tuned for tokensvc.

    `postgres://`, `postgresql://` and `sqlite://` URLs get the async driver filled in. `options`
    override the defaults below and go straight to `create_async_engine`.
    """
    parsed = _with_async_driver(make_url(url))
    backend = parsed.get_backend_name()
    try:
        if backend == "postgresql":
            return create_async_engine(parsed, **(_postgres_defaults() | options))
        if backend == "sqlite":
            engine = create_async_engine(parsed, **options)
            _configure_sqlite(engine)
            return engine
    except sa_exc.ArgumentError:
        # Its message may quote the URL's values: it is not repeated (red team: a traceback).
        raise UnusableDatabaseUrl(
            f"the {backend} driver cannot use this database URL: check its port and its"
            " query options"
        ) from None
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


# ---- running database work ------------------------------------------------------------------------

# PostgreSQL SQLSTATE classes and codes that mean "the server cannot serve us now", not "bad SQL",
# when a statement fails on a connection that was already open: 08 connection exception, 53
# insufficient resources, 57P01-03 shutdown / cannot connect now, 57014 statement timeout, 25006
# read-only transaction (a standby after a failover), 55P03 lock not available, 40001/40P01
# serialization failure / deadlock (the work may succeed if asked again). Failures to *open* a
# connection need no list: whatever the server says then (55000 database not accepting
# connections, 28P01 a rotated password, 3D000 a dropped database …), it cannot serve us.
_PG_UNAVAILABLE_CLASSES: Final = frozenset({"08", "53"})
_PG_UNAVAILABLE_CODES: Final = frozenset(
    {"57P01", "57P02", "57P03", "57014", "25006", "55P03", "40001", "40P01"}
)
# SQLite primary result codes for the same: BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL.
_SQLITE_UNAVAILABLE_CODES: Final = frozenset({5, 6, 10, 13, 14, 15})


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc`, raised by a statement, means the database cannot serve now (vs. a bug)."""
    if isinstance(exc, OSError | TimeoutError | sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return True
        return any(_cause_is_unavailable(cause) for cause in _causes(exc.orig))
    return False


def _cause_is_unavailable(cause: BaseException) -> bool:
    if isinstance(cause, OSError | TimeoutError):
        return True
    sqlstate = getattr(cause, "sqlstate", None)
    if isinstance(sqlstate, str) and (
        sqlstate[:2] in _PG_UNAVAILABLE_CLASSES or sqlstate in _PG_UNAVAILABLE_CODES
    ):
        return True
    code = getattr(cause, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _SQLITE_UNAVAILABLE_CODES


#: Deadlock detected, serialization failure: the transaction was rolled back and may be run again.
_PG_CONFLICT_CODES: Final = frozenset({"40P01", "40001"})


def _is_conflict(exc: sa_exc.DBAPIError) -> bool:
    return any(
        getattr(cause, "sqlstate", None) in _PG_CONFLICT_CODES for cause in _causes(exc.orig)
    )


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _unavailable(what: str, exc: BaseException) -> StoreUnavailable:
    # The class name says what failed; the message of a driver error may echo SQL parameters.
    root = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    return StoreUnavailable(f"{what} is unavailable ({type(root).__name__})")


async def run(
    engine: AsyncEngine,
    op: Callable[[AsyncConnection], Awaitable[_T]],
    *,
    write: bool,
    retry: bool = True,
    what: str = "the database",
    options: dict[str, Any] | None = None,
    conflict_retries: int = 0,
) -> _T:
    """Run `op` on a connection of `engine` (in a transaction when writing).

    The one place database failures are classified: `StoreUnavailable` when the database cannot
    serve now (any failure to open a connection; a failure of a statement that `is_unavailable`
    recognises); anything else propagates as the bug it is. A pooled connection the server closed
    meanwhile fails its first statement and invalidates the pool, so with `retry` the work runs
    once more on a fresh connection (what pool_pre_ping would buy, without a round trip on every
    checkout); writes that are not idempotent pass retry=False. `options` are execution options
    set on the connection first.

    `conflict_retries`: how often a transaction PostgreSQL aborted as a deadlock or a
    serialization failure runs again, whatever `retry` says: the server rolled all of it back,
    so nothing of it committed. Only for work whose `op` does nothing but database work (it runs
    again from the start); two writes that lock the same rows in opposite orders then both
    succeed, one after the other, instead of one failing with 503.
    """
    attempts = 2 if retry else 1
    attempt = 0
    conflicts = 0
    while True:
        attempt += 1
        conn = engine.connect()
        try:
            await conn.start()
        except Exception as exc:  # no connection, whatever the reason: unavailable
            raise _unavailable(what, exc) from exc
        try:
            if options:
                await conn.execution_options(**options)
            if not write:
                return await op(conn)
            async with conn.begin():
                return await op(conn)
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated and attempt < attempts:
                continue
            if write and conflicts < conflict_retries and _is_conflict(exc):
                conflicts += 1
                attempt -= 1  # a conflict is not a lost connection
                continue
            if is_unavailable(exc):
                raise _unavailable(what, exc) from exc
            raise
        except (OSError, TimeoutError, sa_exc.TimeoutError, sa_exc.DisconnectionError) as exc:
            raise _unavailable(what, exc) from exc
        finally:
            await _close(conn)


async def _close(conn: AsyncConnection) -> None:
    """Return `conn` to the pool, whatever state the server left it in.

    Closing rolls back an open transaction; on a connection the server cut mid-operation that
    fails too, and from a `finally` its error would replace the one being raised (an Unavailable:
    a 503) or the result being returned (a committed write) with a 500 (red team: 41 of them
    under cuts). The outcome above stands; the pool discards the dead connection.
    """
    try:
        await conn.close()
    except Exception:  # the outcome above stands: see the docstring
        log.debug("closing a database connection failed", exc_info=True)


async def insert_unless_present(
    conn: AsyncConnection, table: Table, values: dict[str, Any]
) -> None:
    """INSERT `values` into `table` unless a row with the same `id` exists (the first writer wins:
    two replicas creating the same key at once both end up reading the one row)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).values(values)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).values(values)
    else:  # pragma: no cover - create_engine only makes the two above
        raise ValueError(f"unsupported dialect {dialect!r}")
    await conn.execute(stmt.on_conflict_do_nothing(index_elements=[table.c.id]))
