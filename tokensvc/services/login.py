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
is shed first); the argon2 check of a recovery code sent for a valid MFA challenge goes before
both (tokensvc.accounts.secondfactor). An attempt the hasher then has no room for is shed before the user
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

The second factor (docs/security.md, "Second factor"). For a user with an active TOTP
enrolment a right password yields no token but a challenge (`SecondFactorNeeded`, 401), and so
does every wrong password and unknown name: a sealed decoy of the same length (see
tokensvc.accounts.otpstate), so the password step says nothing about the password of an
enrolled user. Every name a user could have pays the same reads (generation, user, TOTP
secret). The right password of an enrolled user stays counted on the password counters, as a
wrong one is, until the second factor holds (then `record_success` settles the count and trusts
the address): were it taken back, whether the next attempt is locked out would tell an attacker
which of its guesses was the password.

The second step (`challenge` + `otp`, or `otp` with the password in one call) counts the attempt
against OTP counters of their own (per identity, identity + IP, IP), before any code is
compared, so guesses at a code are bounded by their threshold however many run at once; they
never touch the password counters, so an attacker who knows a password cannot lock the owner's
password step through them. A challenge is bound to the client address it was issued to, the
generation read before its password was checked (a password change meanwhile revokes the
token), dies at its expiry, and yields at most one token. A decoy's second step costs what a
real one does (a recovery-code-shaped guess runs argon2 either way) and fails the same way.

A user in a role that requires MFA (TOKENSVC_MFA_REQUIRED_ROLES) who is not enrolled gets a
token that can only enrol (operation `mfa:enroll`, never admin-capable), whatever the roles.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from keystore.totp_secrets import TotpSecret
from tokensvc.accounts.admission import OVERLOADED, CheckPriority
from tokensvc.accounts.lockout import AttemptStanding, LockoutStore, judged_or_taken_back
from tokensvc.accounts.lockout.store import hash_identity, hash_ip
from tokensvc.accounts.otpstate import Challenge, ChallengeCodec
from tokensvc.accounts.passwords import PasswordHasher
from tokensvc.accounts.secondfactor import CLOCK_SKEW_MARGIN, Factor, SecondFactors
from tokensvc.accounts.users import User, UserStore, user_name_or_none
from tokensvc.errors import (
    BadRequest,
    LockedOut,
    SecondFactorNeeded,
    Unauthenticated,
    Unavailable,
)
from tokensvc.operations import metrics
from tokensvc.operations.durations import format_duration
from tokensvc.operations.logs import security_event
from tokensvc.services.boundary import service
from tokensvc.tokens.generations import SubjectGenerations
from tokensvc.tokens.minting import MintedToken, Minter, MintRequest

log = logging.getLogger("tokensvc.services.login")

GENERIC_FAILURE = "invalid username or password"
#: The password step's one answer when it yields no token (wrong, unknown, or needs a code).
PASSWORD_STEP_FAILURE = "invalid username or password, or a second factor is required"  # noqa: S105 - a message
#: The second step's one answer when it yields no token.
SECOND_STEP_FAILURE = "invalid, expired or used challenge, or wrong code"
#: The answer to a wrong password at re-authentication (the caller is already signed in).
REAUTH_FAILURE = "wrong password"
#: What a token minted for a user who must enrol first allows (tokensvc.services.mfa).
ENROL_OPERATION = "mfa:enroll"
#: How long a challenge lives: time to open the authenticator app, not to go for lunch.
CHALLENGE_SECONDS = 300
# Hex digits of the identity hash in log events: plenty to tell identities apart in a log.
_LOGGED_HASH_DIGITS = 16


@dataclass(frozen=True)
class LoginRequest:
    """A password step (`username`, `password`, optionally `otp` in the same call) or a second
    step (`challenge` and `otp`, no password)."""

    username: str
    password: str
    client_ip: str
    ttl: timedelta | None = None
    operations: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    otp: str | None = None
    challenge: str | None = None

    def __repr__(self) -> str:  # the password and the code never reach a log or a traceback
        return f"LoginRequest(username={self.username!r}, client_ip={self.client_ip!r})"


@dataclass(frozen=True, slots=True)
class _PasswordStep:
    """What the password step established: `user` None unless the password was right."""

    user: User | None
    generation: int
    secret: TotpSecret | None  # the user's active TOTP secret, if enrolled
    rehashed: bool = False


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
        second_factors: SecondFactors,
        otp_lockout: LockoutStore,
        challenges: ChallengeCodec | None = None,
        mfa_required_roles: frozenset[str] = frozenset(),
        shed_delay: float = 0.0,
    ) -> None:
        """`identity_log_key` keys the `user_hash` of log events; give every replica the same
        one (the app derives it from the KEK). Without one, a random key for this process.
        `otp_lockout` counts second-factor failures, apart from `lockout` (passwords);
        `challenges` seals MFA challenges (every replica needs the same key); `shed_delay`:
        seconds before a login the hasher has no room for is answered (see `login`)."""
        self._shed_delay = shed_delay
        self._log_key = identity_log_key or secrets.token_bytes(32)
        self._factors = second_factors
        self._otp_lockout = otp_lockout
        # Without a codec, one with a random key: challenges then open in this process only.
        self._challenges = challenges or ChallengeCodec(secrets.token_bytes(32))
        self._mfa_roles = mfa_required_roles
        self._users = users
        self._generations = generations
        self._hasher = hasher
        self._lockout = lockout
        self._minter = minter
        self._clock = clock
        self._default_ttl = default_ttl
        self._max_ttl = min(max_ttl, minter.max_ttl)

    async def login(self, request: LoginRequest) -> MintedToken:
        """A token for the user (see `_login`). A login refused because the hasher has no room
        for it is answered `shed_delay` seconds late: under a credential-stuffing storm from a
        tool that retries at once, each refusal then costs a timer instead of inviting the next
        request at once, so the storm cannot turn cheap refusals into CPU taken from /v1/verify.
        Only these refusals wait (never a check that runs, a lockout or a success), and every
        attempt the hasher sheds waits alike, so the delay tells nothing about the account.
        """
        try:
            return await self._login(request)
        except Unavailable as exc:
            if self._shed_delay > 0 and exc.message == OVERLOADED:
                await asyncio.sleep(self._shed_delay)
            raise

    async def _login(self, request: LoginRequest) -> MintedToken:
        """A token for the user.

        Raises:
            SecondFactorNeeded: the password step yielded no token (unknown user, disabled
                user, wrong password, or a right one that needs a code: one answer for all).
            Unauthenticated: a second step (or a one-call password and code) that failed.
            LockedOut: too many failures for this identity or address (password or code).
            BadRequest: a TTL out of range.
            Unavailable: the lockout store, the database or the hasher is unavailable; the
                attempt is then not counted against the identity.
        """
        ttl = request.ttl if request.ttl is not None else min(self._default_ttl, self._max_ttl)
        if ttl > self._max_ttl or ttl <= timedelta(0):
            raise BadRequest(f"ttl must be between 1s and {format_duration(self._max_ttl)}")
        if request.challenge is not None:
            challenge = self._challenges.open(request.challenge, now=self._clock().timestamp())
            if challenge is None:
                metrics.LOGIN_MFA_FAIL.inc()
                raise Unauthenticated(SECOND_STEP_FAILURE)
            return await self._second_step(request, challenge, ttl=ttl, secret=None, read=False)
        # Shed first: in a storm most logins find the hasher's queue full, and each would
        # otherwise cost two lockout round trips and a user look-up before its 503.
        self._hasher.check_capacity(CheckPriority.TRUSTED)
        identity = request.username
        user_hash = self._identity_hash(identity)
        now = self._clock().timestamp()
        step = await self._password_step(request, identity=identity, user_hash=user_hash, now=now)
        user = step.user
        if user is None or step.secret is not None:
            challenge = Challenge(
                nonce="",
                identity=hash_identity(identity, key=self._log_key),
                user=user.name if user is not None else None,
                client_ip=hash_ip(request.client_ip, key=self._log_key),
                generation=step.generation,
                expires_at=now + CHALLENGE_SECONDS,
            )
            if request.otp is not None:  # password and code in one call (scripts)
                # The password step read the secret for every name, right password or not.
                return await self._second_step(
                    request, challenge, ttl=ttl, secret=step.secret, read=True
                )
            metrics.LOGIN_MFA_CHALLENGE.inc()
            raise SecondFactorNeeded(PASSWORD_STEP_FAILURE, challenge=self._issue(challenge))

        enrol_only = bool(self._mfa_roles.intersection(user.roles))
        return await self._mint(
            request,
            user,
            user_hash=user_hash,
            ttl=ttl,
            generation=step.generation,
            mfa=False,
            enrol_only=enrol_only,
            rehashed=step.rehashed,
        )

    async def reauthenticate(self, user: str, *, password: str, client_ip: str) -> None:
        """Check an authenticated user's current password again, before a sensitive change
        (enrolling a second factor): the same lockout counters, hasher queue and order as a
        login, so a wrong password counts as a failed login for `user`.

        The caller already holds a token for `user`, so the answer may say plainly whether the
        password was right (no oracle to hide), and a right one settles the count even when a
        second factor is active.

        Raises:
            Unauthenticated: the password is wrong (or the user is gone or disabled).
            LockedOut: too many failures for this identity or address.
            Unavailable: the lockout store, the database or the hasher is unavailable; the
                attempt is then not counted.
        """
        if not password:
            raise BadRequest("password (your current password) is required")
        self._hasher.check_capacity(CheckPriority.TRUSTED)
        now = self._clock().timestamp()
        request = LoginRequest(username=user, password=password, client_ip=client_ip)
        step = await self._password_step(
            request, identity=user, user_hash=self._identity_hash(user), now=now
        )
        if step.user is None:
            metrics.LOGIN_FAIL.inc()  # the answer says so: the caller holds the user's token
            raise Unauthenticated(REAUTH_FAILURE)
        if step.secret is not None:  # left counted by the login order; here it is settled
            await self._lockout.record_success(identity=user, client_ip=client_ip, now=now)

    async def _password_step(
        self, request: LoginRequest, *, identity: str, user_hash: str, now: float
    ) -> _PasswordStep:
        """Count, check the password, and settle the count: the lockout order of the module
        docstring. `user` is set only when the password was right."""
        standing: AttemptStanding | None = None
        try:
            # Room for trusted attempts only, as in a storm: one read-only round trip decides,
            # and an untrusted attempt is shed with nothing counted that must be taken back.
            if self._hasher.has_room(CheckPriority.NORMAL) or (
                await self._lockout.is_trusted(
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
        priority = _priority(standing)
        # Never judged (database down, hasher overloaded, request cancelled): uncounted. The
        # check's turn first, then the database: a login shed from the hasher's queue
        # (displaced by a better-placed one, or timed out) has cost no read, and the reads of
        # the logins that go first never queue behind those of the ones that will not.
        async with (
            judged_or_taken_back(
                self._lockout, identity=identity, client_ip=request.client_ip, now=now
            ),
            self._hasher.slot(priority) as slot,
        ):
            # The generation first, the user row second: a password change, disable or role
            # loss that commits between the two reads has already raised the generation this
            # token is minted at, or is seen in the row whose hash is checked — never
            # neither. Every name a user could have pays the same three reads (generation,
            # user, TOTP secret), known or not (no timing oracle); a name no user could
            # have (any byte may come in) is sent to the database by none.
            subject = user_name_or_none(identity)
            generation = await self._generations.fetch(subject) if subject is not None else 0
            user = await self._users.get(subject) if subject is not None else None
            secret = await self._factors.active_secret(subject) if subject is not None else None
            stored = user.password_hash if user is not None and not user.disabled else None
            result = await self._hasher.verify_in(slot, stored, request.password)
        if not result.ok or user is None:
            # Not counted as `fail` here: a login answers a wrong password as it answers a
            # right one of an enrolled user (a challenge, decoy or real), and /metrics, open to
            # whoever reaches it, must not tell them apart either (red team, helper-73: the
            # `fail` count confirmed a guessed password the second factor was hiding).
            security_event(
                "authn_login_fail",
                level=logging.WARNING,
                # The stored name, never the typed one: no user, no name in the log.
                user=user.name if user is not None else None,
                user_hash=user_hash,
                client_ip=request.client_ip,
            )
            return _PasswordStep(None, generation, None)

        # Right but not enough (an enrolled user): left counted, exactly as a wrong password is,
        # until the second factor holds (then `record_success` settles it). Taking it back here
        # would let the next attempt's lockout tell a right password from a wrong one.
        if secret is None:
            await self._lockout.record_success(
                identity=identity, client_ip=request.client_ip, now=now
            )
        rehashed = False
        if result.needs_rehash and stored is not None:
            # The upgrade is the hasher's spare work, not part of the answer: the password was
            # right, so a hasher too busy for a second hash leaves the old one for the next
            # login rather than refusing this one (a 503 after a right password).
            try:
                new_hash = await self._hasher.rehash(request.password, priority=priority)
            except Unavailable:
                log.warning("password rehash of %s deferred: the hasher is busy", user.name)
            else:
                await self._users.rehash(user.name, old_hash=stored, new_hash=new_hash)
                rehashed = True
        return _PasswordStep(user, generation, secret, rehashed=rehashed)

    async def _second_step(
        self,
        request: LoginRequest,
        challenge: Challenge,
        *,
        ttl: timedelta,
        secret: TotpSecret | None,
        read: bool,
    ) -> MintedToken:
        """The code for a challenge: counted first, then checked, then the challenge spent.
        `read`: whether `secret` is the user's as read already (one call), else it is read here."""
        otp = request.otp or ""
        now = self._clock().timestamp()
        identity = challenge.identity
        user_hash = identity[:_LOGGED_HASH_DIGITS]
        bound = hmac.compare_digest(
            challenge.client_ip, hash_ip(request.client_ip, key=self._log_key)
        )
        if not bound:
            # A challenge sent from another address than it was issued to is refused whatever
            # the code, decoy or not, and not counted: it is no guess at the code, and counting
            # it would let anyone holding a challenge lock its account's codes from anywhere.
            metrics.LOGIN_MFA_FAIL.inc()
            security_event(
                "authn_mfa_fail",
                level=logging.WARNING,
                user=None,
                user_hash=user_hash,
                client_ip=request.client_ip,
                reason="challenge bound to another address",
            )
            raise Unauthenticated(SECOND_STEP_FAILURE if challenge.nonce else PASSWORD_STEP_FAILURE)
        try:
            await self._otp_lockout.begin_attempt(
                identity=identity, client_ip=request.client_ip, now=now
            )
        except LockedOut:
            metrics.LOGIN_MFA_LOCKED.inc()
            security_event(
                "authn_mfa_lock",
                level=logging.WARNING,
                user_hash=user_hash,
                client_ip=request.client_ip,
            )
            raise
        factor: Factor | None = None
        user: User | None = None
        # Everything that decides the answer runs inside: a store or the database failing at
        # any step (the user, the generation, the challenge's one use) leaves the attempt
        # unjudged and uncounted, not a failure held against the user (review, helper-60).
        async with judged_or_taken_back(
            self._otp_lockout, identity=identity, client_ip=request.client_ip, now=now
        ):
            user_name = challenge.user
            if not read:
                # The two-step path: every challenge pays the read of the TOTP secret, a decoy's
                # too (a name no user has), so the time of a wrong code does not tell a real
                # challenge, and with it a right password, from a decoy. (In one call the
                # password step has already paid it for every name: reading it again for a
                # wrong password only told the two apart, helper-73.)
                secret = await self._factors.active_secret(user_name or "")
            proof = await self._factors.match(user_name, otp, now=now, secret=secret)
            if proof is not None and challenge.user:
                user = await self._users.get(challenge.user)
            refused = (
                user is None
                or user.disabled
                # A password change (disable, lost role, revoke-all) since the password step:
                # its token would be born revoked, and the answer must not clear the counters
                # or make the address one the owner logs in from (red team, helper-58: an old
                # password and a challenge taken before the change, then one code, did both).
                or await self._generations.fetch(user.name) > challenge.generation
            )
            if proof is not None and not refused:
                # Two one-use things, claimed only after the code held and nothing else
                # refuses (so a wrong code burns neither): the challenge (one token per
                # challenge that left this service) and the code. The one claimed first is
                # burned when the second refuses, so a TOTP step (another comes in 30 s) goes
                # first, and a used code leaves the owner's challenge for the next one; a
                # recovery code (ten per set) goes last, so a replayed or double-submitted
                # challenge does not use it up (red team, helper-65).
                if proof.factor == "totp":
                    factor = await self._factors.spend(proof, now=now)
                    refused = factor is None or not await self._claim_challenge(challenge, now)
                else:
                    refused = not await self._claim_challenge(challenge, now)
                    factor = None if refused else await self._factors.spend(proof, now=now)
                    refused = factor is None
        if refused or user is None:
            metrics.LOGIN_MFA_FAIL.inc()
            security_event(
                "authn_mfa_fail",
                level=logging.WARNING,
                user=user.name if user is not None else None,
                user_hash=user_hash,
                client_ip=request.client_ip,
            )
            raise Unauthenticated(SECOND_STEP_FAILURE if challenge.nonce else PASSWORD_STEP_FAILURE)

        await self._otp_lockout.record_success(
            identity=identity, client_ip=request.client_ip, now=now
        )
        # Only now is the address one the owner logs in from (trusted by the password counters).
        await self._lockout.record_success(identity=user.name, client_ip=request.client_ip, now=now)
        security_event(
            "authn_mfa_success",
            user=user.name,
            user_hash=user_hash,
            client_ip=request.client_ip,
            factor=factor,
        )
        return await self._mint(
            request,
            user,
            user_hash=user_hash,
            ttl=ttl,
            generation=challenge.generation,
            mfa=True,
            enrol_only=False,
            rehashed=False,
        )

    async def _claim_challenge(self, challenge: Challenge, now: float) -> bool:
        """The one use of a challenge that left this service (a one-call login's has no nonce)."""
        return not challenge.nonce or await self._factors.once.claim(
            "challenge:" + challenge.nonce,
            ttl=max(1.0, challenge.expires_at - now) + CLOCK_SKEW_MARGIN,
            now=now,
        )

    async def _mint(
        self,
        request: LoginRequest,
        user: User,
        *,
        user_hash: str,
        ttl: timedelta,
        generation: int,
        mfa: bool,
        enrol_only: bool,
        rehashed: bool,
    ) -> MintedToken:
        minted = await self._minter.mint(
            MintRequest(
                subject=user.name,
                ttl=ttl,
                # A user who must enrol first gets a token for that alone (docstring).
                operations=(ENROL_OPERATION,) if enrol_only else request.operations,
                resources=request.resources,
                audiences=request.audiences,
                cidrs=request.cidrs,
                admin=user.is_admin and not enrol_only,
                mfa=mfa,
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
            rehashed=rehashed,
            mfa=mfa,
            enrol_only=enrol_only,
        )
        return minted

    def _issue(self, challenge: Challenge) -> str:
        return self._challenges.issue(
            identity=challenge.identity,
            user=challenge.user,
            client_ip=challenge.client_ip,
            generation=challenge.generation,
            expires_at=challenge.expires_at,
        )

    def _identity_hash(self, identity: str) -> str:
        """How log events name `identity`: a keyed hash of its normalised form, shortened."""
        return hash_identity(identity, key=self._log_key)[:_LOGGED_HASH_DIGITS]


def _priority(standing: AttemptStanding) -> CheckPriority:
    """Where a password check queues: see tokensvc.accounts.admission."""
    if standing.trusted:
        return CheckPriority.TRUSTED
    return CheckPriority.SUSPECT if standing.recent_failures else CheckPriority.NORMAL
