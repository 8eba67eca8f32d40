"""Readiness: whether this process's dependencies answer (the database, Redis where configured)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tokensvc.storage.db import StorageUnavailable, run_db


class HealthService:
    """Never raises: a dependency that does not answer is reported, not thrown."""

    def __init__(
        self, *, engine: AsyncEngine, probes: Mapping[str, Callable[[], Awaitable[bool]]]
    ) -> None:
        self._engine = engine
        self._probes = probes

    async def readiness(self) -> dict[str, str]:
        """Each dependency's state: "ok" or "unavailable"."""

        async def ping(conn: AsyncConnection) -> None:
            await conn.execute(text("SELECT 1"))

        checks: dict[str, str] = {}
        try:
            await run_db(self._engine, ping, write=False, retry=False, what="the database")
            checks["database"] = "ok"
        except StorageUnavailable:
            checks["database"] = "unavailable"
        for name, probe in self._probes.items():
            checks[name] = "ok" if await probe() else "unavailable"
        return checks
