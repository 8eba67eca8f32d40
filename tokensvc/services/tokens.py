"""The token service: minting, listing and revoking tokens, for every door (HTTP API and CLI).

It owns the order of each action, its revocation side effects and its audit record; the rule that
delegation never amplifies (tokensvc.tokens.delegation) is applied here, to every mint made with a token.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystore.service_keys import KEY_ID_PREFIX
from tokensvc.accounts.lockout.store import normalise_identity
from tokensvc.accounts.users import UserStore, spelling_of
from tokensvc.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TokensvcError,
    Unavailable,
)
from tokensvc.macaroons.describe import earliest_expiry
from tokensvc.operations.logs import security_event
from tokensvc.services.audit import by_token, record_cascade, record_cascade_by
from tokensvc.services.authorization import Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.principals import LocalOperator, Principal
from tokensvc.storage.audit import AuditLog
from tokensvc.storage.db import lock_name, run_db
from tokensvc.tokens.delegation import OUTLIVE_OPERATION, delegate, minted_generation
from tokensvc.tokens.minting import MintedToken, Minter, MintRequest, is_name
from tokensvc.tokens.registry import Descendant, TokenRecord, TokenRegistry
from tokensvc.tokens.revocation import Raised, Revocations
from tokensvc.tokens.verification import Verifier

log = logging.getLogger("tokensvc.services.tokens")


@dataclasses.dataclass(frozen=True, slots=True)
class TokenFilter:
    """Which registry rows to list: by subject, with or without revoked and expired ones."""

    subject: str | None = None
    include_revoked: bool = False
    include_expired: bool = False
    after: str | None = None
    limit: int = 100


@service
class TokenService:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        authorizer: Authorizer,
        minter: Minter,
        verifier: Verifier,
        registry: TokenRegistry,
        revocations: Revocations,
        users: UserStore,
        audit: AuditLog,
        default_ttl: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._engine = engine
        self._users = users
        self._authz = authorizer
        self._minter = minter
        self._verifier = verifier
        self._registry = registry
        self._revocations = revocations
        self._audit = audit
        self._default_ttl = default_ttl
        self._clock = clock

    async def mint(self, who: Principal, request: MintRequest) -> MintedToken:
        """A new token, registered and audited before it is returned.

        An empty `request.subject` means the minting token's own subject. Minted with a token, the
        request is bounded by that token (tokensvc.tokens.delegation): never more powerful than it.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not mint, or not this token.
            BadRequest: the request is malformed or asks for more than the service allows.
            Unavailable: storage is down.
        """
        actor = await self._authz.admin(who, "tokens:mint")
        subject = request.subject or actor.subject
        if not subject:
            raise BadRequest("subject is required")
        request = dataclasses.replace(request, subject=subject)
        request.validate()
        _one_spelling(subject)
        if request.admin and actor.verified is None:
            await self._admin_subject(subject)
        may_outlive = await self._authz.unbounded(actor, OUTLIVE_OPERATION)
        if actor.verified is not None:
            request = delegate(
                actor.verified,
                request,
                may_outlive=may_outlive,
                now=self._clock(),
                default_ttl=self._default_ttl,
            )
        if request.ttl is None:
            request = dataclasses.replace(request, ttl=self._default_ttl)
        minted_request = request

        parent = actor.verified

        # An admin's own service token is theirs already, and an admin-capable one is only ever
        # an enabled admin's (delegation; `_admin_subject` for the operator); any other must
        # not be for a user's name (checked in the transaction, under the name's lock, as
        # UserService.create checks the registry).
        service_for_other = request.service and not request.admin and subject != actor.subject

        async def in_transaction(conn: AsyncConnection, minted: MintedToken) -> None:
            # The minting token is still alive: a revocation of it cannot pass this child unseen
            # (either it committed first and the mint is refused, or its walk revokes the child).
            await self._authz.confirm(conn, actor)
            if service_for_other:
                await lock_name(conn, minted.subject)
                await self._not_a_user(conn, minted.subject)
            await self._audit.record(
                actor.name,
                "token_minted",
                minted.token_id,
                conn=conn,
                subject=minted.subject,
                admin=minted.admin,
                kind=minted.kind,
                expires_at=minted.expires_at,
                operations=minted_request.operations,
                resources=minted_request.resources,
                audience=minted_request.audiences,
                description=minted_request.description,
                carried_caveats=len(minted_request.carried),
                parent_id=None if parent is None else parent.token_id,
            )

        # A child of the minting token's own subject is born at the minting token's generation:
        # a revoke-all committed since the check above (by another request, on any replica)
        # revokes it too. A child for another subject is that subject's, read fresh; it dies
        # with its parent instead (the registry's `parent_id`, checked again in the transaction).
        born_at = (
            minted_generation(parent)
            if parent is not None and parent.subject == request.subject
            else None
        )
        minted = await self._minter.mint(
            request,
            created_by=actor.name,
            also=in_transaction,
            generation=born_at,
            parent_id=None if parent is None else parent.token_id,
            # Minted by a token bounded by its own expiry: bounded too, or a short-lived token
            # could mint a short child that mints a long one.
            bounded=not may_outlive,
        )

        security_event(
            "token_minted",
            by=actor.name[:64],
            subject=minted.subject,
            token_id=minted.token_id,
            admin=minted.admin,
            expires_at=minted.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            kind=minted.kind,
        )
        return minted

    async def list(self, who: Principal, query: TokenFilter) -> list[TokenRecord]:
        """Registry rows (metadata only, never a secret).

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not read the registry.
            BadRequest: a bad limit.
            Unavailable: storage is down.
        """
        await self._authz.admin(who, "tokens:read")
        if not 1 <= query.limit <= 1000:
            raise BadRequest("limit must be between 1 and 1000")
        return await self._registry.list(
            now=self._clock(),
            subject=query.subject,
            include_revoked=query.include_revoked,
            include_expired=query.include_expired,
            after=query.after,
            limit=query.limit,
        )

    async def revoke(self, who: Principal, token_id: str) -> None:
        """Revoke one token by id: an admin, or a token of the same subject.

        Raises:
            InvalidToken, CaveatDenied: the principal's token is bad or may not revoke.
            NotFound: no such token, or another subject's (the same answer, so ids stay secret).
            Unavailable: storage is down.
        """
        try:
            actor = await self._authz.admin(who, "tokens:revoke")
            is_admin = True
        except Forbidden:
            # Not an admin: a genuine token of the same subject may revoke its own tokens.
            actor = await self._authz.holder(who, "tokens:revoke")
            is_admin = False
        # Token ids are hex; anything else cannot name a row (and NUL would upset PostgreSQL).
        valid_id = 0 < len(token_id) <= 64 and token_id.isascii() and token_id.isalnum()
        record = await self._registry.get(token_id) if valid_id else None
        if record is None or (not is_admin and record.subject != actor.subject):
            raise NotFound("no such token")
        await self._revoke(
            actor.name,
            record,
            via="id",
            first=partial(self._authz.confirm, actor=actor),
            acting=by_token(actor),
        )

    async def _admin_subject(self, subject: str) -> None:
        """Forbidden unless `subject` is an enabled admin, for the break-glass door's admin
        tokens (a token's admin-capable ones are for its own subject, tokens.delegation): an
        admin-capable token for anyone else would lie dormant until that name became an admin
        (red team: minted for a future user, it came alive with the role)."""
        user = await self._users.get(subject)
        if user is None or user.name != subject or user.disabled or not user.is_admin:
            raise Forbidden(
                "an admin-capable token can only be minted for an enabled admin user"
                " (make one with `tokensvc user add NAME --admin --local`)"
            )

    async def _not_a_user(self, conn: AsyncConnection, subject: str) -> None:
        """Conflict if `subject` is a user's name, for service tokens: a service token of a
        user's name is that user's, and whoever may set a role-less user's password (a
        `users:write` delegate) acts as its subject (red team: a delegate created the user
        `payments` first, and the service token later minted for it was theirs to use and,
        deleting the user, to kill). Run under the name's lock, as the user's creation checks
        the registry under it: of the two racing, one sees the other."""
        user = await self._users.get(subject, conn=conn)
        if user is not None and user.name == subject:
            raise Conflict(
                f"{subject!r} is a user's name: a service token for it would be that user's;"
                " give the service a subject no user has"
            )

    async def revoke_presented(self, token: str, *, operator: LocalOperator | None = None) -> None:
        """Whoever holds a genuine token may burn it (also the leak-report path).

        Anything that is not a genuine token of ours changes nothing and raises nothing: the
        caller never learns which it was. Audited as done by the token's subject (its holder),
        or by `operator` when the CLI's break-glass door burns it (`local:<os user>`).

        Raises:
            Unavailable: storage or the key store is down (the token could not be judged).
        """
        try:
            token_id, subject, key_id, key_expires = await self._verifier.authenticate(token)
        except Unavailable:  # could not be judged: the caller must ask again
            raise
        except TokensvcError:  # not a token, forged, unknown key, too large
            return
        if token_id in self._revocations.tokens:
            return
        now = self._clock()
        if await self._stale_copy(token, token_id, now):
            return
        # A genuine token minted before the registry existed gets a row now, so it can be denied.
        register = TokenRecord(
            token_id=token_id,
            subject=subject,
            created_by=subject,
            created_at=now,
            expires_at=datetime.fromtimestamp(key_expires, UTC),
            description="(registered when revoked)",
            kind="service" if key_id.startswith(KEY_ID_PREFIX) else "rotating",
        )
        by = subject if operator is None else operator.name
        await self._revoke(by, register, via="presented", register=True)

    async def _stale_copy(self, token: str, token_id: str, now: datetime) -> bool:
        """Whether `token` is a copy its holder narrowed in time (offline attenuation keeps the
        token id: an expiry before the token's own, as registered) that has expired as
        presented. Such a copy is harmless, and revoking its id would let whoever kept it kill
        the token and everything minted with it (red team: a copy expired an hour earlier did;
        then the same copy once the token itself had expired, taking a month-long service
        token it had minted). A live copy, however narrowed, does revoke it: copies share the
        id, and a leaked one must die; and so does the token itself, even expired, for what it
        minted."""
        presented_expiry = earliest_expiry(token)
        if presented_expiry is None or presented_expiry > now.timestamp():
            return False
        record = await self._registry.get(token_id)
        if record is None or not record.narrowed_in_time(presented_expiry):
            return False
        security_event(
            "token_revoke_ignored",
            token_id=token_id,
            subject=record.subject[:64],
            reason="a narrowed copy, expired as presented",
        )
        return True

    async def _revoke(
        self,
        by: str,
        record: TokenRecord,
        *,
        via: str,
        register: bool = False,
        first: Callable[[AsyncConnection], Awaitable[None]] | None = None,
        acting: dict[str, str] | None = None,
    ) -> None:
        """`acting`: audit details naming the token it was done with (services.audit.by_token)."""
        revoked_here = False

        async def audit_rows(
            conn: AsyncConnection, descendants: list[Descendant], newly: bool
        ) -> None:
            # Whether this transaction revoked it, not whether it was revoked when read: of
            # requests revoking one token at once, one writes the row (red team: 8 did).
            nonlocal revoked_here
            revoked_here = newly
            if newly:
                await self._audit.record(
                    by,
                    "token_revoked",
                    record.token_id,
                    conn=conn,
                    subject=record.subject,
                    via=via,
                    descendants=len(descendants),
                    **(acting or {}),
                )
            await record_cascade(
                self._audit, conn, by, descendants, cause=record.token_id, acting=acting
            )

        revoked = await self._revocations.revoke_token(
            record.token_id, register=record if register else None, first=first, also=audit_rows
        )
        if revoked is not None and (revoked.descendants or revoked_here):
            security_event(
                "token_revoked",
                by=by[:64],
                subject=record.subject,
                token_id=record.token_id,
                via=via,
                descendants=len(revoked.descendants),
            )

    async def revoke_all(self, who: Principal, subject: str) -> int:
        """Every token of `subject` issued until now dies; returns the subject's new generation.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not revoke.
            BadRequest: not a usable subject. NotFound: no token was issued to the subject.
            Unavailable: storage is down.
        """
        actor = await self._authz.admin(who, "tokens:revoke")
        # The rule minting has: every subject a token can have can have its tokens revoked.
        if not is_name(subject):
            raise BadRequest("subject must be 1-255 characters, none of them a control")

        async def run(conn: AsyncConnection) -> Raised:
            await self._authz.confirm(conn, actor)
            # Subjects are exact (`Carol` is not the user carol): a revoke-all of another
            # spelling of a user's name, which no token was issued to, would revoke nothing and
            # look, in the answer and the audit trail, like an incident handled (red team:
            # `Carol`, `carol `, `ｃarol` for carol). Any other subject is taken, registered or
            # not: tokens minted before the registry existed must stay revocable.
            if not await self._registry.issued_to(conn, subject):
                near = await self._users.get(normalise_identity(subject), conn=conn)
                if near is not None and near.name != subject:
                    raise NotFound(
                        "no token was issued to this subject, and subjects are exact: the"
                        f" user's tokens carry its name as stored, {near.name!r}"
                    )
            raised = await self._revocations.raise_generation(conn, subject)
            await self._audit.record(
                actor.name,
                "tokens_revoked_all",
                subject,
                conn=conn,
                **by_token(actor),
                generation=raised.generation,
                descendants=len(raised.descendants),
            )
            await record_cascade_by(
                self._audit, conn, actor, raised.descendants, cause=f"subject:{subject}"
            )
            return raised

        raised = await run_db(self._engine, run, write=True, retry=False)
        await self._revocations.generation_raised(subject, raised)
        security_event(
            "tokens_revoked_all",
            by=actor.name[:64],
            subject=subject[:64],
            generation=raised.generation,
            descendants=len(raised.descendants),
        )
        return raised.generation


def _one_spelling(subject: str) -> None:
    """BadRequest if `subject` is another spelling (case, width, compatibility form) of a name
    a user could have: such a subject must be written as that name.

    Subjects are exact wherever a token is judged, but a backend may compare them loosely (a
    case-insensitive collation, NFKC): red team (helper-66), a service token for `Ledger` (or
    `ｂｉｌｌｉｎｇ`), then a `users:write` delegate creating the user `ledger` with a password of
    its choosing, whose logins such a backend took for the service; and the other order, a
    service token for `FIN` while the user `fin` existed. With one spelling per name, the exact
    checks of user creation (the registry's subjects) and of service mints (users' names) see
    every collision. "Another spelling" is read as loosely as a collation compares: case,
    width, accents and invisible characters aside (helper-68: `le\\u200bdger`, `ledger\\u00ad`
    and `adm\\u0130n` passed, and an ICU case-insensitive collation calls them equal).
    """
    spelled = spelling_of(subject)
    if spelled is not None:
        raise BadRequest(
            f"subject {subject[:64]!r} is another spelling of the name {spelled!r}:"
            f" write it as {spelled!r}"
        )
