"""Password hashing: argon2id profiles, an optional pepper, and a bounded pool off the event loop.

argon2 is memory-hard on purpose, so a storm of logins is a storm of 19 MiB, ~20 ms jobs. They
run in a thread pool (argon2-cffi releases the GIL) behind a semaphore of `max_concurrency`
permits and a wait queue of at most `max_waiting` callers; past that, `Unavailable` is raised at
once, so memory and latency stay bounded and the event loop keeps serving `/v1/verify`. The
queue is a priority queue (tokensvc.accounts.admission): under a storm, trusted logins go
first and anonymous guesses are shed first. Which passwords may be set is
tokensvc.accounts.password_policy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from tokensvc.accounts.admission import CheckPriority, PriorityAdmission
from tokensvc.accounts.password_policy import (
    DEFAULT_POLICY,
    MAX_PASSWORD_BYTES,
    NIST_SINGLE_FACTOR_MIN_LENGTH,
    PasswordPolicy,
)

__all__ = [
    "CHEAP_FOR_TESTS",
    "MAX_PASSWORD_BYTES",
    "MIN_PASSWORD_LENGTH",
    "OWASP",
    "PROFILES",
    "RFC_9106_LOW_MEMORY",
    "CheckPriority",
    "HashSlot",
    "PasswordHasher",
    "PasswordPolicy",
    "VerifyResult",
    "check_policy",
    "profile_by_name",
]

#: OWASP Password Storage Cheat Sheet, argon2id minimum: m=19 MiB, t=2, p=1. The default.
OWASP = argon2.Parameters(
    type=argon2.Type.ID,
    version=19,
    salt_len=16,
    hash_len=32,
    time_cost=2,
    memory_cost=19456,
    parallelism=1,
)
#: RFC 9106's second recommendation (m=64 MiB, t=3, p=4), for hosts with memory to spare.
RFC_9106_LOW_MEMORY = argon2.profiles.RFC_9106_LOW_MEMORY
#: Fast and worthless against an attacker: for tests only, never configure it in production.
CHEAP_FOR_TESTS = argon2.Parameters(
    type=argon2.Type.ID,
    version=19,
    salt_len=16,
    hash_len=32,
    time_cost=1,
    memory_cost=8,
    parallelism=1,
)

PROFILES: dict[str, argon2.Parameters] = {
    "OWASP": OWASP,
    "RFC_9106_LOW_MEMORY": RFC_9106_LOW_MEMORY,
    "CHEAP_FOR_TESTS": CHEAP_FOR_TESTS,
}

#: The default minimum when the password is the only factor (PasswordPolicy.min_length).
MIN_PASSWORD_LENGTH = NIST_SINGLE_FACTOR_MIN_LENGTH

_T = TypeVar("_T")


def profile_by_name(name: str) -> argon2.Parameters:
    """The profile called `name` (as in the configuration), or ValueError."""
    try:
        return PROFILES[name.upper()]
    except KeyError:
        raise ValueError(
            f"unknown password profile {name!r}; choose one of {', '.join(PROFILES)}"
        ) from None


def _encode(password: str) -> bytes:
    # NIST SP 800-63B §5.1.1.2: NFKC, so the same password typed on two keyboards is one password.
    # "surrogatepass" because a strict UnicodeEncodeError would carry the password in its args.
    return unicodedata.normalize("NFKC", password).encode("utf-8", "surrogatepass")


def check_policy(
    password: str,
    *,
    username: str | None = None,
    has_mfa: bool = False,
    policy: PasswordPolicy = DEFAULT_POLICY,
) -> None:
    """Raise BadRequest, saying which rule, unless `password` may be set; never echoes it.

    Raises:
        BadRequest: the password breaks a rule of `policy` (tokensvc.accounts.password_policy).
    """
    policy.check(password, username=username, has_mfa=has_mfa)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of a password check; `needs_rehash` only ever set when `ok`."""

    ok: bool
    needs_rehash: bool = False

    def __bool__(self) -> bool:
        # `if await hasher.verify(...)` would always be true; make callers say `.ok`.
        raise TypeError("VerifyResult has no truth value; test .ok")


HASHING_NICE = 19  # the lowest CPU priority


def _lowest_priority() -> None:
    """Run the calling hashing thread at the lowest CPU priority (on Linux, nice is per thread).

    When a login storm and /v1/verify compete for the cores, the scheduler then runs the event
    loop first: the storm slows logins, which the pool and its queue already cap, rather than
    every verify; and it runs a trusted login's check (in the other pool, at the process's own
    priority) before these. On idle cores nothing changes. Elsewhere (no per-thread nice) it is
    a no-op.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICE)
    except (AttributeError, OSError):
        pass


class PasswordHasher:
    """argon2id hashing and verification off the event loop, with bounded concurrency."""

    def __init__(
        self,
        *,
        profile: argon2.Parameters = OWASP,
        pepper: bytes | None = None,
        max_concurrency: int = 4,
        max_waiting: int = 64,
        queue_timeout: float = 2.0,
        reserved_for_trusted: int = 0,
        policy: PasswordPolicy = DEFAULT_POLICY,
        untrusted_share: float = 1.0,
    ) -> None:
        """`max_concurrency` argon2 threads for any check, and `reserved_for_trusted` more that
        only trusted and second-factor logins may use (tokensvc.accounts.admission).

        `untrusted_share` (0 < share <= 1): the most of its time a thread may spend on checks
        below TRUSTED (anonymous guesses, under a storm). After such a check the slot rests
        for the check's time × (1/share − 1) before the next one may start, so a storm keeps
        the argon2 threads busy that share of the time at most: argon2 is memory-hard (19 MiB a
        check at the default profile), and back to back it sweeps the caches /v1/verify runs
        from, whatever its CPU priority. Trusted and second-factor checks never rest."""
        if not 0 < untrusted_share <= 1:
            raise ValueError("untrusted_share must be in (0, 1]")
        self._rest_factor = 1 / untrusted_share - 1
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if max_waiting < 0:
            raise ValueError("max_waiting must not be negative")
        if pepper is not None and len(pepper) < 16:
            raise ValueError("a pepper must be at least 16 bytes")
        self._profile = profile
        self._argon2 = argon2.PasswordHasher.from_parameters(profile)
        self._pepper = pepper
        self._policy = policy
        self._admission = PriorityAdmission(
            slots=max_concurrency,
            max_waiting=max_waiting,
            timeout=queue_timeout,
            reserved=reserved_for_trusted,
        )
        # Two pools, because a slot is not CPU: under a storm the anonymous guesses already
        # running would otherwise share the cores evenly with a trusted login's check. Theirs
        # run at the lowest CPU priority; trusted and second-factor checks (few, and only for
        # an identity from an address it logged in from, or past a valid challenge) at the
        # process's own, so the scheduler runs them first.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrency,
            thread_name_prefix="argon2",
            initializer=_lowest_priority,
        )
        self._trusted_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._admission.capacity, thread_name_prefix="argon2-trusted"
        )
        # Made once, in the background, with the same profile: unknown users cost the same.
        self._dummy_hash = self._executor.submit(
            self._argon2.hash, self._prepare(secrets.token_bytes(24))
        )
        self._dummy_value: str | None = None

    def __repr__(self) -> str:
        return (
            f"PasswordHasher(m={self._profile.memory_cost}, t={self._profile.time_cost}, "
            f"p={self._profile.parallelism}, pepper={'set' if self._pepper else 'none'})"
        )

    @property
    def profile(self) -> argon2.Parameters:
        return self._profile

    @property
    def policy(self) -> PasswordPolicy:
        return self._policy

    @property
    def admission(self) -> PriorityAdmission:
        """The priority queue in front of the argon2 threads."""
        return self._admission

    async def hash(
        self, password: str, *, username: str | None = None, has_mfa: bool = False
    ) -> str:
        """The argon2id hash of a new password for `username`.

        Raises:
            BadRequest: the password breaks the policy (the message says which rule).
            Unavailable: the hasher is overloaded.
        """
        # zxcvbn takes tens of milliseconds: off the event loop, like argon2.
        await asyncio.to_thread(self._policy.check, password, username=username, has_mfa=has_mfa)
        # Setting a password is an authenticated act (an admin, or the user with a token): it
        # goes with the trusted checks, so a storm of anonymous guesses cannot keep an admin
        # from resetting a password during the attack.
        return await self._run(
            self._argon2.hash, self._prepare(_encode(password)), priority=CheckPriority.TRUSTED
        )

    async def hash_generated(self, secret: str) -> str:
        """The argon2id hash of a secret this service generated (a recovery code): the same
        parameters, pepper and bounded pool as passwords, but no password policy, which is
        for what people choose. Trusted, as `hash`: only an authenticated user enrols."""
        return await self._run(
            self._argon2.hash, self._prepare(_encode(secret)), priority=CheckPriority.TRUSTED
        )

    async def rehash(self, password: str, *, priority: CheckPriority = CheckPriority.NORMAL) -> str:
        """A new hash, at the current parameters, of a password that was just verified.

        No policy: the password was accepted when it was set, and a login must not fail
        because the policy has grown stricter since (a change of password is the way to that).

        Raises:
            Unavailable: the hasher is overloaded.
        """
        return await self._run(
            self._argon2.hash, self._prepare(_encode(password)), priority=priority
        )

    async def verify(
        self,
        stored_hash: str | None,
        password: str,
        *,
        priority: CheckPriority = CheckPriority.NORMAL,
    ) -> VerifyResult:
        """Check `password` against `stored_hash`; None (no such user) costs the same, fails.

        Raises:
            Unavailable: the hasher is overloaded (no slot for this `priority`).
        """
        async with self.slot(priority) as slot:
            return await self.verify_in(slot, stored_hash, password)

    @contextlib.asynccontextmanager
    async def slot(self, priority: CheckPriority) -> AsyncIterator[HashSlot]:
        """Wait for a check's turn at `priority` first, then do what the check needs (read the
        stored hash) inside the block, and `await verify_in(slot, ...)` there: a login shed from
        the queue then costs no database read, and the reads of the logins that go first never
        wait behind those of the ones that will be shed. The slot is given back when its check
        is done (or when the block ends without one).

        Raises:
            Unavailable: no slot for this `priority` (refused, displaced or timed out).
        """
        await self._admission.acquire(priority)
        slot = HashSlot(priority)
        try:
            yield slot
        finally:
            if not slot.used:
                self._admission.release()

    async def verify_in(
        self, slot: HashSlot, stored_hash: str | None, password: str
    ) -> VerifyResult:
        """As `verify`, in a slot already held (`slot`); one check per slot."""
        encoded = _encode(password)
        prepared = self._prepare(encoded)
        if stored_hash is None or len(encoded) > MAX_PASSWORD_BYTES:
            # A password this long was never accepted, so it fails; it costs what a wrong one does.
            dummy = await self._dummy()
            slot.take()
            await self._submit(self._verify_dummy, dummy, prepared, priority=slot.priority)
            return VerifyResult(ok=False)
        slot.take()
        return await self._submit(self._verify, stored_hash, prepared, priority=slot.priority)

    async def _dummy(self) -> str:
        if self._dummy_value is None:
            # Shielded: a cancelled caller must not cancel the one job every later caller needs.
            self._dummy_value = await asyncio.shield(asyncio.wrap_future(self._dummy_hash))
        return self._dummy_value

    def close(self) -> None:
        """Stop the worker threads; jobs not yet started are cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._trusted_executor.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, encoded: bytes) -> bytes:
        # The pepper is applied with HMAC, so a database leak alone cannot be cracked offline.
        if self._pepper is None:
            return encoded
        return hmac.new(self._pepper, encoded, hashlib.sha256).digest()

    def _verify(self, stored_hash: str, prepared: bytes) -> VerifyResult:
        try:
            self._argon2.verify(stored_hash, prepared)
        except InvalidHashError:
            # A corrupt row must not answer faster than a wrong password.
            self._verify_dummy(self._dummy_hash.result(), prepared)
            return VerifyResult(ok=False)
        except VerificationError:
            return VerifyResult(ok=False)
        return VerifyResult(ok=True, needs_rehash=self._argon2.check_needs_rehash(stored_hash))

    def _verify_dummy(self, dummy_hash: str, prepared: bytes) -> None:
        try:
            self._argon2.verify(dummy_hash, prepared)
        except VerificationError:
            pass

    def has_room(self, priority: CheckPriority) -> bool:
        """Whether a check of `priority` asked for now would be queued or run, not refused."""
        return self._admission.has_room(priority)

    def check_capacity(self, priority: CheckPriority = CheckPriority.NORMAL) -> None:
        """Raise Unavailable if a check of `priority` started now would be refused: every
        worker busy and the wait queue full of checks placed at least as well. Callers shed a
        login with it before spending round trips on an answer that is 503 anyway; a check that
        still finds no room later (it filled meanwhile) is refused the same way.

        Raises:
            Unavailable: no room for a check of `priority`.
        """
        self._admission.check(priority)

    async def _run(
        self,
        fn: Callable[..., _T],
        *args: object,
        priority: CheckPriority = CheckPriority.NORMAL,
    ) -> _T:
        await self._admission.acquire(priority)
        return await self._submit(fn, *args, priority=priority)

    async def _submit(
        self,
        fn: Callable[..., _T],
        *args: object,
        priority: CheckPriority,
    ) -> _T:
        """Run `fn` in the pool of `priority`, with a slot already acquired: the slot is given
        back when the thread is done, not when the caller stops waiting, so cancelled callers
        cannot let more than max_concurrency argon2 jobs pile up."""
        loop = asyncio.get_running_loop()
        trusted = priority <= CheckPriority.TRUSTED
        rest = 0.0 if trusted else self._rest_factor
        try:
            pool = self._trusted_executor if trusted else self._executor
            started = time.monotonic()  # admitted jobs start at once: one thread per slot
            job = pool.submit(fn, *args)
        except BaseException:
            self._admission.release()
            raise
        release = self._admission.release
        # Runs in the worker thread as the job ends: the slot rests (untrusted checks) for the
        # job's time × the rest factor, then goes back.
        job.add_done_callback(
            lambda _: _release_threadsafe(loop, release, (time.monotonic() - started) * rest)
        )
        return await asyncio.wrap_future(job)


class HashSlot:
    """A password check's turn (PasswordHasher.slot), at its priority: `verify_in` takes it for
    its one check, whose thread then gives it back."""

    __slots__ = ("priority", "used")

    def __init__(self, priority: CheckPriority) -> None:
        self.priority = priority
        self.used = False

    def take(self) -> None:
        if self.used:
            raise RuntimeError("a hash slot holds one check")
        self.used = True


def _release_threadsafe(
    loop: asyncio.AbstractEventLoop, release: Callable[[], None], after: float = 0.0
) -> None:
    try:
        if after > 0:
            loop.call_soon_threadsafe(loop.call_later, after, release)
        else:
            loop.call_soon_threadsafe(release)
    except RuntimeError:  # the loop is closed; nobody is left to wait for a slot
        pass
