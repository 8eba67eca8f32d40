"""BakeryConfig: defaults, TOKENSVC_* variables, and clear errors for bad values."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from tokensvc.bakery.config import BakeryConfig, ThirdPartyKey
from tokensvc.operations.config import ConfigError

KEY = base64.b64encode(b"k" * 32).decode()


def test_defaults_serve_bakery_with_five_minute_discharges_and_trust_no_one() -> None:
    """No variables: prefix /bakery, 5-minute discharges, no third parties, an hour of key caching."""
    config = BakeryConfig.from_env({})

    assert config == BakeryConfig()
    assert config.prefix == "/bakery"
    assert config.discharge_ttl == timedelta(minutes=5)
    assert config.third_party_locations == () and config.third_party_keys == ()
    assert config.info_cache_ttl == timedelta(hours=1)


def test_every_variable_is_read() -> None:
    """Prefix, TTLs, allow-listed locations (normalised) and configured keys come from the environment."""
    config = BakeryConfig.from_env(
        {
            "TOKENSVC_BAKERY_PREFIX": "/auth/bakery",
            "TOKENSVC_DISCHARGE_TTL": "90s",
            "TOKENSVC_THIRD_PARTY_LOCATIONS": " https://idm.example/ , http://10.0.0.1:8081/bakery",
            "TOKENSVC_THIRD_PARTY_KEYS": f"https://a.example {KEY} 1; https://b.example/ {KEY}",
            "TOKENSVC_THIRD_PARTY_INFO_TTL": "10m",
        }
    )

    assert config.prefix == "/auth/bakery"
    assert config.discharge_ttl == timedelta(seconds=90)
    assert config.third_party_locations == ("https://idm.example", "http://10.0.0.1:8081/bakery")
    assert config.third_party_keys == (
        ThirdPartyKey("https://a.example", b"k" * 32, 1),
        ThirdPartyKey("https://b.example", b"k" * 32, 3),
    )
    assert config.info_cache_ttl == timedelta(minutes=10)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BAKERY_PREFIX", "bakery", "URL path"),
        ("BAKERY_PREFIX", "/bakery/", "URL path"),
        ("BAKERY_PREFIX", "/ba kery", "URL path"),
        ("DISCHARGE_TTL", "0", "positive"),
        ("DISCHARGE_TTL", "2d", "at most 24h"),
        ("DISCHARGE_TTL", "soon", "expected a duration"),
        ("THIRD_PARTY_LOCATIONS", "ftp://x.example", "http"),
        ("THIRD_PARTY_KEYS", "https://a.example", "LOCATION PUBLIC_KEY"),
        ("THIRD_PARTY_KEYS", "https://a.example !!!", "not base64"),
        ("THIRD_PARTY_KEYS", "https://a.example AAAA", "not 32 bytes"),
        ("THIRD_PARTY_KEYS", f"https://a.example {KEY} 4", "1, 2 or 3"),
        ("THIRD_PARTY_KEYS", f"https://a.example {KEY} three", "1, 2 or 3"),
    ],
)
def test_bad_values_are_config_errors_naming_the_problem(
    name: str, value: str, message: str
) -> None:
    """Each malformed variable is a ConfigError that names the variable and says what is wrong."""
    with pytest.raises(ConfigError, match=message) as refused:
        BakeryConfig.from_env({f"TOKENSVC_{name}": value})

    assert f"TOKENSVC_{name}" in str(refused.value)


def test_the_root_prefix_is_allowed() -> None:
    """An empty prefix serves the discharger at /discharge, as a dedicated discharger would."""
    assert BakeryConfig(prefix="").prefix == ""


def test_a_configured_key_hides_its_bytes() -> None:
    """A ThirdPartyKey's repr shows its location and version, not the key bytes."""
    assert "kkkk" not in repr(ThirdPartyKey("https://a.example", b"k" * 32))
