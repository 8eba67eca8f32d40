"""The rotation policy: validation, slots, and the longest TTL a current key can back."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from keystore import RotationPolicy


def test_defaults_are_a_day_of_life_and_a_new_key_every_hour() -> None:
    """Keys live 24 h, one is made per hour, so tokens of up to 23 h can be minted."""
    policy = RotationPolicy()

    assert policy.lifetime == timedelta(hours=24)
    assert policy.generate_interval == timedelta(hours=1)
    assert policy.max_token_ttl == timedelta(hours=23)


@pytest.mark.parametrize(
    ("lifetime", "interval", "message"),
    [
        (timedelta(hours=1), timedelta(hours=1), "shorter than lifetime"),
        (timedelta(hours=1), timedelta(hours=2), "shorter than lifetime"),
        (timedelta(hours=1), timedelta(0), "generate_interval must be positive"),
        (timedelta(hours=1), timedelta(seconds=-1), "generate_interval must be positive"),
        (timedelta(0), timedelta(seconds=1), "lifetime must be positive"),
    ],
)
def test_inconsistent_policies_are_rejected(
    lifetime: timedelta, interval: timedelta, message: str
) -> None:
    """Non-positive durations and an interval not shorter than the lifetime are refused."""
    with pytest.raises(ValueError, match=message):
        RotationPolicy(lifetime=lifetime, generate_interval=interval)


def test_policy_is_frozen() -> None:
    """A policy cannot be changed after it is made."""
    policy = RotationPolicy()

    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.lifetime = timedelta(hours=1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("moment", "slot"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), 0),
        (datetime(1970, 1, 1, 0, 59, 59, 999_999, tzinfo=UTC), 0),
        (datetime(1970, 1, 1, 1, tzinfo=UTC), 1),
        (datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), -1),
        (datetime(2025, 1, 6, 13, 30, tzinfo=UTC), 1_736_170_200 // 3600),
    ],
)
def test_slot_is_the_floor_of_epoch_seconds_over_the_interval(moment: datetime, slot: int) -> None:
    """slot(now) = floor(epoch seconds / interval seconds), exactly, also before 1970."""
    policy = RotationPolicy()

    assert policy.slot(moment) == slot


def test_slot_start_and_end_enclose_now_whatever_its_time_zone() -> None:
    """The slot start is on an interval boundary at or before now, the end one interval later."""
    policy = RotationPolicy(generate_interval=timedelta(minutes=15))
    now = datetime(2025, 1, 6, 15, 7, 30, tzinfo=timezone(timedelta(hours=2)))

    start, end = policy.slot_start(now), policy.slot_end(now)

    assert start == datetime(2025, 1, 6, 13, 0, tzinfo=UTC)
    assert start.tzinfo == UTC
    assert start <= now < end
    assert end - start == timedelta(minutes=15)
    assert policy.slot(now) == policy.slot(now.astimezone(UTC))


def test_expires_at_is_creation_plus_lifetime_in_utc() -> None:
    """A key made at t expires at t + lifetime, given in UTC."""
    policy = RotationPolicy(lifetime=timedelta(hours=2), generate_interval=timedelta(minutes=30))
    created = datetime(2025, 1, 6, 12, 0, tzinfo=timezone(timedelta(hours=1)))

    expires = policy.expires_at(created)

    assert expires == datetime(2025, 1, 6, 13, 0, tzinfo=UTC)
    assert expires.tzinfo == UTC


def test_naive_datetimes_are_refused() -> None:
    """Naive times are ambiguous, so the policy refuses them."""
    policy = RotationPolicy()

    with pytest.raises(ValueError, match="naive"):
        policy.slot(datetime(2025, 1, 6))
