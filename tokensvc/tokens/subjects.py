"""The one token generation of every subject: `subject_generations`, and SubjectStore, its only SQL.

A token carries the generation of its subject at mint time and dies once the subject's generation
has moved past it. Every event that must revoke a subject's earlier tokens — revoke-all, a password
change, disabling, losing a role, deleting the user — raises this one counter by one, in the same
transaction as the change itself. The row outlives the user: deleting a user and creating one of
the same name never lowers it, so old tokens cannot come back to life.

(Before migration 0006 a user's generation lived in `users.generation` and this table held a
floor; the check took the larger of two counters that were raised separately, so raising one
could be swallowed by the other. The migration folded them into this one.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final, TypeVar

from sqlalchemy import Integer, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from keystore.db import UTCDateTime
from tokensvc.storage.base import Base
from tokensvc.storage.db import run_db
from tokensvc.tokens import events

_T = TypeVar("_T")


class SubjectGenerationRow(Base):
    __tablename__ = "subject_generations"

    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


_TABLE: Final[Table] = SubjectGenerationRow.__table__  # type: ignore[assignment]


class SubjectStore:
    """The only code issuing SQL on subject_generations; `conn` joins a caller's transaction."""

    def __init__(
        self, engine: AsyncEngine, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._engine = engine
        self._clock = clock

    async def generation(self, subject: str, *, conn: AsyncConnection | None = None) -> int:
        """The subject's current generation (0 if it was never raised)."""

        async def run(conn: AsyncConnection) -> int:
            result = await conn.execute(
                select(_TABLE.c.generation).where(_TABLE.c.subject == subject)
            )
            value = result.scalar_one_or_none()
            return int(value) if value is not None else 0

        return await self._run(run, write=False, conn=conn)

    async def generations_since(self, since: datetime | None) -> list[tuple[str, int]]:
        """(subject, generation) of subjects raised after `since` (all of them for None)."""

        async def run(conn: AsyncConnection) -> list[tuple[str, int]]:
            query = select(_TABLE.c.subject, _TABLE.c.generation)
            if since is not None:
                query = query.where(_TABLE.c.updated_at > since)
            return [(row.subject, int(row.generation)) for row in await conn.execute(query)]

        return await self._run(run, write=False)

    async def raise_generation(self, subject: str, *, conn: AsyncConnection | None = None) -> int:
        """Raise the subject's generation by one, atomically; returns the new generation.

        One statement (an upsert that increments), so concurrent raises each count and none is
        lost; every token minted before it, at any lower generation, is revoked.
        """
        now = self._clock()

        async def run(conn: AsyncConnection) -> int:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            statement = (
                insert(_TABLE)
                .values(subject=subject, generation=1, updated_at=now)
                .on_conflict_do_update(
                    index_elements=["subject"],
                    set_={"generation": _TABLE.c.generation + 1, "updated_at": now},
                )
                .returning(_TABLE.c.generation)
            )
            generation = int((await conn.execute(statement)).scalar_one())
            # The stream's event, in the raising transaction. A caller's transaction may run
            # more statements after this one: they only touch rows it has already locked.
            await events.append(
                conn, events.GENERATION, events.generation_event(subject, generation), at=now
            )
            return generation

        # Not retried: had a lost connection committed the raise, a retry would raise it twice
        # (harmless for revocation, but the returned value would skip one).
        return await self._run(run, write=True, retry=False, conn=conn)

    async def _run(
        self,
        op: Callable[[AsyncConnection], Awaitable[_T]],
        *,
        write: bool,
        retry: bool = True,
        conn: AsyncConnection | None = None,
    ) -> _T:
        if conn is not None:
            return await op(conn)
        return await run_db(self._engine, op, write=write, retry=retry, what="the database")
