"""The audit service: reading the trail of admin actions."""

from __future__ import annotations

from dataclasses import dataclass

from tokensvc.errors import BadRequest
from tokensvc.services.authorization import Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.principals import Principal
from tokensvc.storage.audit import AuditEntry, AuditLog


@dataclass(frozen=True, slots=True)
class AuditQuery:
    limit: int = 100
    before: int | None = None
    actor: str | None = None
    action: str | None = None
    target: str | None = None


@service
class AuditService:
    def __init__(self, *, authorizer: Authorizer, audit: AuditLog) -> None:
        self._authz = authorizer
        self._audit = audit

    async def recent(self, who: Principal, query: AuditQuery) -> list[AuditEntry]:
        """Entries newest first, filtered; page backwards with `before`.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not read the audit trail.
            BadRequest: a bad limit. Unavailable: storage is down.
        """
        await self._authz.admin(who, "audit:read")
        if not 1 <= query.limit <= 1000:
            raise BadRequest("limit must be between 1 and 1000")
        return await self._audit.recent(
            limit=query.limit,
            before=query.before,
            actor=query.actor,
            action=query.action,
            target=query.target,
        )
