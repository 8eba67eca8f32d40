"""The password policy (NIST SP 800-63B-4): lengths, zxcvbn's blocklist and matchers, names."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from tests.conftest import make_config
from tokensvc.accounts.password_policy import (
    DEFAULT_POLICY,
    PasswordPolicy,
    common_passwords,
)
from tokensvc.accounts.passwords import CHEAP_FOR_TESTS, PasswordHasher
from tokensvc.errors import BadRequest
from tokensvc.operations.configvalues import ConfigError

PASSPHRASE_64 = "the quiet lantern drifts past seven copper bridges at dawn again"


def refusal(password: str, **kwargs: Any) -> str:
    """The message the default policy refuses `password` with (fails if it is accepted)."""
    with pytest.raises(BadRequest) as refused:
        DEFAULT_POLICY.check(password, **kwargs)
    message = str(refused.value)
    # Short ones ("password", "pass") are words of the messages themselves.
    assert len(password) < 10 or password not in message
    return message


@pytest.mark.parametrize("has_mfa", [False, True], ids=["password-only", "with-mfa"])
def test_the_100_most_common_passwords_are_refused(has_mfa: bool) -> None:
    """Every one of the 100 most common passwords of zxcvbn's list is refused, with MFA too."""
    top = FREQUENCY_LISTS["passwords"][:100]

    messages = {refusal(password, has_mfa=has_mfa) for password in top}

    assert len(top) == 100
    assert messages == {"the password is on a list of commonly used passwords"}


def test_a_64_character_passphrase_is_accepted() -> None:
    """A 64-character passphrase of lowercase words passes: no composition rules."""
    assert len(PASSPHRASE_64) == 64

    DEFAULT_POLICY.check(PASSPHRASE_64, username="alice")


def test_password_is_refused_as_common() -> None:
    """`password` is refused, and the message says it is a commonly used password."""
    assert "commonly used" in refusal("password")


def test_the_username_inside_the_password_is_refused() -> None:
    """A password that contains the user's name, in any letter case, is refused as such."""
    assert refusal("Alice-walks-the-copper-bridge", username="alice") == (
        "the password must not contain the user name"
    )
    assert "user name" in refusal("bridge of ALICE and lanterns", username="Alice")


def test_the_service_name_inside_the_password_is_refused() -> None:
    """A password that contains "tokensvc" is refused, saying so."""
    assert "service name" in refusal("my TokenSvc lantern passphrase")


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("aaaaaaaaaaaaaaaa", "repetitive"),
        ("passwordpassword1", "repetitive"),
        ("abcdefghijklmnopq", "sequence"),
        ("1234567890123456", "too easy to guess"),
        ("qwertyuiopasdfgh", "too easy to guess"),
        ("zxcvbnmasdfghjkl", "too easy to guess"),
    ],
)
def test_repetitive_sequential_and_keyboard_walks_are_refused(password: str, why: str) -> None:
    """zxcvbn's matchers take repeats, sequences and keyboard walks apart; they are refused."""
    message = refusal(password)

    assert message.startswith("the password is too easy to guess: ")
    assert why in message


def test_length_is_15_alone_and_8_with_mfa() -> None:
    """A strong 10-character password is too short as the only factor, fine with a second one."""
    strong_ten = "vT9#qLm2xZ"

    assert "at least 15 characters" in refusal(strong_ten)
    DEFAULT_POLICY.check(strong_ten, has_mfa=True)
    assert "at least 8 characters" in refusal("vT9#qLm", has_mfa=True)


def test_lengths_are_configurable_within_nist_bounds() -> None:
    """The minimums come from configuration; below NIST's 8, or above the 64 that must always be
    accepted, is a configuration error."""
    policy = make_config(
        database_url="sqlite+aiosqlite://",
        data_dir=Path("/nonexistent"),
        password_min_length=20,
        password_min_length_mfa=12,
    ).password_policy()

    assert (policy.min_length, policy.min_length_with_mfa) == (20, 12)
    with pytest.raises(BadRequest, match="at least 20"):
        policy.check("lantern river quiet")
    for bad in ({"password_min_length": 7}, {"password_min_length": 65}):
        with pytest.raises(ConfigError):
            make_config(database_url="sqlite+aiosqlite://", data_dir=Path("/x"), **bad)
    with pytest.raises(ConfigError, match="MIN_LENGTH_MFA"):
        make_config(
            database_url="sqlite+aiosqlite://",
            data_dir=Path("/x"),
            password_min_length=10,
            password_min_length_mfa=12,
        )
    with pytest.raises(ValueError, match="minimum length"):
        PasswordPolicy(min_length=8, min_length_with_mfa=10)


def test_the_bootstrap_admin_password_is_held_to_the_policy() -> None:
    """TOKENSVC_ADMIN_PASSWORD that holds the name `admin` or is common is a configuration error
    naming the rule, never the password."""
    for password in ("admin lantern passphrase", "1234567890123456"):
        with pytest.raises(ConfigError) as refused:
            make_config(
                database_url="sqlite+aiosqlite://",
                data_dir=Path("/x"),
                admin_password=password,
            )

        assert "TOKENSVC_ADMIN_PASSWORD" in str(refused.value)
        assert password not in str(refused.value)


def test_the_blocklist_is_zxcvbns_shipped_list() -> None:
    """The blocklist is the 30,000 passwords zxcvbn ships, read offline from the package."""
    blocklist = common_passwords()

    assert len(blocklist) == len(set(FREQUENCY_LISTS["passwords"])) >= 30_000
    assert "password" in blocklist


def test_the_strength_estimate_is_bounded_in_cost() -> None:
    """zxcvbn sees at most the first 32 characters, so even a 1,024-character password is
    judged in well under a second (zxcvbn alone takes ~0.4 s at its own 72-character cap)."""
    longest = ("copper lantern bridge at dawn " * 40)[:1024]

    started = time.perf_counter()
    DEFAULT_POLICY.check(longest)
    elapsed = time.perf_counter() - started

    print(f"\npolicy check of 1,024 characters: {elapsed * 1e3:.1f} ms")
    assert elapsed < 0.5


async def test_rehash_on_login_does_not_apply_the_policy() -> None:
    """A password set under an older, laxer policy is rehashed on login, not refused."""
    hasher = PasswordHasher(profile=CHEAP_FOR_TESTS, max_concurrency=1, max_waiting=2)

    stored = await hasher.rehash("password")
    result = await hasher.verify(stored, "password")
    hasher.close()

    assert result.ok


async def test_hash_applies_the_policy_with_the_username() -> None:
    """PasswordHasher.hash refuses a password containing the username it is given."""
    hasher = PasswordHasher(profile=CHEAP_FOR_TESTS, max_concurrency=1, max_waiting=2)

    with pytest.raises(BadRequest, match="user name"):
        await hasher.hash("carol walks the lantern bridge", username="carol")
    accepted = await hasher.hash("carol walks the lantern bridge", username="dave")
    hasher.close()

    assert accepted.startswith("$argon2id$")
