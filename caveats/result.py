"""The outcome of checking one caveat: `Success` or `Failure(reason)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

#: How many characters of untrusted text (predicates, request fields) a reason may echo.
REASON_ECHO_LIMIT: Final = 80


@dataclass(frozen=True, slots=True)
class Success:
    """The caveat holds for this context; use the `SUCCESS` singleton."""

    def __bool__(self) -> Literal[True]:
        return True


@dataclass(frozen=True, slots=True)
class Failure:
    """The caveat does not hold.

    `invalid=True` means the token is bad everywhere (expired, not yet valid, revoked, unknown or
    malformed caveat) → 401; `invalid=False` means a good token that this context does not
    satisfy → 403.
    """

    reason: str
    invalid: bool = False

    # Falsy, so that `if result:` can never mistake a failure for a success.
    def __bool__(self) -> Literal[False]:
        return False


SUCCESS: Final = Success()

Result = Success | Failure


def clip(text: str, limit: int = REASON_ECHO_LIMIT) -> str:
    """`text` quoted and cut to about `limit` characters, safe to put in a reason or a log line."""
    if len(text) > limit:
        return repr(text[:limit]) + "…"
    return repr(text)
