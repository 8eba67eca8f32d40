"""Checking a token's first-party predicates against a request: the /verify hot path.

Decoding is the costly part and depends only on the predicate's bytes, so the decoded caveat (or
the failure saying it is malformed) is cached per predicate; results, which depend on the
context, never are. A cached hit costs a hash and a dict lookup, then the check itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from caveats.bakery import Allow, Condition, Declared, Deny, TimeBefore, parse_condition
from caveats.context import Context
from caveats.errors import CaveatError, UnknownCaveat
from caveats.registry import Caveat, decode
from caveats.result import REASON_ECHO_LIMIT, SUCCESS, Failure, Success, clip
from caveats.standard import (
    Audience,
    ClientCIDR,
    Expiry,
    Generation,
    Operations,
    Resources,
    Subject,
)

#: How many decoded predicates the cache holds: the shared ones (operations, resources,
#: audiences: few distinct values) and the recent per-token ones; a miss only costs a decode.
#: When it is full it is emptied and fills again. ~16,000 entries are ~4 MB of a verify
#: worker's RSS (65,536 were ~16 MB under a stream of distinct tokens, for no more hits).
CACHE_SIZE: Final = 16384
#: Longer predicates are decoded every time rather than cached. Real caveats are tens of bytes.
MAX_CACHED_PREDICATE: Final = 1024
#: What the decoded predicates in the cache may hold in all, by `footprint`: a predicate's bytes
#: do not bound what it decodes to (red team: a 1 KB list of IPv6 networks decodes to ~65 KB,
#: so 16,384 of them were ~680 MB). Past it the cache is emptied, as when it is full.
CACHE_FOOTPRINT: Final = 8 * 1024 * 1024

_CHECK_CRASHED: Final = Failure("caveat check failed unexpectedly")
_NO_RESULT: Final = Failure("caveat check returned no result")
_NOT_BYTES: Final = Failure("malformed caveat: predicate is not bytes", invalid=True)
_SUBJECTS_CONFLICT: Final = Failure("conflicting subject caveats", invalid=True)
#: The checks whose answer for a request, once it held, holds for the same request from any client
#: address and at any later time until the policy's expiry (see Policy.reusable). Not ClientCIDR
#: (it reads `Context.client_ip`), nor NotBefore (a wall clock stepped back makes the token not
#: yet valid again: red team). A list of the ones that qualify, rather than of the ones that do
#: not, so a kind added later does not qualify until it is added here.
_REUSABLE: Final = frozenset(
    (Expiry, Operations, Resources, Audience, Generation, TimeBefore, Allow, Deny)
)


# Not frozen: a frozen dataclass's __init__ costs about three times as much.
@dataclass(slots=True)
class Outcome:
    """What checking a token's predicates found; empty `failures` means every caveat holds."""

    failures: list[Failure]
    subject: str | None
    expires_at: float | None
    declared: dict[str, str]

    @property
    def ok(self) -> bool:
        """Every caveat holds."""
        return not self.failures

    @property
    def invalid(self) -> bool:
        """Some failure makes the token bad everywhere (→ 401 rather than 403)."""
        return any(f.invalid for f in self.failures)


# What a predicate decodes to: something to check, or the invalid Failure saying why not.
_Parsed = Caveat | Failure

# The `declared` of every Policy without declared values (most): one shared dict instead of one
# per cached chain. Never mutated: Verified and Outcome hand out copies.
_NO_DECLARED: Final[dict[str, str]] = {}


def check_predicates(predicates: Iterable[bytes | str], ctx: Context) -> Outcome:
    """Check every first-party predicate against `ctx`; never raises on bad predicates.

    A predicate is a typed caveat (`[tag, ...]`) or a bakery text condition; anything else, an
    unknown tag or condition, or a malformed one, is an invalid `Failure`. `str` predicates (as
    pymacaroons hands them to verifier callbacks) are taken as their UTF-8 bytes.
    """
    policy = Policy(predicates)
    return Outcome(policy.explain(ctx), policy.subject, policy.expires_at, dict(policy.declared))


class Policy:
    """A token's first-party predicates decoded once, to be checked against many contexts.

    A verified signature chain is cached (tokensvc.tokens.verification), and with it this: what does
    not depend on the request — subject, declared values, earliest expiry, malformed or
    conflicting predicates — is settled when it is built, and `holds` runs only the
    context-dependent checks. `holds(ctx)` is True exactly when `explain(ctx)` finds no failure.

    Built on every uncached /verify, so the static pass is one flat loop: a decode-cache lookup
    and a type test per predicate.
    """

    __slots__ = ("_ok", "_steps", "declared", "expires_at", "footprint", "predicates", "subject")

    def __init__(self, predicates: Iterable[bytes | str]) -> None:
        # The predicates as the decode cache first saw them: tokens minted alike share their
        # scope's predicates, and a cached chain then holds one copy of each, not its own
        # (~60 bytes a predicate, ×6 predicates × 50,000 cached chains).
        same = _canonical.get
        self.predicates = tuple([same(p, p) if type(p) is bytes else p for p in predicates])
        subject: str | None = None
        expires_at: float | None = None
        declared: dict[str, str] = {}
        # In predicate order: the caveats whose check depends on the context, and the failures
        # that hold in every context (malformed, unknown, conflicting), so `explain` lists
        # reasons in token order. The caveats themselves, not their bound `check` methods: a
        # Policy lives in every cached chain, and a bound method is 64 bytes more per step.
        steps: list[Caveat | Failure] = []
        # Subjects (None) and declared keys seen with two different values; they stay out.
        conflicts: set[str | None] | None = None
        ok = True  # False: some predicate fails in every context
        footprint = 0
        cached = _decoded.get
        for predicate in self.predicates:
            # The decode cache inline (bytes from a verified chain, seen before); anything else,
            # a miss included, through _parsed. (An oversized predicate is only hashed here: its
            # size is bounded by the token's.)
            item = cached(predicate) if type(predicate) is bytes else None
            if item is None:
                item = _parsed(predicate)
            footprint += _footprint(predicate, item)
            if type(item) is Subject:
                value = item.subject
                if subject is None:
                    if conflicts is None or None not in conflicts:
                        subject = value
                elif subject != value:
                    subject = None
                    conflicts = (conflicts or set()) | {None}
                    steps.append(_SUBJECTS_CONFLICT)
                    ok = False
            elif type(item) is Declared:
                key, value = item.key, item.value
                previous = declared.get(key)
                if previous is None:
                    if conflicts is None or key not in conflicts:
                        declared[key] = value
                elif previous != value:
                    del declared[key]
                    conflicts = (conflicts or set()) | {key}
                    steps.append(
                        Failure(f"conflicting declared values for {clip(key)}", invalid=True)
                    )
                    ok = False
            elif type(item) is Failure:
                steps.append(item)
                ok = False
            else:
                if (type(item) is Expiry or type(item) is TimeBefore) and (
                    expires_at is None or item.expires_at < expires_at
                ):
                    expires_at = float(item.expires_at)
                steps.append(item)
        self.subject = subject
        self.expires_at = expires_at
        # Bytes this policy keeps alive, estimated from above (`_footprint`): what a cache of
        # policies weighs them by (tokensvc.tokens.verification.ChainCache).
        self.footprint = footprint
        self.declared = declared or _NO_DECLARED
        self._steps = tuple(steps)
        self._ok = ok

    def holds(self, ctx: Context) -> bool:
        """Whether every predicate holds in `ctx` (the fast answer; no reasons)."""
        if not self._ok:
            return False
        try:
            for step in self._steps:
                if step.check(ctx) is not SUCCESS:  # type: ignore[union-attr]  # _ok: no Failure
                    return False
        except Exception:  # noqa: BLE001 - a crashing check denies; explain says so
            return False
        return True

    def reusable(self) -> bool:
        """Whether an allow of this policy may be reused for the same request until the policy's
        expiry: no check reads the context's `client_ip` (an allow for one address holds for
        every other) or can fail later for a time it once held at (only an expiry can)."""
        return self._ok and all(type(step) in _REUSABLE for step in self._steps)

    def explain(self, ctx: Context) -> list[Failure]:
        """Every failure in `ctx`, in predicate order; empty exactly when `holds(ctx)`."""
        failures: list[Failure] = []
        for step in self._steps:
            if type(step) is Failure:
                failures.append(step)
                continue
            try:
                result = step.check(ctx)  # type: ignore[union-attr]  # Failures were skipped
            except Exception:  # noqa: BLE001 - a crashing check must deny, never escape /verify
                failures.append(_CHECK_CRASHED)
                continue
            if result is SUCCESS:
                continue
            if isinstance(result, Failure):
                failures.append(result)
            elif not isinstance(result, Success):
                failures.append(_NO_RESULT)
        return failures


def subject_of(predicates: Iterable[bytes | str]) -> str | None:
    """The token's subject, before checking: needed to look up the generation for `Context`.

    None when there is no Subject caveat or the Subject caveats disagree.
    """
    subject: str | None = None
    for predicate in predicates:
        item = _parsed(predicate)
        if isinstance(item, Subject):
            if subject is not None and item.subject != subject:
                return None
            subject = item.subject
    return subject


def parse_predicate(predicate: bytes) -> Caveat | Condition:
    """The typed caveat or bakery condition in `predicate`; CaveatError if it is neither.

    For code that reasons about a token's caveats (delegation, introspection) rather than checking
    them; uses the same decode cache as the checker.
    """
    item = _parsed(predicate)
    if type(item) is Failure:
        raise CaveatError(item.reason)
    return item  # type: ignore[return-value]


def _parsed(predicate: bytes | str) -> _Parsed:
    """The decoded caveat or condition in `predicate`, or the invalid Failure saying why not."""
    # First the common case (bytes from a verified chain, seen before): one type check and the
    # decode cache, before any conversion.
    if type(predicate) is bytes:
        if len(predicate) <= MAX_CACHED_PREDICATE:
            item = _decoded.get(predicate)
            return item if item is not None else _parse_cached(predicate)
        return _parse(predicate)
    if isinstance(predicate, str):
        try:
            predicate = predicate.encode("utf-8")
        except UnicodeEncodeError:
            return _NOT_BYTES
    elif isinstance(predicate, (bytes, bytearray, memoryview)):
        predicate = bytes(predicate)
    else:
        return _NOT_BYTES
    if len(predicate) <= MAX_CACHED_PREDICATE:
        return _parse_cached(predicate)
    return _parse(predicate)


def _parse(predicate: bytes) -> _Parsed:
    try:
        if predicate[:1] == b"[":
            return decode(predicate)
        return parse_condition(predicate.decode("utf-8"))
    except UnknownCaveat:
        return Failure(f"unknown caveat {_echo(predicate)}", invalid=True)
    except CaveatError as exc:
        return Failure(f"malformed caveat {_echo(predicate)}: {exc}", invalid=True)
    except UnicodeDecodeError:
        return Failure(f"malformed caveat {_echo(predicate)}: not UTF-8", invalid=True)


# The decode cache: predicate -> what it decodes to. A plain dict emptied when full rather than an
# LRU: functools.lru_cache builds a key tuple and moves a link on every hit, and keeps ~140 bytes
# of bookkeeping per entry besides (9 MB when full); a lookup here is one dict probe. Tokens in
# use fill it again at one decode per distinct predicate. Bounded by CACHE_SIZE entries of at
# most MAX_CACHED_PREDICATE bytes, whoever chooses the predicates.
_decoded: dict[bytes, _Parsed] = {}
# The first bytes object seen of each predicate in `_decoded` (the same keys, cleared with it).
_canonical: dict[bytes, bytes] = {}


# What the cache holds by `_footprint`, at most CACHE_FOOTPRINT (a one-element list: no global).
_held: list[int] = [0]


def _parse_cached(predicate: bytes) -> _Parsed:
    """`_parse` through the decode cache; for predicates of at most MAX_CACHED_PREDICATE bytes."""
    item = _decoded.get(predicate)
    if item is None:
        item = _parse(predicate)
        size = _footprint(predicate, item)
        if len(_decoded) >= CACHE_SIZE or _held[0] + size > CACHE_FOOTPRINT:
            clear_decode_cache()
        _decoded[predicate] = item
        _canonical[predicate] = predicate
        _held[0] += size
    return item


def clear_decode_cache() -> None:
    """Forget every decoded predicate (benchmarks of the cold path; tests)."""
    _decoded.clear()
    _canonical.clear()
    _held[0] = 0


def decode_cache_footprint() -> int:
    """What the decode cache holds, by `_footprint` (at most CACHE_FOOTPRINT)."""
    return _held[0]


# Bytes per element a decoded list keeps (a short str and its slot), and per network of a
# ClientCIDR (an ip_network object, its address objects and the text), measured with tracemalloc:
# ~60 and ~550 (IPv4) to ~970 (IPv6); rounded up.
_PER_ELEMENT: Final = 64
_PER_NETWORK: Final = 1024
# A predicate's bytes object and its decoded object, besides the elements.
_PER_PREDICATE: Final = 100


def _footprint(predicate: object, item: _Parsed) -> int:
    """The bytes `predicate` and what it decodes to keep alive, estimated from above: a list of
    operations or networks costs per element, whatever the predicate's length."""
    # Not bytes or text: an invalid predicate (`_NOT_BYTES`), whose object is the caller's.
    length = len(predicate) if isinstance(predicate, bytes | str) else 0
    size = _PER_PREDICATE + 2 * length
    kind = type(item)
    if kind is ClientCIDR:
        size += _PER_NETWORK * len(item.cidrs)  # type: ignore[union-attr]
    elif kind is Operations or kind is Allow or kind is Deny:
        size += _PER_ELEMENT * len(item.operations)  # type: ignore[union-attr]
    elif kind is Resources:
        size += _PER_ELEMENT * len(item.resources)  # type: ignore[union-attr]
    elif kind is Audience:
        size += _PER_ELEMENT * len(item.audiences)  # type: ignore[union-attr]
    return size


def _echo(predicate: bytes) -> str:
    """At most ~80 characters of an untrusted predicate, escaped, for a reason."""
    # Slice first so a huge predicate is not decoded whole; clip() then cuts to the limit.
    text = predicate[: 4 * REASON_ECHO_LIMIT + 4].decode("utf-8", "replace")
    return clip(text)
