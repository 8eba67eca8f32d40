"""Checking a user's second factor: a TOTP code (never one twice) or a recovery code (once each).

The one place both the login and the MFA self-service (disable, new recovery codes) check a
code, so the rules are the same at every door: a TOTP code is accepted only from an active
enrolment, only from the steps now ±1, and only if its step has not been accepted for that user
before (claimed in the OnceStore, shared by replicas through Redis); a recovery code only if
unused, and it is marked used in the same compare-and-set that accepts it.

`check` judges and spends in one call. A caller with refusals of its own to make after the code
held (the login's second step: the user, the generation, the challenge's one use) calls `match`,
makes them, and only then `spend`s: a code spent on an answer that is refused anyway is lost to
its owner (red team, helper-65: a double-submitted second step burned a recovery code).

Failure counting (lockout) is the caller's, before calling `check`: counting is what bounds
the guesses, and it must come before any secret is compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from keystore.totp_secrets import TotpSecret, TotpSecrets
from tokensvc.accounts.admission import CheckPriority
from tokensvc.accounts.lockout.store import hash_identity
from tokensvc.accounts.mfa import (
    SKEW_STEPS,
    STEP_SECONDS,
    RecoveryCodes,
    is_totp_code,
    match_step,
    new_recovery_codes,
    normalise_recovery_code,
    recovery_hint,
)
from tokensvc.accounts.otpstate import OnceStore
from tokensvc.accounts.passwords import PasswordHasher

__all__ = ["CLOCK_SKEW_MARGIN", "Factor", "Proof", "RecoveryProof", "SecondFactors", "TotpProof"]

Factor = Literal["totp", "recovery_code"]

#: Added to every one-time claim's lifetime: the claim is timed by the replica that made it, and
#: another replica whose clock runs behind still accepts the code or challenge until its own
#: clock reaches the end (red team, helper-64). Replicas kept within a minute of each other
#: (NTP) cannot reuse one.
CLOCK_SKEW_MARGIN: Final = 60.0
# A step's claim must outlive every moment its code is still accepted (now ±1 step).
_STEP_CLAIM_SECONDS: Final = (2 * SKEW_STEPS + 2) * STEP_SECONDS + CLOCK_SKEW_MARGIN


@dataclass(frozen=True, slots=True)
class TotpProof:
    """A TOTP code that matched, its step not claimed yet: `claim` names it in the OnceStore."""

    claim: str
    factor: Factor = "totp"


@dataclass(frozen=True, slots=True)
class RecoveryProof:
    """A recovery code that matched, not used yet: its row."""

    code_id: int
    factor: Factor = "recovery_code"


Proof = TotpProof | RecoveryProof


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A user's MFA state as an owner or admin sees it."""

    active: bool
    pending: bool
    recovery_codes: int


class SecondFactors:
    """TOTP secrets, recovery codes and the spent-code store, checked together."""

    def __init__(
        self,
        *,
        secrets: TotpSecrets,
        recovery_codes: RecoveryCodes,
        once: OnceStore,
        hasher: PasswordHasher,
        name_key: bytes,
    ) -> None:
        """`name_key` keys the hashes that name users in the OnceStore (Redis keys hold no names)."""
        self.secrets = secrets
        self.recovery_codes = recovery_codes
        self.once = once
        self._hasher = hasher
        self._name_key = name_key

    async def active_secret(self, user: str) -> TotpSecret | None:
        """The user's confirmed TOTP secret; None when not enrolled (or only pending)."""
        found = await self.secrets.get(user)
        return found if found is not None and found.active else None

    async def enrolment(self, user: str) -> Enrolment:
        """Whether the user is enrolled or enrolling, and how many recovery codes remain."""
        found = await self.secrets.get(user)
        remaining = await self.recovery_codes.remaining(user) if found is not None else 0
        return Enrolment(
            active=found is not None and found.active,
            pending=found is not None and not found.active,
            recovery_codes=remaining if found is not None and found.active else 0,
        )

    async def check(
        self,
        user: str | None,
        otp: str,
        *,
        now: float,
        secret: TotpSecret | None = None,
        priority: CheckPriority = CheckPriority.NORMAL,
    ) -> Factor | None:
        """Which factor `otp` proved for `user`, spent, or None (see `match`)."""
        proof = await self.match(user, otp, now=now, secret=secret, priority=priority)
        return None if proof is None else await self.spend(proof, now=now)

    async def spend(self, proof: Proof, *, now: float) -> Factor | None:
        """Use the code `proof` matched, once: its factor, or None if it was used meanwhile."""
        if isinstance(proof, TotpProof):
            spent = await self.once.claim(proof.claim, ttl=_STEP_CLAIM_SECONDS, now=now)
        else:
            spent = await self.recovery_codes.use(proof.code_id)
        return proof.factor if spent else None

    async def match(
        self,
        user: str | None,
        otp: str,
        *,
        now: float,
        secret: TotpSecret | None = None,
        priority: CheckPriority = CheckPriority.NORMAL,
    ) -> Proof | None:
        """What `otp` matched for `user`, not spent yet, or None. `user` None (a decoy) costs
        what a real check costs and fails. `secret`: the user's active secret if already read.

        `priority`: where a recovery code's argon2 check queues. NORMAL for a login's second
        step, which anyone can send (a decoy challenge, or a guessed password with a code in
        one call): it must never buy a better place than an anonymous guess, and a real
        challenge may not get one either, or the queue would tell it from a decoy. Callers who
        are already signed in (changing their factor) may pass TRUSTED. A TOTP code needs no
        argon2 and never queues."""
        if user is not None and secret is None:
            secret = await self.active_secret(user)
        if is_totp_code(otp):
            if user is None or secret is None or not secret.active:
                return None
            step = match_step(secret.secret.reveal(), otp, now=now)
            if step is None:
                return None
            return TotpProof(self._step_claim(user, step))
        normalised = normalise_recovery_code(otp)
        if normalised is None:
            return None
        # A decoy (or a user without a factor) looks up the rows of a name no user has: the same
        # statement as a real look-up, so the time tells nothing (see also the argon2 run below).
        owner = user if user is not None and secret is not None else ""
        candidates = await self.recovery_codes.candidates(owner, recovery_hint(normalised))
        if not candidates:
            # One argon2 run whether or not a row matched: the time tells nothing.
            await self._hasher.verify(None, normalised, priority=priority)
            return None
        for stored in candidates:
            result = await self._hasher.verify(stored.code_hash, normalised, priority=priority)
            if result.ok:
                return RecoveryProof(stored.id)
        return None

    async def check_pending(self, user: str, otp: str, *, now: float) -> datetime | None:
        """The `created_at` of the user's pending enrolment if `otp` is its current code."""
        found = await self.secrets.get(user)
        if found is None or found.active:
            return None
        if not await self._totp(user, found.secret.reveal(), otp, now):
            return None
        return found.created_at

    async def hashed_recovery_codes(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Ten fresh codes (shown once) and what `recovery_codes.replace` stores of them: hashed
        before the transaction that stores them, since argon2 must not hold its locks."""
        codes = new_recovery_codes()
        hashes = []
        for code in codes:
            normalised = code.replace("-", "")
            hashes.append(
                (recovery_hint(normalised), await self._hasher.hash_generated(normalised))
            )
        return codes, hashes

    async def forget(self, user: str, *, conn: AsyncConnection | None = None) -> bool:
        """Drop the user's secret and recovery codes (in `conn`'s transaction if given: with
        the change that asks for it and its audit record); whether there was a secret."""
        had = await self.secrets.delete(user, conn=conn)
        await self.recovery_codes.delete(user, conn=conn)
        return had

    async def _totp(self, user: str, secret: bytes, otp: str, now: float) -> bool:
        step = match_step(secret, otp, now=now)
        if step is None:
            return False
        return await self.once.claim(self._step_claim(user, step), ttl=_STEP_CLAIM_SECONDS, now=now)

    def _step_claim(self, user: str, step: int) -> str:
        """The OnceStore name of a user's TOTP step: one for every door that accepts a code, so
        a code used at one (enrolment, login, self-service) is used at all."""
        return f"totp:{hash_identity(user, key=self._name_key)}:{step}"
