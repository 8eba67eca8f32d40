"""Password hashing: argon2id profiles, an optional pepper, and a bounded pool off the event loop.

argon2 is memory-hard on purpose, so a storm of logins is a storm of 19 MiB, ~20 ms jobs. They
run in a thread pool (argon2-cffi releases the GIL) behind a semaphore of `max_concurrency`
permits and a wait queue of at most `max_waiting` callers; past that, `Unavailable` is raised at
once, so memory and latency stay bounded and the event loop keeps serving `/v1/verify`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import os
import secrets
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from tokensvc.errors import BadRequest, Unavailable

__all__ = [
    "CHEAP_FOR_TESTS",
    "MAX_PASSWORD_BYTES",
    "MIN_PASSWORD_LENGTH",
    "OWASP",
    "PROFILES",
    "RFC_9106_LOW_MEMORY",
    "PasswordHasher",
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

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_BYTES = 1024

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


def check_policy(password: str) -> None:
    """Raise BadRequest unless `password` may be set as a new password; never echoes it."""
    if any("\ud800" <= char <= "\udfff" for char in password):
        raise BadRequest("the password must be valid Unicode text")
    normalised = unicodedata.normalize("NFKC", password)
    # Counted as sent and after normalisation, so that a password that NFKC lengthens ("¾" is
    # "3⁄4") still has the length openapi.yaml's minLength asks of the text as sent.
    if min(len(password), len(normalised)) < MIN_PASSWORD_LENGTH:
        raise BadRequest(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > MAX_PASSWORD_BYTES:
        raise BadRequest(f"the password must be at most {MAX_PASSWORD_BYTES} characters long")
    if len(normalised.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise BadRequest(f"the password must be at most {MAX_PASSWORD_BYTES} bytes of UTF-8")


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
    every verify. On idle cores nothing changes. Elsewhere (no per-thread nice) it is a no-op.
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
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if max_waiting < 0:
            raise ValueError("max_waiting must not be negative")
        if pepper is not None and len(pepper) < 16:
            raise ValueError("a pepper must be at least 16 bytes")
        self._profile = profile
        self._argon2 = argon2.PasswordHasher.from_parameters(profile)
        self._pepper = pepper
        self._max_waiting = max_waiting
        self._waiting = 0
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix="argon2", initializer=_lowest_priority
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

    async def hash(self, password: str) -> str:
        """The argon2id hash of a new password; BadRequest if it breaks the policy."""
        check_policy(password)
        return await self._run(self._argon2.hash, self._prepare(_encode(password)))

    async def hash_generated(self, secret: str) -> str:
        """The argon2id hash of a secret this service generated (a recovery code): the same
        parameters, pepper and bounded pool as passwords, but no password policy, which is
        for what people choose."""
        return await self._run(self._argon2.hash, self._prepare(_encode(secret)))

    async def verify(self, stored_hash: str | None, password: str) -> VerifyResult:
        """Check `password` against `stored_hash`; None (no such user) costs the same, fails."""
        encoded = _encode(password)
        prepared = self._prepare(encoded)
        if stored_hash is None or len(encoded) > MAX_PASSWORD_BYTES:
            # A password this long was never accepted, so it fails; it costs what a wrong one does.
            await self._run(self._verify_dummy, await self._dummy(), prepared)
            return VerifyResult(ok=False)
        return await self._run(self._verify, stored_hash, prepared)

    async def _dummy(self) -> str:
        if self._dummy_value is None:
            # Shielded: a cancelled caller must not cancel the one job every later caller needs.
            self._dummy_value = await asyncio.shield(asyncio.wrap_future(self._dummy_hash))
        return self._dummy_value

    def close(self) -> None:
        """Stop the worker threads; jobs not yet started are cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)

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

    def check_capacity(self) -> None:
        """Raise Unavailable if a check started now would be refused: every worker busy and the
        wait queue full. Callers shed a login with it before spending lockout and database round
        trips on an answer that is 503 anyway; a check that still finds the queue full later
        (it filled meanwhile) is refused the same way."""
        if self._semaphore.locked() and self._waiting >= self._max_waiting:
            raise Unavailable("too many password checks in progress", retry_after=1)

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        self.check_capacity()
        self._waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting -= 1
        loop = asyncio.get_running_loop()
        try:
            job = self._executor.submit(fn, *args)
        except BaseException:
            self._semaphore.release()
            raise
        # The permit is returned when the thread is done, not when the caller stops waiting,
        # so cancelled callers cannot let more than max_concurrency argon2 jobs pile up.
        job.add_done_callback(lambda _: _release_threadsafe(loop, self._semaphore))
        return await asyncio.wrap_future(job)


def _release_threadsafe(loop: asyncio.AbstractEventLoop, semaphore: asyncio.Semaphore) -> None:
    try:
        loop.call_soon_threadsafe(semaphore.release)
    except RuntimeError:  # the loop is closed; nobody is left to wait on the semaphore
        pass
