"""Running one unit of database work for the service's stores, with the failure handling they share."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystore.db import SQLITE_BEGIN_IMMEDIATE
from keystore.store import is_unavailable
from tokensvc.errors import Unavailable

_T = TypeVar("_T")


# SQLite has one writer at a time, and a connection waiting for the write lock retries with
# back-off in its driver thread, in no particular order: with dozens of writes queued (a burst of
# mints on the embedded database) one can keep losing until busy_timeout runs out, and its
# request fails with 503. Writes of this process take their turn here first, in arrival order, so
# only other processes (`--workers` on SQLite) are left to the busy timeout.
_sqlite_writers: weakref.WeakKeyDictionary[object, asyncio.Lock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def _write_turn(engine: AsyncEngine) -> AsyncIterator[None]:
    if engine.dialect.name != "sqlite":
        yield
        return
    lock = _sqlite_writers.get(engine.sync_engine)
    if lock is None:
        lock = _sqlite_writers[engine.sync_engine] = asyncio.Lock()
    async with lock:
        yield


async def run_db(
    engine: AsyncEngine,
    op: Callable[[AsyncConnection], Awaitable[_T]],
    *,
    write: bool,
    retry: bool = True,
    what: str = "the database",
) -> _T:
    """Run `op` on a connection (in a transaction when writing); Unavailable if the database is down.

    As in keystore.store: a pooled connection the server closed meanwhile fails its first
    statement and invalidates the pool, so one retry runs on a fresh connection. Writes that are
    not idempotent pass retry=False.
    """
    attempts = 2 if retry else 1
    for attempt in range(1, attempts + 1):
        try:
            if not write:
                async with engine.connect() as conn:
                    return await op(conn)
            async with _write_turn(engine), engine.connect() as conn:
                # SQLite: take the write lock up front, so a read-then-write cannot fail
                # halfway with SQLITE_BUSY; PostgreSQL ignores the option.
                await conn.execution_options(**{SQLITE_BEGIN_IMMEDIATE: True})
                async with conn.begin():
                    return await op(conn)
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated and attempt < attempts:
                continue
            if is_unavailable(exc):
                raise Unavailable(f"{what} is unavailable") from exc
            raise
        except (OSError, sa_exc.TimeoutError, sa_exc.DisconnectionError) as exc:
            raise Unavailable(f"{what} is unavailable") from exc
    raise AssertionError("unreachable")  # pragma: no cover
