"""The lockout service: inspecting and clearing an identity's failed-login lockout, of its
password and of its second factor alike."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import datetime
from typing import Final, Literal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tokensvc.accounts.lockout import LockoutStatus, LockoutStore
from tokensvc.accounts.lockout.store import CounterStatus, hash_identity, normalise_identity
from tokensvc.accounts.users import UserStore
from tokensvc.errors import BadRequest, Forbidden
from tokensvc.operations import metrics
from tokensvc.operations.logs import security_event
from tokensvc.services.audit import by_token
from tokensvc.services.authorization import UNRESTRICTED_NEEDED, Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.principals import Principal
from tokensvc.storage.audit import AuditLog
from tokensvc.storage.db import run_db

#: Control characters (C0, DEL) and lone surrogates: no identity a login can be counted under
#: holds one once normalised; in an audit target a newline could forge a line of `tokensvc
#: audit`'s table (which also escapes what it cannot print), and PostgreSQL refuses NUL.
_UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")

_SECOND_FACTOR_SCOPES: Final[dict[str, Literal["second_factor", "second_factor_ip"]]] = {
    "identity": "second_factor",
    "identity_ip": "second_factor_ip",
}


def account_identity(identity: str) -> str:
    """The identity as the lockout counts it (`Alice ` is `alice`), for admins' requests.

    Raises:
        BadRequest: longer than a login name (256 characters) or holding a control character,
            once normalised (NFKC may expand a character eighteenfold). (A blank name is the empty identity, which no login is counted under.)
    """
    normal = normalise_identity(identity)
    if len(normal) > 256 or _UNPRINTABLE.search(normal):
        raise BadRequest("name must be 1-256 characters, none of them a control")
    return normal


@service
class LockoutService:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        authorizer: Authorizer,
        users: UserStore,
        lockout: LockoutStore,
        otp_lockout: LockoutStore,
        identity_key: bytes,
        audit: AuditLog,
        clock: Callable[[], datetime],
    ) -> None:
        """`otp_lockout` counts second-factor codes under the keyed hash of the identity
        (`identity_key`, the login service's), so it is addressed the same way here."""
        self._engine = engine
        self._authz = authorizer
        self._users = users
        self._lockout = lockout
        self._otp_lockout = otp_lockout
        self._identity_key = identity_key
        self._audit = audit
        self._clock = clock

    async def status(self, who: Principal, identity: str) -> LockoutStatus:
        """The identity's counters (for any identity, existing or not: the store cannot tell).

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not read users.
            Unavailable: the lockout store is down.
        """
        await self._authz.admin(who, "users:read")
        identity = account_identity(identity)
        now = self._clock().timestamp()
        password = await self._lockout.status(identity, now)
        codes = await self._otp_lockout.status(self._otp_identity(identity), now)
        second_factor = tuple(
            CounterStatus(_SECOND_FACTOR_SCOPES[c.scope], c.failures, c.locked_until)
            for c in codes.counters
            if c.failures > 0 or c.locked_until is not None
        )
        return dataclasses.replace(
            password, counters=password.counters + second_factor, identity=identity
        )

    async def clear(self, who: Principal, identity: str) -> None:
        """Forget the identity's failures and locks: its password's and its second factor's.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not write users, or the
                identity is a role-holder's and the principal's token is narrowed.
            BadRequest: not an identity a login can be counted under.
            Unavailable: the lockout store is down.
        """
        actor = await self._authz.admin(who, "users:write")
        # Audited under the identity the counters are kept under, so an audit search for
        # `admin` finds a clear requested as `ＡＤＭＩＮ`.
        identity = account_identity(identity)
        unrestricted = await self._authz.unrestricted(actor)

        # The counters live in Redis or memory, not in the database, so the clear runs inside a
        # database transaction that holds the acting token's row (Authorizer.confirm): a
        # revocation either committed first (nothing is cleared) or waits until the clear and
        # its audit record are done (red team, helper-43: clears landed up to 69 ms after
        # their token's revocation). The user's row is held too, so its roles stand meanwhile.
        async def run(conn: AsyncConnection) -> None:
            user = await self._users.get(identity, for_update=True, conn=conn)
            await self._authz.confirm(conn, actor)
            # The counters slow guesses at a password: wiping a role-holder's helps whoever
            # guesses at a credential of the role's power, so it needs full authority.
            if user is not None and user.roles and not unrestricted:
                raise Forbidden(UNRESTRICTED_NEEDED)
            await self._lockout.clear(identity)
            await self._otp_lockout.clear(self._otp_identity(identity))
            # The target column holds 255 characters, a login name 256: the whole identity in
            # the details when it is longer, or the row would name another one (red team).
            whole = {"identity": identity} if len(identity) > 255 else {}
            await self._audit.record(
                actor.name, "lockout_cleared", identity, conn=conn, **by_token(actor), **whole
            )

        await run_db(self._engine, run, write=True, retry=False)
        metrics.LOCKOUT_CLEARS.inc()
        security_event("authn_lockout_cleared", by=actor.name[:64], user=identity[:64])

    def _otp_identity(self, identity: str) -> str:
        return hash_identity(identity, key=self._identity_key)
