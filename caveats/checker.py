"""Checking a token's first-party predicates against a request: the /verify hot path.

Decoding is the costly part and depends only on the predicate's bytes, so the decoded caveat (or
the failure saying it is malformed) is cached per predicate; results, which depend on the
context, never are. A cached hit costs a hash and a dict lookup, then the check itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from caveats.bakery import Declared, TimeBefore, parse_condition
from caveats.context import Context
from caveats.errors import CaveatError, UnknownCaveat
from caveats.registry import Caveat, decode
from caveats.result import REASON_ECHO_LIMIT, SUCCESS, Failure, Success, clip
from caveats.standard import Expiry, Subject

#: How many decoded predicates the cache holds (about the caveats of every live token on a busy
#: node; a miss only costs a decode).
CACHE_SIZE: Final = 65536
#: Longer predicates are decoded every time rather than cached, which bounds the cache's memory
#: (CACHE_SIZE × this) however predicates are chosen. Real caveats are tens of bytes.
MAX_CACHED_PREDICATE: Final = 1024

_CHECK_CRASHED: Final = Failure("caveat check failed unexpectedly")
_NO_RESULT: Final = Failure("caveat check returned no result")
_NOT_BYTES: Final = Failure("malformed caveat: predicate is not bytes", invalid=True)
_SUBJECTS_CONFLICT: Final = Failure("conflicting subject caveats", invalid=True)


# Not frozen: a frozen dataclass's __init__ costs about three times as much, on every /verify.
@dataclass(slots=True)
class Outcome:
    """What checking a token's predicates found; empty `failures` means every caveat holds."""

    failures: list[Failure]
    subject: str | None
    expires_at: float | None
    declared: dict[str, str]
    # Subjects and declared keys seen with two different values; they stay out for good.
    _conflicts: set[str | None] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Every caveat holds."""
        return not self.failures

    @property
    def invalid(self) -> bool:
        """Some failure makes the token bad everywhere (→ 401 rather than 403)."""
        return any(f.invalid for f in self.failures)

    def _conflicted(self, key: str | None) -> bool:
        return self._conflicts is not None and key in self._conflicts

    def _add_conflict(self, key: str | None, failure: Failure) -> None:
        if self._conflicts is None:
            self._conflicts = set()
        self._conflicts.add(key)
        self.failures.append(failure)


# What a predicate decodes to: something to check, or the invalid Failure saying why not.
_Parsed = Caveat | Failure


def check_predicates(predicates: Iterable[bytes | str], ctx: Context) -> Outcome:
    """Check every first-party predicate against `ctx`; never raises on bad predicates.

    A predicate is a typed caveat (`[tag, ...]`) or a bakery text condition; anything else, an
    unknown tag or condition, or a malformed one, is an invalid `Failure`. `str` predicates (as
    pymacaroons hands them to verifier callbacks) are taken as their UTF-8 bytes.
    """
    outcome = Outcome([], None, None, {})
    failures = outcome.failures
    for predicate in predicates:
        try:
            item = _parsed(predicate)
            collect = _COLLECTORS.get(type(item))
            if collect is not None and not collect(item, outcome):
                continue
            result = item.check(ctx)  # type: ignore[union-attr]  # a Failure was collected
            if result is SUCCESS:
                continue
            if isinstance(result, Failure):
                failures.append(result)
            elif not isinstance(result, Success):
                failures.append(_NO_RESULT)
        except Exception:  # noqa: BLE001 - a crashing check must deny, never escape /verify
            failures.append(_CHECK_CRASHED)
    return outcome


class Policy:
    """A token's first-party predicates decoded once, to be checked against many contexts.

    A verified signature chain is cached (tokensvc.verification), and with it this: what does
    not depend on the request — subject, declared values, earliest expiry, malformed or
    conflicting predicates — is settled when it is built, and `holds` runs only the
    context-dependent checks. `holds(ctx)` is True exactly when `check_predicates(predicates,
    ctx)` would find no failure; when it is False, `check_predicates` gives the reasons.
    """

    __slots__ = ("_checks", "declared", "expires_at", "predicates", "subject")

    def __init__(self, predicates: Iterable[bytes]) -> None:
        self.predicates = tuple(predicates)
        outcome = Outcome([], None, None, {})
        checks: list[Callable[[Context], Success | Failure]] = []
        for predicate in self.predicates:
            item = _parsed(predicate)
            collect = _COLLECTORS.get(type(item))
            if collect is not None and not collect(item, outcome):
                continue
            checks.append(item.check)  # type: ignore[union-attr]  # a Failure was collected
        self.subject: str | None = outcome.subject
        self.expires_at: float | None = outcome.expires_at
        self.declared: dict[str, str] = outcome.declared
        # None: a predicate fails in every context (malformed, unknown, conflicting).
        self._checks = None if outcome.failures else tuple(checks)

    def holds(self, ctx: Context) -> bool:
        """Whether every predicate holds in `ctx` (the fast answer; no reasons)."""
        checks = self._checks
        if checks is None:
            return False
        try:
            for check in checks:
                if check(ctx) is not SUCCESS:
                    return False
        except Exception:  # noqa: BLE001 - a crashing check denies; check_predicates says so
            return False
        return True


# Predicates that carry information besides holding or not. A collector records its item in the
# outcome and returns whether the item still needs to be checked.


def _collect_failure(item: Failure, outcome: Outcome) -> bool:
    outcome.failures.append(item)
    return False


def _collect_subject(item: Subject, outcome: Outcome) -> bool:
    # The subject key is None, which no declared key can be.
    if outcome.subject is None:
        if not outcome._conflicted(None):
            outcome.subject = item.subject
    elif outcome.subject != item.subject:
        outcome.subject = None
        outcome._add_conflict(None, _SUBJECTS_CONFLICT)
    return False


def _collect_declared(item: Declared, outcome: Outcome) -> bool:
    declared = outcome.declared
    previous = declared.get(item.key)
    if previous is None:
        if not outcome._conflicted(item.key):
            declared[item.key] = item.value
    elif previous != item.value:
        del declared[item.key]
        failure = Failure(f"conflicting declared values for {clip(item.key)}", invalid=True)
        outcome._add_conflict(item.key, failure)
    return False


def _collect_expiry(item: Expiry | TimeBefore, outcome: Outcome) -> bool:
    if outcome.expires_at is None or item.expires_at < outcome.expires_at:
        outcome.expires_at = float(item.expires_at)
    return True


_COLLECTORS: Final[dict[type, Callable[[Any, Outcome], bool]]] = {
    Failure: _collect_failure,
    Subject: _collect_subject,
    Declared: _collect_declared,
    Expiry: _collect_expiry,
    TimeBefore: _collect_expiry,
}


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


def _parsed(predicate: bytes | str) -> _Parsed:
    """The decoded caveat or condition in `predicate`, or the invalid Failure saying why not."""
    # First the common case (bytes from a verified chain, seen before): one type check and the
    # decode cache, before any conversion.
    if type(predicate) is bytes and len(predicate) <= MAX_CACHED_PREDICATE:
        return _parse_cached(predicate)
    if type(predicate) is not bytes:
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


_parse_cached = functools.lru_cache(maxsize=CACHE_SIZE)(_parse)


def _echo(predicate: bytes) -> str:
    """At most ~80 characters of an untrusted predicate, escaped, for a reason."""
    # Slice first so a huge predicate is not decoded whole; clip() then cuts to the limit.
    text = predicate[: 4 * REASON_ECHO_LIMIT + 4].decode("utf-8", "replace")
    return clip(text)
