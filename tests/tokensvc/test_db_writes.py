"""Writes to the embedded SQLite database queue in this process instead of racing for its lock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

import keystore.db
from keystore import create_engine
from tokensvc.storage.db import run_db

WRITERS = 12
HOLD = 0.05  # seconds each write keeps its transaction open


async def test_a_burst_of_writes_all_land_though_together_they_outlast_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 writes holding the lock 50 ms each need 600 ms; SQLite's busy timeout is 100 ms here.

    Left to SQLite, the later writers give up with "database is locked" (a 503 for a mint);
    queued in the process, each waits its turn and every one commits."""
    monkeypatch.setattr(keystore.db, "SQLITE_BUSY_TIMEOUT_MS", 100)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/burst.db")
    try:

        async def create(conn: AsyncConnection) -> None:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))

        await run_db(engine, create, write=True)

        async def insert(x: int) -> None:
            async def op(conn: AsyncConnection) -> None:
                await conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": x})
                await asyncio.sleep(HOLD)

            await run_db(engine, op, write=True, retry=False)

        await asyncio.gather(*(insert(i) for i in range(WRITERS)))

        async def count(conn: AsyncConnection) -> int:
            return int((await conn.execute(text("SELECT count(*) FROM t"))).scalar_one())

        assert await run_db(engine, count, write=False) == WRITERS
    finally:
        await engine.dispose()
