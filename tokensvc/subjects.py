"""Per-subject token generations that outlive user rows (deletion now, revoke-all later).

A token carries the generation of its subject at mint time. Users keep their own counter for
credential changes; this table holds a floor for any subject, so deleting a user (or re-creating
one under the same name) cannot bring old tokens back to life. The current generation of a
subject is the larger of the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Integer, String, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from keystore.db import Base, UTCDateTime
from tokensvc.db import run_db


class SubjectGenerationRow(Base):
    __tablename__ = "subject_generations"

    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


_TABLE: Final[Table] = SubjectGenerationRow.__table__  # type: ignore[assignment]


class SubjectStore:
    """The only code issuing SQL on subject_generations."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def generation(self, subject: str) -> int:
        async def run(conn: AsyncConnection) -> int:
            result = await conn.execute(
                select(_TABLE.c.generation).where(_TABLE.c.subject == subject)
            )
            value = result.scalar_one_or_none()
            return int(value) if value is not None else 0

        return await run_db(self._engine, run, write=False)

    async def generations_since(self, since: datetime | None) -> list[tuple[str, int]]:
        """(subject, generation) of floors updated after `since` (all of them for None)."""

        async def run(conn: AsyncConnection) -> list[tuple[str, int]]:
            query = select(_TABLE.c.subject, _TABLE.c.generation)
            if since is not None:
                query = query.where(_TABLE.c.updated_at > since)
            return [(row.subject, int(row.generation)) for row in await conn.execute(query)]

        return await run_db(self._engine, run, write=False)

    async def raise_floor(self, subject: str, *, at_least: int) -> int:
        """Make the subject's generation at least `at_least`; returns the stored value."""
        now = datetime.now(UTC)

        async def run(conn: AsyncConnection) -> int:
            dialect = conn.dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            await conn.execute(
                insert(_TABLE)
                .values(subject=subject, generation=at_least, updated_at=now)
                .on_conflict_do_nothing(index_elements=["subject"])
            )
            await conn.execute(
                update(_TABLE)
                .where(_TABLE.c.subject == subject, _TABLE.c.generation < at_least)
                .values(generation=at_least, updated_at=now)
            )
            result = await conn.execute(
                select(_TABLE.c.generation).where(_TABLE.c.subject == subject)
            )
            return int(result.scalar_one())

        return await run_db(self._engine, run, write=True)
