"""The lockout service: inspecting and clearing an identity's failed-login lockout."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from tokensvc.accounts.lockout import LockoutStatus, LockoutStore
from tokensvc.operations import metrics
from tokensvc.operations.logs import security_event
from tokensvc.services.authorization import Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.principals import Principal
from tokensvc.storage.audit import AuditLog


@service
class LockoutService:
    def __init__(
        self,
        *,
        authorizer: Authorizer,
        lockout: LockoutStore,
        audit: AuditLog,
        clock: Callable[[], datetime],
    ) -> None:
        self._authz = authorizer
        self._lockout = lockout
        self._audit = audit
        self._clock = clock

    async def status(self, who: Principal, identity: str) -> LockoutStatus:
        """The identity's counters (for any identity, existing or not: the store cannot tell).

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not read users.
            Unavailable: the lockout store is down.
        """
        await self._authz.admin(who, "users:read")
        return await self._lockout.status(identity, self._clock().timestamp())

    async def clear(self, who: Principal, identity: str) -> None:
        """Forget the identity's failures and locks.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not write users.
            Unavailable: the lockout store is down.
        """
        actor = await self._authz.admin(who, "users:write")
        await self._lockout.clear(identity)
        metrics.LOCKOUT_CLEARS.inc()
        await self._audit.record(actor.name, "lockout_cleared", identity[:64])
        security_event("authn_lockout_cleared", by=actor.name[:64], user=identity[:64])
