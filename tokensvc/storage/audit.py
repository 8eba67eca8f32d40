"""The audit trail: who did what to which target, when — one row per admin action, never a secret.

The services (tokensvc.services) write the row in the same transaction as the action wherever
the action is one database transaction (`record(..., conn=conn)`): the action and its record
commit or fail together. Where it is not (a key rotation in the keystore), the row is written
after the action succeeded; a failure to write it then is logged loudly but does not undo the
action, and the security event in the log stream is the second copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import JSON, BigInteger, Integer, String, Table, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from tokensvc.storage.base import Base
from tokensvc.storage.db import run_db

log = logging.getLogger("tokensvc.storage.audit")

#: The action of the entry that records a retention pass (AuditLog.prune).
PRUNED: Final = "audit_pruned"
# Detail keys never stored, whatever a caller passes (defence in depth: callers pass none).
_SECRET_KEYS: Final = frozenset(("password", "token", "secret", "key", "authorization", "pepper"))


class AuditRow(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


_TABLE: Final[Table] = AuditRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any] = field(default_factory=dict)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _clean(details: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in details.items():
        if name.lower() in _SECRET_KEYS:
            continue
        if isinstance(value, datetime):
            out[name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif isinstance(value, tuple):
            out[name] = list(value)
        else:
            out[name] = value
    return out


class AuditLog:
    """The only code issuing SQL against audit_log."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._engine = engine
        self._clock = clock

    async def record(
        self,
        actor: str,
        action: str,
        target: str,
        *,
        conn: AsyncConnection | None = None,
        **details: Any,
    ) -> None:
        """Append one entry: in the caller's transaction (`conn`, failing with it), or on its
        own, best effort (see the module docstring)."""
        values = {
            "at": self._clock(),
            "actor": actor[:255],
            "action": action[:64],
            "target": target[:255],
            "details": _clean(details),
        }

        async def run(conn: AsyncConnection) -> None:
            await conn.execute(insert(_TABLE).values(values))

        if conn is not None:
            await run(conn)
            return
        try:
            await run_db(self._engine, run, write=True, retry=False, what="the audit log")
        except Exception:
            log.exception(
                "could not write the audit entry %s %s by %s", action, target[:64], actor[:64]
            )

    async def prune(
        self, before: datetime, *, actor: str, batch: int = 1000, passes: int = 20
    ) -> int:
        """Delete the entries recorded before `before` (TOKENSVC_AUDIT_RETENTION); how many went.
        At most `passes` statements of `batch` rows each, oldest first, so one call stays short;
        what is left waits for the next.

        Each pass records what it deleted as an `audit_pruned` entry by `actor` in its own
        transaction: the trail never loses rows without saying so, whichever pass fails (review,
        helper-60). A pass that deleted only earlier `audit_pruned` entries records nothing, so
        those entries do not keep renewing themselves once the trail has gone quiet."""
        oldest = (
            select(_TABLE.c.id, _TABLE.c.action)
            .where(_TABLE.c.at < before)
            .order_by(_TABLE.c.id)
            .limit(batch)
        )
        deleted = 0
        for _ in range(passes):

            async def run(conn: AsyncConnection) -> int:
                rows = (await conn.execute(oldest)).all()
                if not rows:
                    return 0
                ids = [row.id for row in rows]
                result = await conn.execute(delete(_TABLE).where(_TABLE.c.id.in_(ids)))
                gone = int(result.rowcount or 0)
                if gone and any(row.action != PRUNED for row in rows):
                    await self.record(
                        actor, PRUNED, _TABLE.name, conn=conn, deleted=gone, before=before
                    )
                return gone

            pruned = await run_db(self._engine, run, write=True, what="the audit log")
            deleted += pruned
            if pruned < batch:
                break
        return deleted

    async def recent(
        self,
        *,
        limit: int = 100,
        before: int | None = None,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> list[AuditEntry]:
        """Newest first; page backwards with `before` (an entry id)."""

        async def run(conn: AsyncConnection) -> list[AuditEntry]:
            query = select(_TABLE).order_by(_TABLE.c.id.desc()).limit(limit)
            if before is not None:
                query = query.where(_TABLE.c.id < before)
            if actor is not None:
                query = query.where(_TABLE.c.actor == actor)
            if action is not None:
                query = query.where(_TABLE.c.action == action)
            if target is not None:
                query = query.where(_TABLE.c.target == target)
            return [
                AuditEntry(
                    id=int(r.id),
                    at=r.at,
                    actor=r.actor,
                    action=r.action,
                    target=r.target,
                    details=dict(r.details or {}),
                )
                for r in await conn.execute(query)
            ]

        return await run_db(self._engine, run, write=False)
