"""The user service: creating, changing, disabling and deleting users, for every door.

Every change that must kill the user's earlier tokens — a new password, disabling, losing a role,
deletion — raises the subject's one generation (tokensvc.tokens.subjects) in the same transaction as the
change and its audit record, then tells this process and the other replicas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tokensvc.accounts.passwords import PasswordHasher
from tokensvc.accounts.secondfactor import SecondFactors
from tokensvc.accounts.users import User, UserStore, canonical_name
from tokensvc.errors import BadRequest, Forbidden, NotFound
from tokensvc.operations.logs import security_event
from tokensvc.services.audit import by_token, record_cascade_by
from tokensvc.services.authorization import UNRESTRICTED_NEEDED, Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.principals import Actor, Principal
from tokensvc.storage.audit import AuditLog
from tokensvc.storage.db import lock_name, run_db
from tokensvc.tokens.registry import TokenRegistry
from tokensvc.tokens.revocation import Raised, Revocations


@dataclass(frozen=True, slots=True)
class NewUser:
    name: str
    password: str
    roles: tuple[str, ...] = ()
    disabled: bool = False

    def __repr__(self) -> str:  # the password never reaches a log or a traceback
        return f"NewUser(name={self.name!r}, roles={self.roles!r}, disabled={self.disabled!r})"


@dataclass(frozen=True, slots=True)
class UserChange:
    """What to change; None leaves a field as it is."""

    password: str | None = None
    roles: tuple[str, ...] | None = None
    disabled: bool | None = None

    def __repr__(self) -> str:
        return f"UserChange(fields={self.fields!r})"

    @property
    def fields(self) -> list[str]:
        return [n for n in ("password", "roles", "disabled") if getattr(self, n) is not None]


@service
class UserService:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        authorizer: Authorizer,
        users: UserStore,
        hasher: PasswordHasher,
        revocations: Revocations,
        registry: TokenRegistry,
        audit: AuditLog,
        factors: SecondFactors | None = None,
    ) -> None:
        """`factors`: a deleted user's second factor goes with it (a new user of the same name
        must not inherit it). `registry`: whose names are already token subjects."""
        self._factors = factors
        self._registry = registry
        self._engine = engine
        self._authz = authorizer
        self._users = users
        self._hasher = hasher
        self._revocations = revocations
        self._audit = audit

    async def create(self, who: Principal, new: NewUser) -> User:
        """A new user, audited in the same transaction.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not write users.
            BadRequest: a bad name, password or role. Conflict: the name is taken.
            Forbidden: roles, or a name tokens were issued to, from a narrowed token.
            Unavailable: storage or the password hasher is unavailable.
        """
        actor = await self._authz.admin(who, "users:write")
        name = canonical_name(new.name)  # validate before paying for a hash
        unrestricted = await self._authz.unrestricted(actor)
        if new.roles and not unrestricted:
            raise Forbidden(UNRESTRICTED_NEEDED)
        # No user has a second factor at creation: the single-factor minimum applies.
        password_hash = await self._hasher.hash(new.password, username=new.name)

        async def run(conn: AsyncConnection) -> tuple[User, Raised | None]:
            await self._authz.confirm(conn, actor)
            # User names and token subjects are one namespace: a user called `payments` logs in
            # to tokens of subject `payments`, may revoke that subject's tokens (as their own)
            # and, deleted, takes them all with it. A name tokens were issued to (a service's,
            # or a deleted user's) is therefore made a user only by a token that could mint for
            # it, an unrestricted one (red team: a `users:write` token took over a service), and
            # the new user starts with none of those tokens: they die here, as a re-created
            # name's earlier tokens stay dead.
            await lock_name(conn, name)  # a service token minted for it meanwhile: see tokens.py
            earlier = await self._registry.issued_to(conn, name)
            if earlier and not unrestricted:
                raise Forbidden(
                    "tokens were issued to this name: only an unrestricted admin token"
                    " (no caveats beyond its expiry) may make it a user"
                )
            user = await self._users.create(
                new.name,
                password_hash=password_hash,
                roles=new.roles,
                disabled=new.disabled,
                conn=conn,
            )
            raised = await self._audited(
                conn,
                actor,
                "user_created",
                user.name,
                revoke=earlier,
                roles=list(user.roles),
                disabled=user.disabled,
            )
            return user, raised

        user, raised = await run_db(self._engine, run, write=True, retry=False)
        if raised is not None:
            await self._revocations.generation_raised(user.name, raised)
        security_event("user_created", by=actor.name[:64], user=user.name, roles=list(user.roles))
        return user

    async def get(self, who: Principal, name: str) -> User:
        """One user.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not read users.
            NotFound: no such user. Unavailable: storage is down.
        """
        await self._authz.admin(who, "users:read")
        user = await self._users.get(name)
        if user is None:
            raise NotFound("no such user")
        return user

    async def list(self, who: Principal, *, after: str | None, limit: int) -> Sequence[User]:
        """Users in name order, after the name `after` (keyset paging).

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not read users.
            BadRequest: a bad limit or name. Unavailable: storage is down.
        """
        await self._authz.admin(who, "users:read")
        if not 1 <= limit <= 1000:
            raise BadRequest("limit must be between 1 and 1000")
        return await self._users.list(
            after=canonical_name(after) if after is not None else None, limit=limit
        )

    async def update(self, who: Principal, name: str, change: UserChange) -> User:
        """Change a user; a new password, disabling or a lost role revokes its earlier tokens.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not write users.
            BadRequest: nothing to change, or a bad value. NotFound: no such user.
            Unavailable: storage or the password hasher is unavailable.
        """
        actor = await self._authz.admin(who, "users:write")
        if not change.fields:
            raise BadRequest("nothing to change")
        # Read once, before the row lock: a narrowed token may not grant a role, nor take over
        # an account that holds one (its password), nor re-enable one, so no token creates an
        # admin beyond itself.
        unrestricted = await self._authz.unrestricted(actor)
        # Hash before the transaction: argon2 is slow and must not hold a row lock.
        new_hash = (
            await self._hasher.hash(change.password, username=name)
            if change.password is not None
            else None
        )

        async def run(conn: AsyncConnection) -> tuple[User, Raised | None]:
            # The user's row, then the actor's token (Authorizer.confirm): the order every change
            # that revokes takes them in (the user, then its tokens), so two such changes queue
            # on the row instead of deadlocking.
            before = await self._users.get(name, for_update=True, conn=conn)
            await self._authz.confirm(conn, actor)
            if before is None:
                raise NotFound("no such user")
            granting = change.roles is not None and not set(change.roles) <= set(before.roles)
            # Any change to a role-holder (its password, disabling or re-enabling it, its
            # roles): a narrowed token manages role-less users only. Re-enabling gives the
            # credential the role's power back (red team: a narrowed token re-enabled a disabled
            # admin, who then logged in as one); demoting made the account role-less, so the
            # same token could then set its password, and disabling or demoting every admin
            # locked the admins out (red team).
            if (granting or before.roles) and not unrestricted:
                raise Forbidden(UNRESTRICTED_NEEDED)
            after = before
            if new_hash is not None:
                after = await self._users.set_password(before.name, new_hash, conn=conn)
            if change.roles is not None:
                after = await self._users.set_roles(before.name, change.roles, conn=conn)
            if change.disabled is not None:
                after = await self._users.set_disabled(before.name, change.disabled, conn=conn)
            revokes = (
                new_hash is not None
                or (after.disabled and not before.disabled)
                or not set(before.roles) <= set(after.roles)
            )
            raised = await self._audited(
                conn, actor, "user_updated", before.name, revoke=revokes, changed=change.fields
            )
            return after, raised

        user, raised = await run_db(self._engine, run, write=True, retry=False)
        if raised is not None:
            await self._revocations.generation_raised(user.name, raised)
        security_event("user_updated", by=actor.name[:64], user=user.name, changed=change.fields)
        return user

    async def _audited(
        self,
        conn: AsyncConnection,
        actor: Actor,
        action: str,
        name: str,
        *,
        revoke: bool,
        **details: Any,
    ) -> Raised | None:
        """In `conn`'s transaction: with `revoke`, raise user `name`'s generation; then the
        audit row of `action` (saying whether tokens were revoked) and the cascade's rows."""
        raised = await self._revocations.raise_generation(conn, name) if revoke else None
        await self._audit.record(
            actor.name, action, name, conn=conn, **by_token(actor), **details, tokens_revoked=revoke
        )
        if raised is not None:
            await record_cascade_by(
                self._audit, conn, actor, raised.descendants, cause=f"user:{name}"
            )
        return raised

    async def delete(self, who: Principal, name: str) -> None:
        """Delete a user; its tokens die with it, and re-creating the name brings none back.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not write users.
            NotFound: no such user. Unavailable: storage is down.
        """
        actor = await self._authz.admin(who, "users:write")
        unrestricted = await self._authz.unrestricted(actor)

        async def run(conn: AsyncConnection) -> tuple[str, Raised]:
            user = await self._users.get(name, for_update=True, conn=conn)
            await self._authz.confirm(conn, actor)  # after the row, as in `update`
            if user is None:
                raise NotFound("no such user")
            if user.roles and not unrestricted:  # as in `update`: not a narrowed token's
                raise Forbidden(UNRESTRICTED_NEEDED)
            raised = await self._revocations.raise_generation(conn, user.name)
            await self._users.delete(user.name, conn=conn)
            # Its second factor goes with it, in the same transaction: a new user of the same
            # name must not inherit it, even if the process stops right after the commit.
            if self._factors is not None:
                await self._factors.forget(user.name, conn=conn)
            await self._audit.record(
                actor.name, "user_deleted", user.name, conn=conn, **by_token(actor)
            )
            await record_cascade_by(
                self._audit, conn, actor, raised.descendants, cause=f"user:{user.name}"
            )
            return user.name, raised

        deleted, raised = await run_db(self._engine, run, write=True, retry=False)
        await self._revocations.generation_raised(deleted, raised)
        security_event("user_deleted", by=actor.name[:64], user=deleted)
