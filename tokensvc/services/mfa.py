"""The MFA service: a user's own TOTP enrolment, disable and recovery codes, and an admin's reset.

Every door (HTTP, the CLI, `--local` for the admin reset) calls these methods. What each needs:

- status, activate: the user's own token (any genuine one whose caveats allow `mfa:enroll` on
  this API — the token a user who must enrol is given allows only that);
- enrol: the same token and the user's current password ("sudo mode", as PyPI and GitHub ask
  before a sensitive change), checked by the login service on the password lockout counters: a
  stolen token alone cannot put the thief's authenticator on the account and lock the owner out;
- disable, new recovery codes: the user's own token and a fresh factor (a current TOTP code or
  an unused recovery code), counted against the OTP counters first, so a stolen token cannot
  guess its way to switching the factor off;
- reset: an admin (`users:write`), or a local operator; recorded in the audit log.

Enrolment is two steps: `enroll` makes a pending secret and returns it (the otpauth:// URI),
`activate` confirms it with a first correct code and returns the ten recovery codes, shown
once. An active enrolment is not replaced by `enroll` (409): disable it first, with a factor.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tokensvc.accounts.admission import CheckPriority
from tokensvc.accounts.lockout import LockoutStore, judged_or_taken_back
from tokensvc.accounts.lockout.store import hash_identity
from tokensvc.accounts.mfa import new_totp_secret, provisioning_uri
from tokensvc.accounts.secondfactor import Enrolment, SecondFactors
from tokensvc.accounts.users import UserStore, user_name_or_none
from tokensvc.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthenticated
from tokensvc.operations.logs import security_event
from tokensvc.services.audit import by_token
from tokensvc.services.authorization import UNRESTRICTED_NEEDED, Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.login import LoginService
from tokensvc.services.principals import Actor, Principal
from tokensvc.storage.audit import AuditLog
from tokensvc.storage.db import run_db

log = logging.getLogger("tokensvc.services.mfa")

#: The API operation a token must allow for the user's own MFA actions.
MFA_OPERATION: Final = "mfa:enroll"
WRONG_CODE: Final = "wrong, expired or already used code"


@dataclass(frozen=True, slots=True)
class EnrolmentStarted:
    """A pending enrolment: the secret to put in an authenticator app (shown once)."""

    user: str
    uri: str = field(repr=False)
    secret: str = field(repr=False)  # base32, for typing into an app by hand


@dataclass(frozen=True, slots=True)
class MfaStatus:
    """What a user (or an admin) sees of an account's second factor."""

    user: str
    enrolled: bool
    pending: bool
    recovery_codes: int
    required: bool


@service
class MfaService:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        authorizer: Authorizer,
        users: UserStore,
        factors: SecondFactors,
        otp_lockout: LockoutStore,
        passwords: LoginService,
        audit: AuditLog,
        clock: Callable[[], datetime],
        issuer: str,
        required_roles: frozenset[str] = frozenset(),
        identity_key: bytes,
    ) -> None:
        """`identity_key` must be the login service's `identity_log_key`: a code checked here
        is counted on the same OTP counters as at login; `passwords` re-checks the password at
        enrolment on the login's own counters."""
        self._engine = engine
        self._authz = authorizer
        self._users = users
        self._factors = factors
        self._otp_lockout = otp_lockout
        self._passwords = passwords
        self._audit = audit
        self._clock = clock
        self._issuer = issuer
        self._required = required_roles
        self._identity_key = identity_key

    async def status(self, who: Principal) -> MfaStatus:
        """The caller's own MFA state.

        Raises:
            InvalidToken, CaveatDenied: the token is not genuine or may not do this.
            Forbidden: a local operator has no account of its own.
        """
        actor = await self._own(who)
        return await self._status(actor.subject or "")

    async def enroll(self, who: Principal, *, password: str, client_ip: str) -> EnrolmentStarted:
        """Start (or restart) the caller's enrolment, proved with their current password: a new
        pending secret.

        Raises:
            BadRequest: no password.
            InvalidToken, CaveatDenied, Forbidden: as for `status`.
            Conflict: the caller already has an active enrolment (disable it first).
            Unauthenticated: the password is wrong (counted as a failed login).
            LockedOut: too many password failures for this user or address.
            Unavailable: the lockout store, the database or the hasher is unavailable.
        """
        if not password:
            raise BadRequest("password (your current password) is required")
        actor = await self._own(who)
        user = actor.subject or ""
        # The conflict first: an active factor is not replaced whatever the password, and a
        # right password is then not spent on the counters for nothing.
        if await self._factors.active_secret(user) is not None:
            raise Conflict("a second factor is already active; disable it first")
        try:
            await self._passwords.reauthenticate(user, password=password, client_ip=client_ip)
        except Unauthenticated:
            security_event("mfa_enrol_reauth_fail", level=logging.WARNING, user=user)
            raise
        secret = new_totp_secret()

        async def run(conn: AsyncConnection) -> datetime | None:
            await self._authz.confirm(conn, actor)  # a token revoked meanwhile enrols nothing
            return await self._factors.secrets.put_pending(user, secret, conn=conn)

        try:
            stored = await run_db(self._engine, run, write=True, retry=False)
        except IntegrityError:  # another enrolment inserted its row meanwhile
            stored = None
        if stored is None:
            # Activated (or enrolled again) between the look above and the write: never replaced.
            raise Conflict("a second factor is already active; disable it first")
        security_event("mfa_enrol_started", user=user)
        return EnrolmentStarted(
            user=user,
            uri=provisioning_uri(secret, user=user, issuer=self._issuer),
            secret=base64.b32encode(secret).decode("ascii"),
        )

    async def activate(self, who: Principal, *, otp: str, client_ip: str) -> list[str]:
        """Confirm the caller's pending enrolment with its current code; the recovery codes.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: as for `status`.
            Unauthenticated: the code is wrong (or nothing is pending).
            LockedOut: too many wrong codes.
        """
        actor = await self._own(who)
        user = actor.subject or ""
        now = self._clock().timestamp()
        identity = self._identity(user)
        await self._otp_lockout.begin_attempt(identity=identity, client_ip=client_ip, now=now)
        async with self._judging(identity, client_ip, now):
            created_at = await self._factors.check_pending(user, otp, now=now)
        if created_at is None:
            security_event("mfa_activate_fail", level=logging.WARNING, user=user)
            raise Unauthenticated(WRONG_CODE)
        await self._otp_lockout.record_success(identity=identity, client_ip=client_ip, now=now)
        codes, hashes = await self._factors.hashed_recovery_codes()

        # One transaction, the token re-checked in it (red team, helper-41: a token revoked by
        # a password change on another replica still activated a factor 13 ms later, locking
        # the owner out of the account): the codes, the activation and the audit row, or none.
        async def run(conn: AsyncConnection) -> None:
            await self._authz.confirm(conn, actor)
            await self._factors.recovery_codes.replace(user, hashes, conn=conn)
            if not await self._factors.secrets.activate(user, created_at=created_at, conn=conn):
                raise Conflict("the enrolment changed meanwhile; start again")
            await self._audit.record(actor.name, "mfa_enrolled", user, conn=conn, **by_token(actor))

        await run_db(self._engine, run, write=True, retry=False)
        security_event("mfa_enrolled", user=user)
        return codes

    async def disable(self, who: Principal, *, otp: str, client_ip: str) -> None:
        """Switch the caller's second factor off, proved with a fresh code.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: as for `status`.
            Unauthenticated: the code is wrong, or there is no active enrolment.
            LockedOut: too many wrong codes.
        """
        actor = await self._proved(who, otp=otp, client_ip=client_ip)
        user = actor.subject or ""

        async def run(conn: AsyncConnection) -> None:
            await self._authz.confirm(conn, actor)  # a token revoked meanwhile disables nothing
            await self._factors.forget(user, conn=conn)
            await self._audit.record(actor.name, "mfa_disabled", user, conn=conn, **by_token(actor))

        await run_db(self._engine, run, write=True, retry=False)
        security_event("mfa_disabled", user=user, by=actor.name[:64])

    async def regenerate_recovery_codes(
        self, who: Principal, *, otp: str, client_ip: str
    ) -> list[str]:
        """Ten new recovery codes for the caller (every earlier one dies), proved with a code.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: as for `status`.
            Unauthenticated: the code is wrong, or there is no active enrolment.
            LockedOut: too many wrong codes.
        """
        actor = await self._proved(who, otp=otp, client_ip=client_ip)
        user = actor.subject or ""
        codes, hashes = await self._factors.hashed_recovery_codes()

        async def run(conn: AsyncConnection) -> None:
            await self._authz.confirm(conn, actor)
            await self._factors.recovery_codes.replace(user, hashes, conn=conn)
            await self._audit.record(
                actor.name, "mfa_recovery_codes_regenerated", user, conn=conn, **by_token(actor)
            )

        await run_db(self._engine, run, write=True, retry=False)
        security_event("mfa_recovery_codes_regenerated", user=user)
        return codes

    async def reset(self, who: Principal, name: str) -> bool:
        """An admin drops a user's second factor (a lost phone); whether there was one.

        One transaction with its audit record, after the acting token's re-check there
        (Authorizer.confirm; red team: a reset by a token revoked while it waited committed
        after the revocation) and with the user's row locked, so its roles cannot change
        between the check below and the reset.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not write users.
            NotFound: no such user.
        """
        actor = await self._authz.admin(who, "users:write")
        user = user_name_or_none(name)
        if user is None:
            raise NotFound("no such user")
        # Read before the transaction, as user changes do: Authorizer.unrestricted reads too.
        unrestricted = await self._authz.unrestricted(actor)

        async def run(conn: AsyncConnection) -> bool:
            found = await self._users.get(user, for_update=True, conn=conn)
            await self._authz.confirm(conn, actor)  # after the row, as user changes take them
            if found is None:
                raise NotFound("no such user")
            # A role-holder's second factor guards a credential of the role's power: dropping
            # it needs the same full authority as granting the role (Authorizer.unrestricted).
            if found.roles and not unrestricted:
                raise Forbidden(UNRESTRICTED_NEEDED)
            had = await self._factors.forget(user, conn=conn)
            await self._audit.record(
                actor.name, "mfa_reset", user, conn=conn, **by_token(actor), had_factor=had
            )
            return had

        had = await run_db(self._engine, run, write=True, retry=False)
        security_event("mfa_reset", level=logging.WARNING, user=user, by=actor.name[:64])
        return had

    async def status_of(self, who: Principal, name: str) -> MfaStatus:
        """An admin reads a user's MFA state.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not read users.
            NotFound: no such user.
        """
        await self._authz.admin(who, "users:read")
        user = user_name_or_none(name)
        if user is None or await self._users.get(user) is None:
            raise NotFound("no such user")
        return await self._status(user)

    async def _status(self, user: str) -> MfaStatus:
        enrolment: Enrolment = await self._factors.enrolment(user)
        found = await self._users.get(user)
        roles = set(found.roles) if found is not None else set()
        return MfaStatus(
            user=user,
            enrolled=enrolment.active,
            pending=enrolment.pending,
            recovery_codes=enrolment.recovery_codes,
            required=bool(self._required & roles),
        )

    async def _own(self, who: Principal) -> Actor:
        actor = await self._authz.holder(who, MFA_OPERATION)
        if actor.subject is None:
            raise Forbidden("a local operator has no second factor: use `tokensvc user mfa-reset`")
        found = await self._users.get(actor.subject)
        # The exact name, as Authorizer.admin and the discharger's conditions ask: user lookups
        # fold case, and a token minted for the subject `DAVE` is not dave's (red team: it
        # enrolled a factor under `DAVE`, with dave's password, that no reset of dave's removed).
        if found is None or found.disabled or found.name != actor.subject:
            raise Forbidden("the token's subject is not an enabled user")
        return actor

    async def _proved(self, who: Principal, *, otp: str, client_ip: str) -> Actor:
        """The caller, once a fresh factor of theirs holds (counted before it is compared)."""
        if not otp:
            raise BadRequest("a current code (or a recovery code) is required")
        actor = await self._own(who)
        user = actor.subject or ""
        now = self._clock().timestamp()
        identity = self._identity(user)
        await self._otp_lockout.begin_attempt(identity=identity, client_ip=client_ip, now=now)
        # Signed in (a token for `user`): a recovery code checked here queues with trusted logins.
        async with self._judging(identity, client_ip, now):
            factor = await self._factors.check(user, otp, now=now, priority=CheckPriority.TRUSTED)
        if factor is None:
            security_event("mfa_proof_fail", level=logging.WARNING, user=user)
            raise Unauthenticated(WRONG_CODE)
        await self._otp_lockout.record_success(identity=identity, client_ip=client_ip, now=now)
        return actor

    def _judging(
        self, identity: str, client_ip: str, now: float
    ) -> AbstractAsyncContextManager[None]:
        # A code check that fails to finish (the hasher, the database or the spent-code store
        # down) never counts against the user (red team, helper-58: these self-service checks
        # left it counted, as the login's did not).
        return judged_or_taken_back(
            self._otp_lockout, identity=identity, client_ip=client_ip, now=now
        )

    def _identity(self, user: str) -> str:
        # The OTP counters' identity, as the login service names it (hash of the typed name).
        return hash_identity(user, key=self._identity_key)
