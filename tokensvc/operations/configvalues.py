"""The kinds of value a `TOKENSVC_*` variable holds, each a parser that says what it accepts.

Every parser takes the text of an environment variable (or, from `Config(...)` with keywords,
an already typed value) and returns the typed value, or raises ValueError whose message is what
the variable accepts ("a whole number from 1 to 65535"). tokensvc.operations.config turns that
into the one line an operator sees: the variable, what it accepts, what it got.

The messages never quote a value: the caller decides whether the value may be shown (secrets,
URLs with passwords are not).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from tokensvc.errors import TokensvcError

__all__ = [
    "FLAG_WORDS",
    "LOG_LEVELS",
    "ConfigError",
    "database_url",
    "duration",
    "duration_or_off",
    "flag",
    "host",
    "is_loopback",
    "log_level",
    "name_list",
    "networks",
    "parse_duration",
    "readable_file",
    "redis_url",
    "token_text",
    "whole_number",
]


class ConfigError(TokensvcError):
    """The configuration is invalid."""

    code = "config_error"


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
DURATION_FORMS = "a duration such as 90s, 15m, 1h30m or 2d"
# The longest duration any setting takes: a hundred years. Longer ones are no one's intent, and
# subtracted from now (a retention's cut-off) they leave the calendar and fail every round.
LONGEST: timedelta = timedelta(days=36500)


def parse_duration(text: str) -> timedelta:
    """`90`, `90s`, `15m`, `1h30m`, `2d` → timedelta; bare numbers are seconds."""
    text = text.strip()
    # ASCII only: "²".isdigit() is true, and \d would take any script's digits.
    match = _DURATION.fullmatch(text) if text.isascii() else None
    if text.isascii() and text.isdigit():
        match = _DURATION.fullmatch(text + "s")
    if not text or match is None:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h30m, 2d)")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    try:
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ConfigError(f"duration out of range: {text!r}") from None


def duration(value: Any) -> Any:
    """A positive duration."""
    accepts = f"{DURATION_FORMS}, more than 0 and at most 36500d"
    if isinstance(value, str):
        try:
            value = parse_duration(value)
        except ConfigError:
            raise ValueError(accepts) from None
    if isinstance(value, timedelta) and not timedelta(0) < value <= LONGEST:
        raise ValueError(accepts)
    return value


def duration_or_off(minimum: timedelta) -> Callable[[Any], Any]:
    """`off` (None: never), or a duration of at least `minimum` — a floor for settings where a
    slip of the unit (`1h` for `1d`) would throw away what an operator meant to keep."""
    floor = f"{minimum.days}d" if minimum.days and not minimum.seconds else f"{minimum}"
    accepts = f"off, or {DURATION_FORMS} from {floor} to 36500d"

    def parse(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "off"):
            return None
        if isinstance(value, str):
            try:
                value = parse_duration(value)
            except ConfigError:
                raise ValueError(accepts) from None
        if isinstance(value, timedelta) and not minimum <= value <= LONGEST:
            raise ValueError(accepts)
        return value

    return parse


def whole_number(low: int, high: int) -> Callable[[Any], Any]:
    """A whole number from `low` to `high`, written in ASCII digits."""
    accepts = f"a whole number from {low} to {high}"

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            # isascii first: int() also takes "٣" and "1_000", which no operator means.
            if not (text.isascii() and text.isdigit()):
                raise ValueError(accepts)
            value = int(text)
        if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
            raise ValueError(accepts)
        return value

    return parse


# What a boolean variable accepts; anything else is refused rather than read as false, so a
# typo (`ture`) cannot switch a feature off in silence.
FLAG_WORDS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def flag(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return FLAG_WORDS[value.strip().lower()]
        except KeyError:
            raise ValueError("true or false (also 1/0, yes/no, on/off)") from None
    return value


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_level(value: Any) -> Any:
    if isinstance(value, str):
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError("one of " + ", ".join(LOG_LEVELS))
        return level
    return value


_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def host(value: Any) -> Any:
    """An IP address or a host name to bind."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return str(ipaddress.ip_address(text.strip("[]")))
        except ValueError:
            pass
        if _HOSTNAME.fullmatch(text) is None:
            raise ValueError("an IP address (127.0.0.1, 0.0.0.0, ::) or a host name")
        return text
    return value


def is_loopback(name: str) -> bool:
    """True for addresses only this machine reaches: 127.0.0.0/8, ::1, localhost."""
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def networks(value: Any) -> Any:
    """Comma-separated CIDRs (or single addresses) → a tuple of their text."""
    if isinstance(value, str):
        value = tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, tuple | list):
        for item in value:
            try:
                ipaddress.ip_network(str(item), strict=False)
            except ValueError:
                raise ValueError(
                    "comma-separated addresses or CIDRs such as 10.0.0.0/8, fd00::/8"
                ) from None
        return tuple(value)
    return value


def name_list(known: tuple[str, ...]) -> Callable[[Any], Any]:
    """Comma-separated names out of `known` → a frozenset."""
    accepts = "a comma-separated list of " + ", ".join(known)

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip().lower() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple | set | frozenset):
            if any(name not in known for name in value):
                raise ValueError(accepts)
            return frozenset(value)
        return value

    return parse


def role_list(value: Any) -> Any:
    """Comma-separated role names (as users' roles are written) → a frozenset."""
    if isinstance(value, str):
        value = [part.strip().lower() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple | set | frozenset):
        if any(re.fullmatch(r"[a-z][a-z0-9_.-]{0,31}", str(name)) is None for name in value):
            raise ValueError("a comma-separated list of role names such as admin")
        return frozenset(value)
    return value


def token_text(*, max_length: int, example: str) -> Callable[[Any], Any]:
    """Printable text without spaces (a macaroon location, a Redis key prefix)."""
    accepts = f"up to {max_length} printable characters without spaces, such as {example}"

    def parse(value: Any) -> Any:
        if isinstance(value, str) and not (
            0 < len(value) <= max_length
            and value.isprintable()
            and not any(char.isspace() for char in value)
        ):
            raise ValueError(accepts)
        return value

    return parse


def readable_file(value: Any) -> Any:
    if isinstance(value, str) and not (os.path.isfile(value) and os.access(value, os.R_OK)):
        raise ValueError("the path of a readable file")
    return value


def directory(value: Any) -> Any:
    if isinstance(value, str):
        value = Path(value)
    if isinstance(value, Path) and value.exists() and not value.is_dir():
        raise ValueError("a directory (it is created when missing)")
    return value


# The database URL forms tokensvc accepts, and the driver each one means. libpq's own forms
# (what psql, ./dev and most platforms hand out) mean asyncpg, the one PostgreSQL driver here.
_DATABASE_SCHEMES = {
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "sqlite": "sqlite+aiosqlite",
}


def database_url(value: Any) -> Any:
    """A PostgreSQL or SQLite URL, with the driver tokensvc uses put in."""
    if not isinstance(value, str):
        return value
    accepts = "a URL postgresql://user:pass@host/db (or postgres://, postgresql+asyncpg://) or sqlite:///path"
    scheme, sep, rest = value.strip().partition("://")
    driver = _DATABASE_SCHEMES.get(scheme.lower())
    if not sep or driver is None:
        raise ValueError(accepts)
    url = f"{driver}://{rest}"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ValueError(accepts) from None
    if driver.startswith("postgresql") and not (parsed.database or parsed.host):
        raise ValueError(accepts)
    return url


_REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)


def redis_url(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    scheme, sep, rest = value.strip().partition("://")
    if not sep or scheme.lower() not in _REDIS_SCHEMES or not rest:
        raise ValueError(
            "a URL redis://host:6379/0, rediss://…, unix://…, redis+cluster://host:port,… "
            "or redis+sentinel://host:26379,…/service"
        )
    from tokensvc.operations.redisconn import check_url

    try:
        check_url(value.strip())
    except ConfigError as exc:
        raise ValueError(f"a valid Redis URL ({exc.message})") from None
    return value.strip()
