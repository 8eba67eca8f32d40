"""Which passwords may be set: NIST SP 800-63B-4 §3.1.1.2, with zxcvbn's lists and matchers.

- Length: at least `min_length` characters (15) when the password is the only factor, at least
  `min_length_with_mfa` (8) when the account also has a second factor; up to 1,024, so any
  passphrase of 64 characters or more is accepted. Counted as sent and after NFKC (the form that
  is hashed), so what openapi.yaml's minLength/maxLength refuse is refused here too.
- No composition rules (no "one digit, one symbol").
- Refused: a password on zxcvbn's list of 30,000 common passwords (the compromised-password
  corpora it was built from; shipped in the package, so no network call), one that contains the
  user's name or the service's, and one that zxcvbn's matchers take apart into repeats,
  sequences, keyboard walks and common passwords — fewer than 10^10 guesses in its estimate
  (`aaaaaaaaaaaaaaaa`, `1234567890123456`, `qwertyuiopasdfgh`, `passwordpassword1`).
- The message says which rule refused, never the password.

zxcvbn's cost grows faster than the length (about 15 ms at 16 characters, 50 ms at 32, 360 ms at
72, its maximum), so it sees the first `ESTIMATE_CHARACTERS` characters only: what follows can
only add guesses, and a password whose first 32 characters are that weak is refused anyway.
The estimate runs off the event loop (`PasswordHasher.hash` calls `check` in a thread).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tokensvc.errors import BadRequest

__all__ = [
    "DEFAULT_POLICY",
    "ESTIMATE_CHARACTERS",
    "MAX_PASSWORD_BYTES",
    "MIN_GUESSES_LOG10",
    "SERVICE_NAME",
    "PasswordPolicy",
    "common_passwords",
]

MAX_PASSWORD_BYTES = 1024
#: NIST's floor for any password, and its floor when the password is the only factor.
NIST_MIN_LENGTH = 8
NIST_SINGLE_FACTOR_MIN_LENGTH = 15
#: Every length up to this must be acceptable (NIST: "at least 64").
NIST_ACCEPTED_LENGTH = 64
ESTIMATE_CHARACTERS = 32
#: zxcvbn's estimate below which a password is "too easy to guess" (10^10: well past any online
#: attack the lockout allows, and what a repeat, a sequence or a keyboard walk never reaches).
MIN_GUESSES_LOG10 = 10.0
SERVICE_NAME = "tokensvc"
#: Names shorter than this are not looked for inside the password: refusing every password
#: that contains "al" would be a composition rule in disguise.
MIN_CONTAINED_NAME = 3

_WHY_BY_PATTERN = {
    "repeat": "it is repetitive",
    "sequence": "it is a sequence",
    "spatial": "it is a keyboard pattern",
    "dictionary": "it is made of common passwords or words",
    "date": "it is mostly a date",
    "regex": "it is mostly a year",
}


@functools.cache
def common_passwords() -> frozenset[str]:
    """zxcvbn's list of common passwords (lowercase), loaded on first use (~12 MB, 0.4 s)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in text)


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """The rules a new password must pass (see the module docstring)."""

    min_length: int = NIST_SINGLE_FACTOR_MIN_LENGTH
    min_length_with_mfa: int = NIST_MIN_LENGTH
    service_name: str = SERVICE_NAME

    def __post_init__(self) -> None:
        if not NIST_MIN_LENGTH <= self.min_length_with_mfa <= self.min_length:
            raise ValueError(
                f"need {NIST_MIN_LENGTH} <= the minimum length with MFA <= the minimum length"
            )
        if self.min_length > NIST_ACCEPTED_LENGTH:
            raise ValueError(f"the minimum length must be at most {NIST_ACCEPTED_LENGTH}")

    def minimum(self, *, has_mfa: bool) -> int:
        """The shortest password accepted for an account with (or without) a second factor."""
        return self.min_length_with_mfa if has_mfa else self.min_length

    def check(self, password: str, *, username: str | None = None, has_mfa: bool = False) -> None:
        """Raise BadRequest, saying which rule, unless `password` may be set; never echoes it.

        Raises:
            BadRequest: the password breaks a rule of the policy.
        """
        if not _has_surrogates(password) and _fold(password) in common_passwords():
            # Before the length: "password" is refused as common, which says more than "short".
            raise BadRequest("the password is on a list of commonly used passwords")
        self.check_length(password, has_mfa=has_mfa)
        folded = _fold(password)
        if username and len(username) >= MIN_CONTAINED_NAME and _fold(username) in folded:
            raise BadRequest("the password must not contain the user name")
        if self.service_name and _fold(self.service_name) in folded:
            raise BadRequest(f"the password must not contain the service name ({SERVICE_NAME})")
        self._check_guessability(password, username=username)

    def check_length(self, password: str, *, has_mfa: bool = False) -> None:
        """The cheap rules alone: valid Unicode, and the length as sent and after NFKC.

        Raises:
            BadRequest: the password is not valid Unicode, or too short or too long.
        """
        if _has_surrogates(password):
            raise BadRequest("the password must be valid Unicode text")
        normalised = unicodedata.normalize("NFKC", password)
        minimum = self.minimum(has_mfa=has_mfa)
        # Counted as sent and after normalisation, so that a password that NFKC lengthens ("¾"
        # is "3⁄4") still has the length openapi.yaml's minLength asks of the text as sent.
        if min(len(password), len(normalised)) < minimum:
            raise BadRequest(
                f"the password must be at least {minimum} characters long"
                + ("" if has_mfa else " (a passphrase of several words is easiest)")
            )
        if len(password) > MAX_PASSWORD_BYTES:
            raise BadRequest(f"the password must be at most {MAX_PASSWORD_BYTES} characters long")
        if len(normalised.encode("utf-8")) > MAX_PASSWORD_BYTES:
            raise BadRequest(f"the password must be at most {MAX_PASSWORD_BYTES} bytes of UTF-8")

    def _check_guessability(self, password: str, *, username: str | None) -> None:
        from zxcvbn import zxcvbn

        inputs = [self.service_name, *([username] if username else [])]
        sample = unicodedata.normalize("NFKC", password)[:ESTIMATE_CHARACTERS]
        result = zxcvbn(sample, user_inputs=inputs)
        if result["guesses_log10"] >= MIN_GUESSES_LOG10:
            return
        raise BadRequest(f"the password is too easy to guess: {_why(result['sequence'])}")


def _why(sequence: Sequence[Mapping[str, object]]) -> str:
    """The main reason zxcvbn found, in words: the pattern covering most of the password."""
    covered: dict[str, int] = {}
    for match in sequence:
        pattern = str(match.get("pattern", ""))
        if pattern in _WHY_BY_PATTERN:
            covered[pattern] = covered.get(pattern, 0) + len(str(match.get("token", "")))
    if not covered:
        return "it is too predictable"
    return _WHY_BY_PATTERN[max(covered, key=lambda p: covered[p])]


DEFAULT_POLICY = PasswordPolicy()
