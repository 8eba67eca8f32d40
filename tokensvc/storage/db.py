"""Running one unit of database work for the service's stores, and the storage errors they raise.

Stores raise storage errors, never service or HTTP ones: the services translate
`StorageUnavailable` into `tokensvc.errors.Unavailable` at their boundary (tokensvc.services.boundary).
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystore.db import SQLITE_BEGIN_IMMEDIATE
from keystore.db import run as run_database
from keystore.errors import StoreUnavailable

_T = TypeVar("_T")


class StorageError(Exception):
    """Root of the errors tokensvc's stores raise on purpose; never raised itself."""


class StorageUnavailable(StorageError):
    """The database cannot serve now (down, unreachable, refusing connections, overloaded)."""


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


#: How often a write PostgreSQL aborted as a deadlock runs again (keystore.db.run): crossed
#: writes, such as two admins changing each other's passwords, lock the same rows in opposite
#: orders (each its target's row, then the other's token), and PostgreSQL breaks the cycle.
CONFLICT_RETRIES = 3


async def run_db(
    engine: AsyncEngine,
    op: Callable[[AsyncConnection], Awaitable[_T]],
    *,
    write: bool,
    retry: bool = True,
    what: str = "the database",
) -> _T:
    """Run `op` on a connection (in one transaction when writing); StorageUnavailable if the
    database cannot serve.

    The retry and the classification of failures are keystore.db.run's, shared with the key
    store. Writes that are not idempotent pass retry=False. On SQLite a write takes the write
    lock up front (BEGIN IMMEDIATE), so a read-then-write cannot fail halfway with SQLITE_BUSY.
    """
    try:
        if not write:
            return await run_database(engine, op, write=False, retry=retry, what=what)
        async with _write_turn(engine):
            return await run_database(
                engine,
                op,
                write=True,
                retry=retry,
                what=what,
                options={SQLITE_BEGIN_IMMEDIATE: True},
                # The service's writes do only database work inside their transaction (what
                # follows a commit — telling this process and the replicas — comes after).
                conflict_retries=CONFLICT_RETRIES,
            )
    except StoreUnavailable as exc:
        raise StorageUnavailable(str(exc)) from exc


async def lock_name(conn: AsyncConnection, name: str) -> None:
    """Hold `name` (a user name, a token subject) until `conn`'s transaction ends, so that two
    transactions that each check the other's table for the name before writing it (a user
    created while a service token is minted for the same name) run one after the other. On
    PostgreSQL a transaction-scoped advisory lock; SQLite's write transactions already run one
    at a time (BEGIN IMMEDIATE)."""
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"tokensvc-name").digest()
    key = int.from_bytes(digest, "big", signed=True)
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
