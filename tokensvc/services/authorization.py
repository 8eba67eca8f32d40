"""Authorising a principal for an operation on tokensvc's own API.

An admin operation needs an admin-capable token (a flag in its signed identifier) whose caveats
allow the operation on this API (audience `tokensvc`, the request's path and client address),
held by an enabled user with the admin role — and, when one of that user's roles requires MFA
(TOKENSVC_MFA_REQUIRED_ROLES), a token minted after a second factor (the identifier's flag, which
no holder can add), so an admin token minted before the policy or without a factor no longer
administers. Its revocation, its root key's and its subject's generation are read fresh, not from
this process's view, which learns of another replica's revocations only at its next refresh, and
read again inside every write's transaction with the token's row locked (`confirm`), so that
nothing a token does commits after its revocation has.
What could create more power than the token holds asks more (`unbounded`: outliving it;
`unrestricted`: granting a role or taking over a role-holder). Other operations
(revoking one's own tokens, introspection) need any genuine token whose caveats allow them. A
local operator is authorised for everything.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from keystore.service_keys import KEY_ID_PREFIX
from tokensvc.accounts.users import UserStore
from tokensvc.errors import CaveatDenied, Forbidden, InvalidToken
from tokensvc.operations.logs import security_event
from tokensvc.services.principals import Actor, BearerToken, LocalOperator, Principal
from tokensvc.tokens.delegation import minted_generation, restricting_caveats
from tokensvc.tokens.registry import TokenRegistry
from tokensvc.tokens.subjects import SubjectStore
from tokensvc.tokens.verification import GenerationSource, Verified, Verifier

#: The audience of tokensvc's own API: an admin token narrowed to another audience can't call it.
API_AUDIENCE: Final = "tokensvc"

#: Why a narrowed admin token may not grant a role or take over a role-holder (`unrestricted`).
UNRESTRICTED_NEEDED: Final = (
    "granting a role, or any change to a user who holds one (password, second factor, lockout,"
    " roles, disabling, re-enabling, deletion), needs an admin token that is not narrowed (no"
    " caveats beyond its own expiry)"
)


class KeyRevoked(Protocol):
    async def __call__(self, key_id: str, *, conn: AsyncConnection | None = None) -> bool:
        """Whether root key `key_id` has been revoked, read from the database (in `conn`'s
        transaction if given)."""
        ...


class Authorizer:
    def __init__(
        self,
        *,
        verifier: Verifier,
        users: UserStore,
        generations: GenerationSource,
        subjects: SubjectStore,
        registry: TokenRegistry,
        key_revoked: KeyRevoked,
        mfa_required_roles: frozenset[str] = frozenset(),
    ) -> None:
        """`key_revoked` reads from the database whether a root key has been revoked (a replica
        learns of another's key revocations only at its next refresh)."""
        self._verifier = verifier
        self._users = users
        self._generations = generations
        self._subjects = subjects
        self._registry = registry
        self._key_revoked = key_revoked
        self._mfa_roles = mfa_required_roles

    async def admin(self, who: Principal, operation: str) -> Actor:
        """An actor allowed the admin `operation`.

        Raises:
            InvalidToken: the token is not genuine, expired or revoked (401).
            CaveatDenied: its caveats do not allow `operation` here (403).
            Forbidden: it is not admin-capable, its subject is not an enabled admin, or the
                subject's role requires MFA and the token was minted without it (403).
        """
        if isinstance(who, LocalOperator):
            return Actor(who.name, who, None)
        verified = await self._verify(who, operation)
        if not verified.admin:
            _denied(verified, operation, "token is not admin-capable")
            raise Forbidden("this token is not admin-capable")
        user = await self._users.get(verified.subject)
        if user is None or user.name != verified.subject or user.disabled or not user.is_admin:
            _denied(verified, operation, "subject is not an enabled admin")
            raise Forbidden("the token's subject is not an enabled admin user")
        if not verified.mfa and self._mfa_roles.intersection(user.roles):
            _denied(verified, operation, "admin token minted without a second factor")
            raise Forbidden("this role requires MFA: log in again with a second factor")
        # The verifier judged the token against this process's revocations and subject
        # generations, which learn of another replica's revocation, revoke-all or password change
        # at their next refresh: a bound fit for /v1/verify, not for administering. Within it a
        # revoked admin token could mint a child, or create a user, that outlives its revocation.
        minted_at = minted_generation(verified)
        if minted_at is not None and await self._generations.fetch(verified.subject) > minted_at:
            _denied(verified, operation, "subject generation revoked (read fresh)")
            raise InvalidToken("token revoked (subject generation)")
        record = await self._registry.get(verified.token_id)
        if record is not None and record.revoked_at is not None:
            _denied(verified, operation, "token revoked (read fresh)")
            raise InvalidToken("token revoked")
        if await self._key_revoked(verified.key_id):
            _denied(verified, operation, "root key revoked (read fresh)")
            raise InvalidToken("root key revoked")
        return Actor(verified.subject, who, verified)

    async def confirm(self, conn: AsyncConnection, actor: Actor) -> None:
        """In the transaction of a write `actor` was authorised for: its token is still alive,
        so that nothing a token does commits after its revocation has (red team: a request
        authorised just before its admin token was revoked, or its user deleted, committed a new
        admin or another admin's password after, the hash between check and write widening the
        window to seconds).

        The token's registry row is locked until the transaction ends. Every revocation
        locks it first: by id (TokenRegistry.revoke), of its root key, or of its subject —
        revoke-all, and the password change, disabling, lost role or deletion of its user, each
        of which raises the subject's generation (Revocations.raise_generation). So either the
        revocation committed first and is read here (the write is refused), or it waits for
        this commit (TokenRegistry.lock_acting). A local operator has no token to lose.

        Raises:
            InvalidToken: the token, its subject's tokens or its root key have been revoked
                since the token was checked.
        """
        verified = actor.verified
        if verified is None:
            return
        record = await self._registry.lock_acting(conn, verified.token_id)
        if record is None:
            # Every token this service mints has its row before it is returned, and a row goes
            # only long after its token expired: a live token without one was signed with a
            # stolen root key. It may not write — above all not mint, or its children (on keys
            # of their own, with no lineage to follow) would outlive the stolen key's
            # revocation (red team, helper-61).
            _denied(verified, "confirm", "no registry row (not issued by this service)")
            raise InvalidToken("token not issued by this service")
        if record.revoked_at is not None:
            _denied(verified, "confirm", "token revoked (in the write's transaction)")
            raise InvalidToken("token revoked")
        if await self._key_revoked(verified.key_id, conn=conn):
            _denied(verified, "confirm", "root key revoked (in the write's transaction)")
            raise InvalidToken("root key revoked")
        minted_at = minted_generation(verified)
        if minted_at is not None:
            current = await self._subjects.generation(verified.subject, conn=conn)
            if current > minted_at:
                _denied(
                    verified, "confirm", "subject generation revoked (in the write's transaction)"
                )
                raise InvalidToken("token revoked (subject generation)")
            if minted_at > current:
                # Minted at a generation the subject never reached: forged (children are born
                # at their minter's generation, so it would be handed on, past every revoke-all).
                _denied(verified, "confirm", "generation ahead of its subject's")
                raise InvalidToken("token not issued by this service")

    async def holder(self, who: Principal, operation: str) -> Actor:
        """An actor whose token (any genuine one) allows `operation` on this API.

        Raises:
            InvalidToken: the token is not genuine, expired or revoked (401).
            CaveatDenied: its caveats do not allow `operation` here (403).
        """
        if isinstance(who, LocalOperator):
            return Actor(who.name, who, None)
        verified = await self._verify(who, operation)
        return Actor(verified.subject, who, verified)

    async def service(self, who: Principal, operation: str) -> Actor:
        """An actor allowed `operation` whose token is a service token (minted by an admin, on a
        root key of its own, or narrowed from one) or an enabled admin's admin-capable token.

        For what tells about other subjects (the revocation stream names every subject whose
        tokens are revoked): a user's own login token, however narrowed, is not enough.

        Raises:
            InvalidToken: the token is not genuine, expired or revoked (401).
            CaveatDenied: its caveats do not allow `operation` here (403).
            Forbidden: neither a service token nor an enabled admin's admin token (403).
        """
        if isinstance(who, LocalOperator):
            return Actor(who.name, who, None)
        verified = await self._verify(who, operation)
        if verified.key_id.startswith(KEY_ID_PREFIX):
            return Actor(verified.subject, who, verified)
        if not verified.admin:
            _denied(verified, operation, "neither a service token nor admin-capable")
            raise Forbidden("this needs a service token (or an admin's token)")
        return await self.admin(who, operation)

    async def also_allows(self, actor: Actor, operation: str) -> bool:
        """Whether `actor`'s token would also be allowed `operation` here (a local operator is)."""
        who = actor.principal
        if isinstance(who, LocalOperator):
            return True
        try:
            await self._verify(who, operation)
        except CaveatDenied:
            return False
        return True

    async def unbounded(self, actor: Actor, operation: str) -> bool:
        """Whether `actor` may create what outlives its token (a child past its expiry, with
        `operation` = `tokens:outlive`): its caveats allow `operation` here, its holder did not
        narrow its lifetime (an expiry earlier than the one it was minted with), and it was not
        minted by a token that was itself bounded so (the registry's `bounded`). A local
        operator is unbounded."""
        verified = actor.verified
        if verified is None:
            return True
        return await self.also_allows(actor, operation) and await self._lifetime_intact(verified)

    async def unrestricted(self, actor: Actor) -> bool:
        """Whether `actor` holds an admin's full authority: a local operator, or a token with no
        restricting caveat (nothing delegation would carry: operations, resources, audience,
        networks, not-before, allow/deny) and an unbounded, unnarrowed lifetime. What creates a
        credential of unlimited power — granting a role, taking over a role-holder's account —
        needs it: a narrowed token could otherwise mint an admin more powerful than itself."""
        verified = actor.verified
        if verified is None:
            return True
        return not restricting_caveats(verified) and await self._lifetime_intact(verified)

    async def _lifetime_intact(self, verified: Verified) -> bool:
        record = await self._registry.get(verified.token_id)
        if record is None or record.bounded or verified.expires_at is None:
            return False
        return not record.narrowed_in_time(verified.expires_at)

    async def _verify(self, who: BearerToken, operation: str) -> Verified:
        return await self._verifier.verify(
            who.token,
            operation=operation,
            resource=who.resource,
            audience=API_AUDIENCE,
            client_ip=who.client_ip,
        )


def _denied(verified: Verified, operation: str, reason: str) -> None:
    security_event(
        "authz_fail",
        level=logging.WARNING,
        user=verified.subject[:64],
        token_id=verified.token_id,
        operation=operation,
        reason=reason,
    )
