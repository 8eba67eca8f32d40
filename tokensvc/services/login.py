"""The password-for-macaroon exchange: lockout first, argon2 second, a token last.

Order matters. The lockout check runs before argon2 so a locked identity costs the attacker
nothing and us nothing; it also counts the attempt up front (see tokensvc.accounts.lockout), so concurrent
guesses cannot slip past the threshold. An attempt that is counted but then cannot be judged (the
database is down, the hasher overloaded, the request cancelled) is taken back: only a password
that was checked and wrong counts against an identity. Unknown users, disabled users and wrong
passwords take the same path and give the same answer. Before either, a login the hasher has no
room for even at the best priority it could get is refused (503) without touching the lockout
store or the database.

Password checks queue in a fair order (tokensvc.accounts.admission): the lockout store's answer
to begin_attempt says whether this identity recently logged in from this address (trusted: it
goes first) or whether the attempt's counters hold recent failures (suspect: it goes last, and
is shed first); `login(..., second_factor=True)` puts an attempt carrying a valid MFA
challenge before both. An attempt the hasher then has no room for is shed before the user
look-up and taken back like any other unjudged attempt. The priority depends only on the
(identity, address) pair's own history, never on whether the user exists: an unknown identity
and a known one from a new address queue alike, so the 503s tell an attacker nothing.

The subject's generation is read before the password is checked, and the token minted at it: a
password change (or disable, or revoke-all) that commits while argon2 runs revokes this token too.

The security events name the attempted identity by `user_hash`, a keyed hash of it (the same for
`Alice` and `alice`, and on every replica), and by `user` only once it is known to be an existing
user: what is typed as a user name is sometimes a password, and an unknown name is never logged
in clear. Lock and unavailable events come before the user look-up, so they carry the hash
alone; it matches the `user_hash` of that user's other events. Computing it costs every attempt
the same, and the answers do not change, so this tells a client nothing about who exists.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from tokensvc.accounts.admission import OVERLOADED, CheckPriority
from tokensvc.accounts.lockout import AttemptStanding, LockoutStore
from tokensvc.accounts.lockout.store import hash_identity
from tokensvc.accounts.passwords import PasswordHasher
from tokensvc.accounts.users import UserStore, user_name_or_none
from tokensvc.errors import BadRequest, LockedOut, Unauthenticated, Unavailable
from tokensvc.operations import metrics
from tokensvc.operations.durations import format_duration
from tokensvc.operations.logs import security_event
from tokensvc.services.boundary import service
from tokensvc.tokens.generations import SubjectGenerations
from tokensvc.tokens.minting import MintedToken, Minter, MintRequest

log = logging.getLogger("tokensvc.services.login")

GENERIC_FAILURE = "invalid username or password"
# Hex digits of the identity hash in log events: plenty to tell identities apart in a log.
_LOGGED_HASH_DIGITS = 16


@dataclass(frozen=True)
class LoginRequest:
    username: str
    password: str
    client_ip: str
    ttl: timedelta | None = None
    operations: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the password never reaches a log or a traceback
        return f"LoginRequest(username={self.username!r}, client_ip={self.client_ip!r})"


@service
class LoginService:
    def __init__(
        self,
        *,
        users: UserStore,
        generations: SubjectGenerations,
        hasher: PasswordHasher,
        lockout: LockoutStore,
        minter: Minter,
        clock: Callable[[], datetime],
        default_ttl: timedelta,
        max_ttl: timedelta,
        identity_log_key: bytes | None = None,
    ) -> None:
        """`identity_log_key` keys the `user_hash` of log events; give every replica the same
        one (the app derives it from the KEK). Without one, a random key for this process."""
        self._log_key = identity_log_key or secrets.token_bytes(32)
        self._users = users
        self._generations = generations
        self._hasher = hasher
        self._lockout = lockout
        self._minter = minter
        self._clock = clock
        self._default_ttl = default_ttl
        self._max_ttl = min(max_ttl, minter.max_ttl)

    async def login(self, request: LoginRequest, *, second_factor: bool = False) -> MintedToken:
        """A token for the user.

        `second_factor`: the caller has checked a valid MFA challenge for this identity and
        address; its password check then goes before every other in the hasher's queue.

        Raises:
            Unauthenticated: unknown user, disabled user or wrong password (one answer for all).
            LockedOut: too many failures for this identity or address.
            BadRequest: a TTL out of range.
            Unavailable: the lockout store, the database or the hasher is unavailable; the
                attempt is then not counted against the identity.
        """
        ttl = request.ttl if request.ttl is not None else min(self._default_ttl, self._max_ttl)
        if ttl > self._max_ttl or ttl <= timedelta(0):
            raise BadRequest(f"ttl must be between 1s and {format_duration(self._max_ttl)}")
        # Shed first: in a storm most logins find the hasher's queue full, and each would
        # otherwise cost two lockout round trips and a user look-up before its 503.
        best = CheckPriority.SECOND_FACTOR if second_factor else CheckPriority.TRUSTED
        self._hasher.check_capacity(best)
        identity = request.username
        user_hash = self._identity_hash(identity)
        now = self._clock().timestamp()
        standing: AttemptStanding | None = None
        try:
            # Room for trusted attempts only, as in a storm: one read-only round trip decides,
            # and an untrusted attempt is shed with nothing counted that must be taken back.
            if (
                second_factor
                or self._hasher.has_room(CheckPriority.NORMAL)
                or await self._lockout.is_trusted(
                    identity=identity, client_ip=request.client_ip, now=now
                )
            ):
                standing = await self._lockout.begin_attempt(
                    identity=identity, client_ip=request.client_ip, now=now
                )
        except LockedOut:
            metrics.LOGIN_LOCKED.inc()
            security_event(
                "authn_login_lock",
                level=logging.WARNING,
                user_hash=user_hash,
                client_ip=request.client_ip,
            )
            raise
        except Unavailable:
            metrics.LOGIN_UNAVAILABLE.inc()
            security_event(
                "authn_login_fail",
                level=logging.WARNING,
                user_hash=user_hash,
                client_ip=request.client_ip,
                reason="lockout store unavailable",
            )
            raise

        if standing is None:
            raise Unavailable(OVERLOADED, retry_after=1)
        priority = _priority(standing, second_factor=second_factor)
        judged = False
        try:
            # Shed here, before the database, if the queue has no room at this priority.
            self._hasher.check_capacity(priority)
            # The generation first, the user row second: a password change, disable or role loss
            # that commits between the two reads has already raised the generation this token is
            # minted at, or is seen in the row whose hash is checked — never neither. Every name
            # a user could have pays the same two reads, known or not (no timing oracle); a name
            # no user could have (any byte may come in) is sent to the database by neither.
            subject = user_name_or_none(identity)
            generation = await self._generations.fetch(subject) if subject is not None else 0
            user = await self._users.get(subject) if subject is not None else None
            stored = user.password_hash if user is not None and not user.disabled else None
            result = await self._hasher.verify(stored, request.password, priority=priority)
            judged = True
        finally:
            if not judged:
                # Never judged (database down, hasher overloaded, request cancelled): uncount it.
                await self._abandon(identity=identity, client_ip=request.client_ip, now=now)
        if not result.ok or user is None:
            metrics.LOGIN_FAIL.inc()
            security_event(
                "authn_login_fail",
                level=logging.WARNING,
                # The stored name, never the typed one: no user, no name in the log.
                user=user.name if user is not None else None,
                user_hash=user_hash,
                client_ip=request.client_ip,
            )
            raise Unauthenticated(GENERIC_FAILURE)

        await self._lockout.record_success(identity=identity, client_ip=request.client_ip, now=now)
        if result.needs_rehash and stored is not None:
            await self._users.rehash(
                user.name,
                old_hash=stored,
                new_hash=await self._hasher.rehash(request.password, priority=priority),
            )
        minted = await self._minter.mint(
            MintRequest(
                subject=user.name,
                ttl=ttl,
                operations=request.operations,
                resources=request.resources,
                audiences=request.audiences,
                cidrs=request.cidrs,
                admin=user.is_admin,
            ),
            generation=generation,
        )
        metrics.LOGIN_SUCCESS.inc()
        security_event(
            "authn_login_success",
            user=user.name,
            user_hash=user_hash,
            client_ip=request.client_ip,
            token_id=minted.token_id,
            rehashed=result.needs_rehash,
        )
        return minted

    async def _abandon(self, *, identity: str, client_ip: str, now: float) -> None:
        try:
            await self._lockout.abandon_attempt(identity=identity, client_ip=client_ip, now=now)
        except Exception:  # the original failure is the one to report
            log.warning("could not take back an attempt that was never judged", exc_info=True)

    def _identity_hash(self, identity: str) -> str:
        """How log events name `identity`: a keyed hash of its normalised form, shortened."""
        return hash_identity(identity, key=self._log_key)[:_LOGGED_HASH_DIGITS]


def _priority(standing: AttemptStanding, *, second_factor: bool) -> CheckPriority:
    """Where a password check queues: see tokensvc.accounts.admission."""
    if second_factor:
        return CheckPriority.SECOND_FACTOR
    if standing.trusted:
        return CheckPriority.TRUSTED
    return CheckPriority.SUSPECT if standing.recent_failures else CheckPriority.NORMAL
