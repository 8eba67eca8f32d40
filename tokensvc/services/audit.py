"""The audit service: reading the trail of admin actions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from tokensvc.errors import BadRequest
from tokensvc.services.authorization import Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.principals import Actor, Principal
from tokensvc.storage.audit import AuditEntry, AuditLog
from tokensvc.tokens.registry import Descendant


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


def by_token(actor: Actor) -> dict[str, str]:
    """The audit details naming the token an action was done with (`by_token`: its id), so a
    narrowed delegate's action is told apart from its admin's own session's; nothing for the
    local operator, whose actor name says it all (red team: rows named only the subject)."""
    return {} if actor.verified is None else {"by_token": actor.verified.token_id}


async def record_cascade(
    audit: AuditLog,
    conn: AsyncConnection,
    by: str,
    descendants: Sequence[Descendant],
    *,
    cause: str,
    acting: dict[str, str] | None = None,
) -> None:
    """One audit row per token a revocation took with it (its descendants: tokens minted with
    the revoked token, or with a token of the subject whose tokens were revoked), naming the
    cause and (`acting`, from `by_token`) the token it was done with, in the revoking
    transaction."""
    for token_id, _, _ in descendants:
        await audit.record(
            by, "token_revoked", token_id, conn=conn, via="cascade", cause=cause, **(acting or {})
        )


async def record_cascade_by(
    audit: AuditLog,
    conn: AsyncConnection,
    actor: Actor,
    descendants: Sequence[Descendant],
    *,
    cause: str,
) -> None:
    """`record_cascade` for what an authorised actor did: its name, and the token it acted with."""
    await record_cascade(audit, conn, actor.name, descendants, cause=cause, acting=by_token(actor))
