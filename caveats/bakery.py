"""The macaroon-bakery standard first-party conditions, read as the Go and Python bakeries write.

A condition is text: a name, then a single space and an argument, as in
`time-before 2026-11-21T22:00:00Z`. Only the standard namespace, whose prefix is empty, is
understood; a condition with any other name is unknown.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from caveats.context import Context
from caveats.errors import CaveatError, UnknownCaveat
from caveats.result import SUCCESS, Failure, Result, clip

TIME_BEFORE: Final = "time-before"
DECLARED: Final = "declared"
ALLOW: Final = "allow"
DENY: Final = "deny"
ERROR: Final = "error"

_PASSED: Final = Failure("token expired (time-before caveat)")
_NO_OPERATION: Final = Failure("the token restricts operations; the request names none")


@dataclass(frozen=True, slots=True)
class TimeBefore:
    """`time-before T`: the token may be used only while `now` is before `expires_at`.

    An attenuation someone added, so once passed it denies this request (`invalid=False`); the
    token's own minted expiry is the typed `Expiry` caveat.
    """

    expires_at: float

    def check(self, ctx: Context) -> Result:
        """Holds while `now` is before `expires_at`."""
        return SUCCESS if ctx.now < self.expires_at else _PASSED


@dataclass(frozen=True, slots=True)
class Declared:
    """`declared KEY VALUE`: an attribute asserted about the bearer; the checker collects it."""

    key: str
    value: str

    def check(self, ctx: Context) -> Result:
        """Always holds; two different values for one key are the checker's concern."""
        return SUCCESS


@dataclass(frozen=True, slots=True)
class Allow:
    """`allow OP...`: the request's operation must be listed (an empty list allows nothing)."""

    operations: tuple[str, ...]

    def check(self, ctx: Context) -> Result:
        """Holds when the context names a listed operation."""
        if ctx.operation is None:
            return _NO_OPERATION
        if ctx.operation in self.operations:
            return SUCCESS
        return Failure(f"operation {clip(ctx.operation)} is not allowed by the token")


@dataclass(frozen=True, slots=True)
class Deny:
    """`deny OP...`: the request's operation must not be listed.

    The bakery lets a request that names no operation pass a deny; a request without an operation
    is denied here instead, because we cannot tell that it is not one of the denied ones.
    """

    operations: tuple[str, ...]

    def check(self, ctx: Context) -> Result:
        """Holds when the context names an operation that is not listed."""
        if not self.operations:
            return SUCCESS
        if ctx.operation is None:
            return _NO_OPERATION
        if ctx.operation in self.operations:
            return Failure(f"operation {clip(ctx.operation)} is denied by the token")
        return SUCCESS


@dataclass(frozen=True, slots=True)
class ErrorCondition:
    """`error MESSAGE`: never holds; bakery writes it in place of a caveat it cannot make."""

    message: str

    def check(self, ctx: Context) -> Result:
        """Never holds."""
        return Failure(f"error caveat: {clip(self.message)}", invalid=True)


Condition = TimeBefore | Declared | Allow | Deny | ErrorCondition


# A field is a run of what Go's unicode.IsSpace calls non-space. Python's str.split() also
# splits at the separators U+001C..U+001F, which Go keeps inside a field: `allow a\x1cb` allowed
# `b` here and only the operation `a\x1cb` in a Go verifier (red team: the same caveat must mean
# the same thing to every verifier of the ecosystem).
_FIELD: Final = re.compile(r"(?:\S|[\x1c-\x1f])+")


def fields(text: str) -> list[str]:
    """`text` split at runs of white space, as Go's strings.Fields splits it (bakery's reader)."""
    return _FIELD.findall(text)


def parse_condition(text: str) -> Condition:
    """The bakery condition in `text`; `UnknownCaveat` for an unknown name, else `CaveatError`.

    Error messages do not repeat `text`: it is untrusted, and the caller decides how much to echo.
    """
    if not text:
        raise CaveatError("empty condition")
    name, space, arg = text.partition(" ")
    if not name:
        raise CaveatError("condition starts with a space")
    if name == TIME_BEFORE:
        return TimeBefore(parse_rfc3339(arg))
    if name == DECLARED:
        key, space, value = arg.partition(" ")
        if not key or not space:
            raise CaveatError("declared needs a key and a value")
        return Declared(key, value)
    if name == ALLOW:
        return Allow(tuple(fields(arg)))
    if name == DENY:
        return Deny(tuple(fields(arg)))
    if name == ERROR:
        return ErrorCondition(arg)
    raise UnknownCaveat("unknown condition")


# RFC 3339 `date-time` as Go's time.RFC3339Nano and pyrfc3339 read it: a full date, `T`, a full
# time with optional fractional seconds of any length, and `Z` or a numeric `±hh:mm` offset.
# RFC 3339 §5.6 allows lower-case `t` and `z`, as pyrfc3339 does. No leap second (neither reads
# `:60`), no spaces, no week or ordinal dates: what datetime.fromisoformat would also take is
# deliberately not accepted.
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def parse_rfc3339(text: str) -> float:
    """Unix seconds of an RFC 3339 timestamp (`2026-11-21T22:00:00.123456Z`), else `CaveatError`."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise CaveatError("not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    fields = (int(year), int(month), int(day), int(hour), int(minute), int(second))
    try:
        datetime(*fields)  # validates the calendar: month 13, 31 April and hour 24 do not exist
    except ValueError:
        raise CaveatError("not a valid date and time") from None
    seconds = calendar.timegm(fields)
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            raise CaveatError("offset out of range")
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    if fraction is None:
        return float(seconds)
    # Nanoseconds, as Go keeps them; further digits are cut, not rounded, as Go does.
    return seconds + int(fraction[:9].ljust(9, "0")) / 1e9


def format_rfc3339(unix_seconds: float) -> str:
    """`unix_seconds` as bakery's Go code writes a `time-before`: UTC, `Z`, no trailing zeros."""
    text = datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text.rstrip("0").rstrip(".") + "Z"


def time_before(unix_seconds: float) -> bytes:
    """The predicate `time-before <RFC 3339>` for attenuating a token by hand."""
    return f"{TIME_BEFORE} {format_rfc3339(unix_seconds)}".encode()
