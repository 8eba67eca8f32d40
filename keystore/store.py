"""RootKeyStore: the only code that issues SQL against root_keys."""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, TypeVar

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystore.db import SQLITE_BEGIN_IMMEDIATE
from keystore.db import run as run_database
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


class RootKeyStore:
    """Reads and writes root_keys rows; connection failures surface as `StoreUnavailable`.

    Rows go in and out as detached `RootKeyRow` instances (no session): the store is a thin,
    explicit layer of SQL, and the keyring decides what the rows mean.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert(
        self, row: RootKeyRow, *, within: Callable[[AsyncConnection], Awaitable[None]] | None = None
    ) -> None:
        """Insert a key (a manual rotation); not retried, since the insert is not idempotent.
        `within` runs first in the same transaction (the caller's check and record of it)."""

        async def run(conn: AsyncConnection) -> None:
            if within is not None:
                await within(conn)
            await conn.execute(insert(_TABLE).values(_values(row)))

        # Read, then written: on SQLite the write lock is taken up front (no upgrade to fail).
        options = {SQLITE_BEGIN_IMMEDIATE: True} if within is not None else None
        await self._run(run, write=True, retry=False, options=options)

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

    async def delete(self, key_id: str, *, conn: AsyncConnection | None = None) -> bool:
        """Delete the row with this id (a revoked key), in `conn`'s transaction if given;
        whether there was one."""

        async def run(conn: AsyncConnection) -> bool:
            result = await conn.execute(delete(_TABLE).where(_TABLE.c.id == key_id))
            return bool(result.rowcount)

        if conn is not None:
            return await run(conn)
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
        self,
        op: Callable[[AsyncConnection], Awaitable[_T]],
        *,
        write: bool,
        retry: bool = True,
        options: dict[str, Any] | None = None,
    ) -> _T:
        return await run_database(
            self._engine,
            op,
            write=write,
            retry=retry,
            what="the root key database",
            options=options,
        )


def _values(row: RootKeyRow) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in _TABLE.columns}


def _row(mapping: RowMapping) -> RootKeyRow:
    return RootKeyRow(**{column.key: mapping[column] for column in _TABLE.columns})
