"""Races against a real PostgreSQL: the served app on a test's own database, and the other side
of a race as a transaction of the test's own, held open until the test commits it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tests.conftest import FakeClock, make_config


def dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def pg_client(aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock) -> Any:
    """The served app on the test's own PostgreSQL database, without Redis."""
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    config = make_config(database_url=pg_url, data_dir=data_dir)
    return await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))


@contextlib.asynccontextmanager
async def open_transaction(pg_url: str) -> AsyncIterator[tuple[Any, Any]]:
    """A connection of its own with a transaction begun: one side of a race, held open until
    the test commits it (the connection closes at the end, rolling back what was not)."""
    import asyncpg

    conn = await asyncpg.connect(dsn(pg_url))
    try:
        transaction = conn.transaction()
        await transaction.start()
        yield conn, transaction
    finally:
        await conn.close()
