"""RootKeyStore: the only code that issues SQL against root_keys."""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, Final, TypeVar

from sqlalchemy import Table, delete, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystore.errors import StoreUnavailable
from keystore.models import RootKeyRow

_T = TypeVar("_T")

_TABLE: Final[Table] = RootKeyRow.__table__  # type: ignore[assignment]

# Newest first; at equal creation times a manual rotation (slot NULL) outranks the scheduled key,
# so a rotation made in the same instant as the interval's key still becomes current.
_NEWEST_FIRST: Final = (
    _TABLE.c.created_at.desc(),
    _TABLE.c.slot.is_(None).desc(),
    _TABLE.c.id.desc(),
)

# PostgreSQL SQLSTATE classes/codes meaning "the server cannot serve us now", not "bad SQL":
# 08 connection exception, 53 insufficient resources, 57P01-03 shutdown / cannot connect now.
_PG_UNAVAILABLE_CLASSES: Final = frozenset({"08", "53"})
_PG_UNAVAILABLE_CODES: Final = frozenset({"57P01", "57P02", "57P03"})
# SQLite primary result codes for the same: BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL.
_SQLITE_UNAVAILABLE_CODES: Final = frozenset({5, 6, 10, 13, 14, 15})


class RootKeyStore:
    """Reads and writes root_keys rows; connection failures surface as `StoreUnavailable`.

    Rows go in and out as detached `RootKeyRow` instances (no session): the store is a thin,
    explicit layer of SQL, and the keyring decides what the rows mean.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert(self, row: RootKeyRow) -> None:
        """Insert a key (a manual rotation); not retried, since the insert is not idempotent."""

        async def run(conn: AsyncConnection) -> None:
            await conn.execute(insert(_TABLE).values(_values(row)))

        await self._run(run, write=True, retry=False)

    async def insert_for_slot(self, row: RootKeyRow) -> bool:
        """Insert a scheduled key unless its slot already has one; True if this row went in.

        INSERT … ON CONFLICT (slot) DO NOTHING is atomic in the database, so any number of
        processes racing for the same slot leave exactly one row and none of them fails.
        """
        if row.slot is None:
            raise ValueError("insert_for_slot needs a row with a slot")

        async def run(conn: AsyncConnection) -> bool:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                stmt: Any = postgresql.insert(_TABLE).values(_values(row))
            elif dialect == "sqlite":
                stmt = sqlite.insert(_TABLE).values(_values(row))
            else:  # pragma: no cover - create_engine only makes the two above
                raise ValueError(f"unsupported dialect {dialect!r}")
            result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=[_TABLE.c.slot]))
            return bool(result.rowcount == 1)

        return await self._run(run, write=True)

    async def get(self, key_id: str) -> RootKeyRow | None:
        """The row with this id, or None."""

        async def run(conn: AsyncConnection) -> RootKeyRow | None:
            result = await conn.execute(select(_TABLE).where(_TABLE.c.id == key_id))
            found = result.mappings().first()
            return None if found is None else _row(found)

        return await self._run(run, write=False)

    async def newest_since(self, created_at: datetime) -> RootKeyRow | None:
        """The most recently created row created at or after `created_at`, or None."""

        async def run(conn: AsyncConnection) -> RootKeyRow | None:
            result = await conn.execute(
                select(_TABLE)
                .where(_TABLE.c.created_at >= created_at)
                .order_by(*_NEWEST_FIRST)
                .limit(1)
            )
            found = result.mappings().first()
            return None if found is None else _row(found)

        return await self._run(run, write=False)

    async def delete(self, key_id: str) -> bool:
        """Delete the row with this id (a revoked key); whether there was one."""

        async def run(conn: AsyncConnection) -> bool:
            result = await conn.execute(delete(_TABLE).where(_TABLE.c.id == key_id))
            return bool(result.rowcount)

        return await self._run(run, write=True)

    async def delete_expired(self, now: datetime) -> int:
        """Delete every row whose `expires_at` is at or before `now`; how many went."""

        async def run(conn: AsyncConnection) -> int:
            result = await conn.execute(delete(_TABLE).where(_TABLE.c.expires_at <= now))
            return int(result.rowcount)

        return await self._run(run, write=True)

    async def list(self) -> builtins.list[RootKeyRow]:
        """Every row, newest first."""

        async def run(conn: AsyncConnection) -> builtins.list[RootKeyRow]:
            result = await conn.execute(select(_TABLE).order_by(*_NEWEST_FIRST))
            return [_row(found) for found in result.mappings()]

        return await self._run(run, write=False)

    async def _run(
        self, op: Callable[[AsyncConnection], Awaitable[_T]], *, write: bool, retry: bool = True
    ) -> _T:
        # A pooled connection the server has closed meanwhile fails its first statement; SQLAlchemy
        # then invalidates the pool, so one retry runs on a fresh connection. That is what
        # pool_pre_ping would buy, without paying a round trip on every checkout.
        attempts = 2 if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                if write:
                    async with self._engine.begin() as conn:
                        return await op(conn)
                async with self._engine.connect() as conn:
                    return await op(conn)
            except sa_exc.DBAPIError as exc:
                if exc.connection_invalidated and attempt < attempts:
                    continue
                if is_unavailable(exc):
                    raise StoreUnavailable(_describe(exc)) from exc
                raise
            except (OSError, sa_exc.TimeoutError, sa_exc.DisconnectionError) as exc:
                raise StoreUnavailable(_describe(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached or cannot serve now (vs. a bug)."""
    if isinstance(exc, OSError | sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return True
        return any(_cause_is_unavailable(cause) for cause in _causes(exc.orig))
    return False


def _cause_is_unavailable(cause: BaseException) -> bool:
    if isinstance(cause, OSError):
        return True
    sqlstate = getattr(cause, "sqlstate", None)
    if isinstance(sqlstate, str) and (
        sqlstate[:2] in _PG_UNAVAILABLE_CLASSES or sqlstate in _PG_UNAVAILABLE_CODES
    ):
        return True
    code = getattr(cause, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _SQLITE_UNAVAILABLE_CODES


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _describe(exc: BaseException) -> str:
    # The class name says what failed; the message of a driver error may echo SQL parameters.
    root = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    return f"root key database unavailable ({type(root).__name__})"


def _values(row: RootKeyRow) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in _TABLE.columns}


def _row(mapping: RowMapping) -> RootKeyRow:
    return RootKeyRow(**{column.key: mapping[column] for column in _TABLE.columns})
