"""Configuration of the discharger and of third-party caveats (`TOKENSVC_*` variables).

Kept apart from `tokensvc.operations.config.Config` so this package can be wired in without touching it;
`BakeryConfig.from_env` reads the same environment with the same duration syntax. It imports
`tokensvc.operations.config` only inside functions, so that `tokensvc.operations.config` can import this module at its
top and hold a `BakeryConfig` field without an import cycle.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

# The prefix is a URL path: slash-separated segments of unreserved characters, no trailing slash.
_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)*")

MAX_DISCHARGE_TTL = timedelta(hours=24)


def _config_error(message: str) -> Exception:
    from tokensvc.operations.config import ConfigError

    return ConfigError(message)


def _duration(text: str) -> timedelta:
    from tokensvc.operations.config import parse_duration

    return parse_duration(text)


def normalise_location(location: str) -> str:
    """A third-party location as bakery compares them: surrounding spaces and trailing slashes cut."""
    return location.strip().rstrip("/")


@dataclass(frozen=True, slots=True)
class ThirdPartyKey:
    """A discharger whose public key and bakery version are configured, never fetched."""

    location: str
    public_key: bytes = field(repr=False)
    version: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "location", normalise_location(self.location))
        if not self.location:
            raise _config_error("a third-party key needs a location")
        if len(self.public_key) != 32:
            raise _config_error(f"the public key of {self.location} is not 32 bytes")
        if self.version not in (1, 2, 3):
            raise _config_error(f"the bakery version of {self.location} must be 1, 2 or 3")


@dataclass(frozen=True)
class BakeryConfig:
    """Where the discharger is served, how long its discharges live, which third parties we trust."""

    prefix: str = "/bakery"
    discharge_ttl: timedelta = timedelta(minutes=5)
    # Locations whose /discharge/info may be fetched (exact match after normalise_location).
    third_party_locations: tuple[str, ...] = ()
    # Locations with a configured key: allowed too, and never fetched.
    third_party_keys: tuple[ThirdPartyKey, ...] = ()
    info_cache_ttl: timedelta = timedelta(hours=1)
    fetch_timeout: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "third_party_locations",
            tuple(normalise_location(loc) for loc in self.third_party_locations),
        )
        self.validate()

    def validate(self) -> None:
        if _PREFIX.fullmatch(self.prefix) is None:
            raise _config_error(
                "TOKENSVC_BAKERY_PREFIX: expected a URL path such as /bakery (no trailing slash);"
                f" got {self.prefix!r}"
            )
        if not timedelta(0) < self.discharge_ttl <= MAX_DISCHARGE_TTL:
            raise _config_error(
                "TOKENSVC_DISCHARGE_TTL: expected a duration that is positive and at most 24h;"
                f" got {self.discharge_ttl}"
            )
        for location in self.third_party_locations:
            if not location.startswith(("https://", "http://")):
                raise _config_error(
                    "TOKENSVC_THIRD_PARTY_LOCATIONS: expected comma-separated http:// or https://"
                    f" URLs; got {location!r}"
                )
        if self.info_cache_ttl <= timedelta(0):
            raise _config_error(
                f"TOKENSVC_THIRD_PARTY_INFO_TTL: expected a positive duration; got {self.info_cache_ttl}"
            )
        if self.fetch_timeout <= 0:
            raise _config_error("the third-party fetch timeout must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BakeryConfig:
        """Read TOKENSVC_BAKERY_PREFIX, TOKENSVC_DISCHARGE_TTL, TOKENSVC_THIRD_PARTY_LOCATIONS,
        TOKENSVC_THIRD_PARTY_KEYS and TOKENSVC_THIRD_PARTY_INFO_TTL."""
        env = os.environ if env is None else env
        defaults = cls()

        def get(name: str) -> str | None:
            value = env.get("TOKENSVC_" + name)
            return value if value not in (None, "") else None

        def duration(name: str, default: timedelta) -> timedelta:
            text = get(name)
            if text is None:
                return default
            try:
                return _duration(text)
            except Exception:  # noqa: BLE001 - ConfigError, imported lazily (module docstring)
                raise _config_error(
                    f"TOKENSVC_{name}: expected a duration such as 90s, 15m or 1h; got {text!r}"
                ) from None

        try:
            keys = parse_third_party_keys(get("THIRD_PARTY_KEYS") or "")
        except Exception as exc:  # noqa: BLE001 - ConfigError, imported lazily (module docstring)
            raise _config_error(
                "TOKENSVC_THIRD_PARTY_KEYS: expected `LOCATION PUBLIC_KEY_BASE64 [VERSION]`"
                f" entries separated by ; ({exc}); got {get('THIRD_PARTY_KEYS')!r}"
            ) from None
        return cls(
            prefix=get("BAKERY_PREFIX") or defaults.prefix,
            discharge_ttl=duration("DISCHARGE_TTL", defaults.discharge_ttl),
            third_party_locations=parse_locations(get("THIRD_PARTY_LOCATIONS") or ""),
            third_party_keys=keys,
            info_cache_ttl=duration("THIRD_PARTY_INFO_TTL", defaults.info_cache_ttl),
        )


def parse_locations(text: str) -> tuple[str, ...]:
    """Comma-separated locations, e.g. `https://idm.example.com, https://other.example/bakery`."""
    return tuple(normalise_location(part) for part in text.split(",") if part.strip())


def parse_third_party_keys(text: str) -> tuple[ThirdPartyKey, ...]:
    """`LOCATION PUBLIC_KEY_BASE64 [VERSION]` entries separated by `;` (version defaults to 3)."""
    keys: list[ThirdPartyKey] = []
    for entry in text.split(";"):
        fields = entry.split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise _config_error("entries are `LOCATION PUBLIC_KEY [VERSION]`, separated by ;")
        location, key_text = fields[0], fields[1]
        try:
            public_key = base64.b64decode(
                key_text.replace("-", "+").replace("_", "/") + "=" * (-len(key_text) % 4),
                validate=True,
            )
        except (binascii.Error, ValueError):
            raise _config_error(f"the public key of {location} is not base64") from None
        version = 3
        if len(fields) == 3:
            if not fields[2].isdigit():
                raise _config_error(f"the bakery version of {location} must be 1, 2 or 3")
            version = int(fields[2])
        keys.append(ThirdPartyKey(location, public_key, version))
    return tuple(keys)
