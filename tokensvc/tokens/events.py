"""The revocation event log: one row per revocation, written in the revoking transaction.

What the revocation stream (GET /v1/revocations/stream, tokensvc.tokens.feed) sends to the
zero-hop clients: a revoked token id, a raised subject generation, a revoked root key. Every writer
of a revocation appends its event in its own transaction (`append`, called by
TokenRegistry.revoke, SubjectStore.raise_generation and Revocations.record_key), so an event exists
exactly when its revocation committed.

Ids are the resume cursor, so a reader that has seen id N must never later find an id below N
commit. A database sequence alone does not promise that: two transactions take ids 10 and 11, and
11 may commit first. Here each append first takes a transaction-scoped advisory lock (PostgreSQL;
SQLite has one writer at a time already), and only then takes its id: ids are handed out in lock
order and the lock is held until commit, so ids commit in increasing order and "everything after
my cursor" never skips an event. Revocations are rare (admin actions), so serialising their last
statement costs nothing the verify path sees. `append` is the last statement of each transaction,
so the lock is held for the commit only.

Pruning deletes events older than the retention but always keeps the newest one: its id stays the
floor of the id sequence (SQLite's AUTOINCREMENT too), and the oldest retained id tells a resuming
reader whether anything it has not seen was pruned (then it must start over: a `reset`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
from sqlalchemy import BigInteger, Integer, String, Table, Text, delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from keystore.db import UTCDateTime
from tokensvc.storage.base import Base
from tokensvc.storage.db import run_db

#: The event kinds, as the stream names them.
TOKEN: Final = "token"  # noqa: S105 - an event kind, not a secret
GENERATION: Final = "generation"
KEY: Final = "key"
KINDS: Final = (TOKEN, GENERATION, KEY)

# pg_advisory_xact_lock's key for "appending a revocation event": a constant no other code of
# this database uses (migrations lock b"tokensvc").
_APPEND_LOCK: Final = int.from_bytes(b"tsvrevev", "big", signed=True)


class RevocationEventRow(Base):
    __tablename__ = "revocation_events"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - SQLAlchemy's declaration

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[str] = mapped_column(Text)  # the event's JSON object, as the stream sends it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


_TABLE: Final[Table] = RevocationEventRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class RevocationEvent:
    """One committed revocation: its id (the cursor), kind and JSON data."""

    id: int
    kind: str
    data: bytes  # a JSON object (orjson), sent as the SSE `data:` line

    def fields(self) -> dict[str, Any]:
        """The data, decoded."""
        value = orjson.loads(self.data)
        return value if isinstance(value, dict) else {}


async def append(conn: AsyncConnection, kind: str, data: dict[str, Any], *, at: datetime) -> None:
    """Append an event in `conn`'s transaction; call it as the transaction's last statement."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK})
    await conn.execute(
        insert(_TABLE).values(kind=kind, data=orjson.dumps(data).decode(), created_at=at)
    )


def token_event(token_id: str, expires_at: float) -> dict[str, Any]:
    return {"token_id": token_id, "expires_at": expires_at}


def generation_event(subject: str, generation: int) -> dict[str, Any]:
    return {"subject": subject, "generation": generation}


def key_event(key_id: str) -> dict[str, Any]:
    return {"key_id": key_id}


class EventLog:
    """Reading and pruning the log (appends go through `append`, in the writers' transactions)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def after(self, cursor: int, *, limit: int) -> list[RevocationEvent]:
        """Up to `limit` events with ids above `cursor`, in id order."""

        async def run(conn: AsyncConnection) -> list[RevocationEvent]:
            rows = await conn.execute(
                select(_TABLE.c.id, _TABLE.c.kind, _TABLE.c.data)
                .where(_TABLE.c.id > cursor)
                .order_by(_TABLE.c.id)
                .limit(limit)
            )
            return [RevocationEvent(int(r.id), r.kind, r.data.encode()) for r in rows]

        return await run_db(self._engine, run, write=False)

    async def bounds(self) -> tuple[int, int]:
        """(oldest, newest) retained id; (0, 0) while the log is empty."""

        async def run(conn: AsyncConnection) -> tuple[int, int]:
            row = (await conn.execute(select(func.min(_TABLE.c.id), func.max(_TABLE.c.id)))).one()
            return (int(row[0] or 0), int(row[1] or 0))

        return await run_db(self._engine, run, write=False)

    async def prune(self, before: datetime) -> int:
        """Delete the events below the oldest one created at or after `before` (all of them but
        the newest if there is none); how many went.

        Only a prefix of ids goes, so the oldest id kept tells a resuming reader whether it
        missed anything. Ids and creation times need not agree (a transaction takes its time
        before a long cascade, then waits for the append lock; replicas' clocks differ): an
        event older than `before` behind a newer one stays until the newer one goes (red team:
        deleting by time alone left a gap no reset announced)."""

        async def run(conn: AsyncConnection) -> int:
            newest = select(func.max(_TABLE.c.id)).scalar_subquery()
            kept = select(func.min(_TABLE.c.id)).where(_TABLE.c.created_at >= before)
            bound = func.coalesce(kept.scalar_subquery(), newest)
            result = await conn.execute(delete(_TABLE).where(_TABLE.c.id < bound))
            return int(result.rowcount or 0)

        return await run_db(self._engine, run, write=True)


def parse_cursor(value: str | None) -> int | None:
    """A client's cursor as an id; None when absent; -1 when it is not one of ours (→ reset)."""
    if value is None or value == "":
        return None
    # ASCII digits only: str.isdigit() is also true of `²` (which int() refuses: a 500) and of
    # other scripts' digits (which are no id this log writes).
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        return -1
    return int(value)
