"""The interface every lockout store implements, and what both derive from an attempt.

An attempt is counted as a failure *before* the password is checked (`begin_attempt`), in the
same atomic step that checks the locks; a success then undoes that (`record_success`). Counting
up front is what makes concurrency safe: attempts racing on an identity at its threshold cannot
all slip through, and N concurrent failures are N failures.

Three counters apply to an attempt:

- identity + client IP, always;
- client IP, always;
- identity, only when the client IP is not one the identity logged in from successfully within
  `LockoutPolicy.trusted_ip_window` — so failures from an attacker's IPs throttle those IPs and
  the identity everywhere else, but do not lock the owner out of the IPs they use.

Identities are normalised (NFKC, casefold, strip) and hashed; IPv6 clients are counted per /64
(one subscriber's allocation), IPv4-mapped IPv6 as IPv4. The store never learns whether a user
exists: unknown identities are counted exactly like known ones.

`begin_attempt` also answers where the attempt stands (`AttemptStanding`), in the same round
trip: whether the address is one the identity recently logged in from, and whether any of the
attempt's counters already held failures. The password hasher orders its queue by that
(tokensvc.accounts.admission). Both facts are per (identity, address) and about attempts
alone, so they say nothing about whether a user exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "AttemptStanding",
    "CounterStatus",
    "LockoutStatus",
    "LockoutStore",
    "hash_identity",
    "hash_ip",
    "normalise_identity",
    "normalise_ip",
]


@dataclass(frozen=True, slots=True)
class AttemptStanding:
    """Where an attempt stands before its password is checked.

    `trusted`: the identity logged in successfully from this address within the trusted-IP
    window. `recent_failures`: a counter of this attempt (the address, the identity, or the
    pair) held failures before it.
    """

    trusted: bool
    recent_failures: bool


@dataclass(frozen=True, slots=True)
class CounterStatus:
    """One counter of an identity: its failures and when its lock ends (None: not locked)."""

    # "second_factor" / "second_factor_ip": the codes' counters of the same account, which the
    # lockout service adds to what an admin sees (tokensvc.services.lockouts).
    scope: Literal["identity", "identity_ip", "second_factor", "second_factor_ip"]
    failures: int
    locked_until: float | None


@dataclass(frozen=True, slots=True)
class LockoutStatus:
    """What an admin sees for an identity; holds no IP addresses.

    `failures` and `locked_until` are the identity-wide counter (failures from IPs the identity is
    not trusted on); `counters` lists it first, then each live identity+IP counter.
    """

    failures: int
    locked_until: float | None
    counters: tuple[CounterStatus, ...]
    trusted_ips: int
    # The identity the counters are kept under (`ＥＲＩＮ ` is `erin`); set by the lockout service.
    identity: str = ""

    @property
    def locked(self) -> bool:
        """True while any of the identity's counters is locked."""
        return any(counter.locked_until is not None for counter in self.counters)


class LockoutStore(Protocol):
    """Failure counters with progressive locks; see the module docstring for the semantics."""

    async def begin_attempt(self, *, identity: str, client_ip: str, now: float) -> AttemptStanding:
        """Atomically: raise LockedOut if a counter is locked, else count a failure in each,
        and say where the attempt stands.

        Call before the password is checked. Raises `Unavailable` when the store cannot be
        reached: the attempt must then be refused, never let through unchecked.
        """
        ...

    async def is_trusted(self, *, identity: str, client_ip: str, now: float) -> bool:
        """Whether the identity logged in from `client_ip` within the trusted-IP window.

        Read-only, one round trip: a login the hasher has room for only if it is trusted asks
        this first, and is shed without counting anything when it is not. Raises `Unavailable`
        when the store cannot be reached.
        """
        ...

    async def record_success(self, *, identity: str, client_ip: str, now: float) -> None:
        """After a begin_attempt whose password was right: reset the identity's counters,
        take this attempt back off the IP's counter, and trust `client_ip` for the identity."""
        ...

    async def abandon_attempt(self, *, identity: str, client_ip: str, now: float) -> None:
        """After a begin_attempt whose password was never checked (e.g. the hasher was
        overloaded): take the provisional failure back off every counter it was added to."""
        ...

    async def status(self, identity: str, now: float) -> LockoutStatus:
        """The identity's counters and trusted-IP count, for admins."""
        ...

    async def clear(self, identity: str) -> None:
        """Forget the identity's failures (not its trusted IPs, not per-IP counters)."""
        ...


log = logging.getLogger("tokensvc.accounts.lockout")


@contextlib.asynccontextmanager
async def judged_or_taken_back(
    store: LockoutStore, *, identity: str, client_ip: str, now: float
) -> AsyncIterator[None]:
    """Around the check of an attempt `begin_attempt` counted: if the block does not finish
    (the hasher, the database or a store failed, or the request was cancelled), the attempt
    was never judged and is taken back off its counters, so it never counts against the
    user. The block's own failure is the one reported; one taking back fails is logged."""
    finished = False
    try:
        yield
        finished = True
    finally:
        if not finished:
            try:
                await store.abandon_attempt(identity=identity, client_ip=client_ip, now=now)
            except Exception:
                log.warning("could not take back an attempt that was never judged", exc_info=True)


def normalise_identity(identity: str) -> str:
    """The form an identity is counted under: `Alice ` and `alice` are one identity."""
    return unicodedata.normalize("NFKC", identity).strip().casefold()


def normalise_ip(client_ip: str) -> str:
    """The form a client address is counted under: IPv6 per /64, IPv4-mapped as IPv4."""
    text = client_ip.strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        # Not an address (a Unix socket peer, say): count it verbatim, bounded in length.
        return text[:256]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def _digest(kind: bytes, value: str, key: bytes | None) -> str:
    secret = key or b""
    if len(secret) > 64:  # BLAKE2b keys are at most 64 bytes
        secret = hashlib.sha256(secret).digest()
    return hashlib.blake2b(
        value.encode("utf-8", "surrogatepass"), digest_size=16, key=secret, person=kind
    ).hexdigest()


def hash_identity(identity: str, *, key: bytes | None = None) -> str:
    """32 hex digits naming the normalised identity; keyed, it resists dictionary reversal."""
    return _digest(b"tokensvc-lo-id", normalise_identity(identity), key)


def hash_ip(client_ip: str, *, key: bytes | None = None) -> str:
    """32 hex digits naming the normalised client address."""
    return _digest(b"tokensvc-lo-ip", normalise_ip(client_ip), key)
