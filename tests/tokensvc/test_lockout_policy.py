"""The lockout policy's arithmetic and validation."""

from __future__ import annotations

import pytest

from tokensvc.accounts.lockout import LockoutPolicy


def test_wait_is_zero_below_the_threshold_then_doubles_to_the_cap() -> None:
    """Below the threshold there is no wait; from it, base_wait doubling per failure, capped."""
    policy = LockoutPolicy(base_wait=1.0, max_wait=900.0)

    waits = [policy.wait(n, 5) for n in range(3, 17)]

    assert waits == [0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]


def test_wait_stays_finite_for_huge_counts() -> None:
    """An absurd failure count still yields the cap, not an overflow."""
    policy = LockoutPolicy()

    wait = policy.wait(10**9, 1)

    assert wait == policy.max_wait


def test_defaults_match_the_design() -> None:
    """Defaults: 10 per identity, 5 per identity+IP, 50 per IP, 1 s to 15 min, 30-day trust."""
    policy = LockoutPolicy()

    assert (policy.identity_threshold, policy.identity_ip_threshold, policy.ip_threshold) == (
        10,
        5,
        50,
    )
    assert (policy.base_wait, policy.max_wait, policy.window) == (1.0, 900.0, 900.0)
    assert policy.trusted_ip_window == 30 * 24 * 3600


@pytest.mark.parametrize(
    "changes",
    [{"identity_threshold": 0}, {"base_wait": 0}, {"base_wait": 10, "max_wait": 5}, {"window": 0}],
)
def test_nonsense_policies_are_rejected(changes: dict[str, float]) -> None:
    """A policy that could never lock, or never unlock, is refused at construction."""
    with pytest.raises(ValueError):  # noqa: PT011 - parametrized over rules with messages of their own
        LockoutPolicy(**changes)  # type: ignore[arg-type]
