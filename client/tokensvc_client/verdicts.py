"""Verdicts: the signature-checked facts tokensvc hands out for a token (POST /v1/verdict), and
the bounded cache that keeps them, keyed by the exact token and discharge strings.
"""

from __future__ import annotations

import base64
import binascii
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from caveats import Policy

# What an entry costs beyond its strings: the Verdict, its Policy and decoded caveats, the
# OrderedDict link. Measured order of magnitude (sys.getsizeof of the parts); an estimate that
# errs high keeps the memory bound honest.
_ENTRY_OVERHEAD = 1200
_PER_CAVEAT = 200


class VerdictError(ValueError):
    """A /v1/verdict body that is not what the contract says."""


class Principal(NamedTuple):
    """Who a request's token speaks for; what the handler gets (the same object for every
    request decided from one verdict, so `declared` is read-only)."""

    subject: str
    token_id: str
    expires_at: float | None
    declared: Mapping[str, str]
    mfa: bool  # the token was minted after a second factor (its signed identifier's flag)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What tokensvc established about one token + discharges, valid until `cached_until`."""

    subject: str
    token_id: str
    key_id: str
    admin: bool
    mfa: bool  # minted after a second factor: what `require_mfa` asks for
    generation: int  # the subject's generation when the verdict was made
    expires_at: float | None
    key_expires_at: float  # unix seconds; the signature proves nothing from then on
    policy: Policy  # every first-party caveat of the token and its discharges, decoded once
    cursor: str  # the revocation stream's newest event id when the verdict was made
    cached_until: float  # unix seconds: now + cache_ttl when it arrived
    size: int  # estimated bytes, for the cache's memory bound
    valid_until: float  # the earlier of cached_until and key_expires_at: a hit only before it
    principal: Principal  # what an allowed request's handler gets, built once
    #: Until when an allow decided from this verdict may be reused (TokensvcClient.allowed): the
    #: earlier of valid_until and the token's first expiry caveat. None: never reused (a caveat
    #: reads the client address, a not-before caveat, or one that fails everywhere).
    reusable_until: float | None


def _b64(text: str) -> bytes:
    # Strict: characters outside base64url are an error, not silently dropped.
    if "+" in text or "/" in text:
        raise ValueError("caveat is not base64url")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def parse_verdict(body: Any, *, now: float, key_bytes: int) -> Verdict:
    """A Verdict from a 200 /v1/verdict body; VerdictError if the body is malformed."""
    try:
        v = body["verdict"]
        ttl = body["cache_ttl"]
        cursor = body["cursor"]
        caveats = [_b64(c) for c in v["caveats"]]
        subject, token_id, key_id = v["subject"], v["token_id"], v["key_id"]
        generation, expires_at, key_expires_at = (
            v["generation"],
            v["expires_at"],
            v["key_expires_at"],
        )
        admin = v["admin"]
        # Absent only from a tokensvc older than MFA verdicts: such a token never counts as
        # MFA, so a route that requires it refuses (never an allow the server would not give).
        mfa = v.get("mfa", False)
    except (KeyError, TypeError, binascii.Error, ValueError) as exc:
        raise VerdictError(f"malformed verdict: {exc!r}"[:200]) from None
    if not (
        isinstance(subject, str)
        and isinstance(token_id, str)
        and isinstance(key_id, str)
        and isinstance(admin, bool)
        and isinstance(mfa, bool)
        and type(generation) is int
        and (expires_at is None or isinstance(expires_at, int | float))
        and isinstance(key_expires_at, int | float)
        and isinstance(ttl, int | float)
        and isinstance(cursor, str)
    ):
        raise VerdictError("malformed verdict: a field has the wrong type")
    size = (
        _ENTRY_OVERHEAD
        + key_bytes
        + sum(len(c) + _PER_CAVEAT for c in caveats)
        + sys.getsizeof(subject)
        + sys.getsizeof(token_id)
    )
    policy = Policy(caveats)
    cached_until = now + max(0.0, float(ttl))
    expires = None if expires_at is None else float(expires_at)
    valid_until = min(cached_until, float(key_expires_at))
    return Verdict(
        subject=subject,
        token_id=token_id,
        key_id=key_id,
        admin=admin,
        mfa=mfa,
        generation=generation,
        expires_at=expires,
        key_expires_at=float(key_expires_at),
        policy=policy,
        cursor=cursor,
        cached_until=cached_until,
        size=size,
        valid_until=valid_until,
        principal=Principal(
            subject, token_id, expires, MappingProxyType(dict(policy.declared)), mfa
        ),
        reusable_until=(
            min(t for t in (valid_until, policy.expires_at, expires) if t is not None)
            if policy.reusable()
            else None
        ),
    )


CacheKey = str | tuple[str, ...]


class VerdictCache:
    """An LRU of verdicts bounded both in entries and in (estimated) bytes."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[CacheKey, Verdict] = OrderedDict()

    def get(self, key: CacheKey) -> Verdict | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: CacheKey, verdict: Verdict) -> None:
        if verdict.size > self.max_bytes or self.max_entries <= 0:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._entries[key] = verdict
        self.bytes += verdict.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size

    def discard(self, key: CacheKey) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def forget_key(self, key_id: str) -> None:
        """Drop every verdict signed by root key `key_id`."""
        for k in [k for k, v in self._entries.items() if v.key_id == key_id]:
            self.discard(k)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
