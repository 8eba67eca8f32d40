"""The external token string: prefix, base64url, checksum; and plain pymacaroons strings."""

from __future__ import annotations

import os

import pytest
from pymacaroons import MACAROON_V2
from pymacaroons import Macaroon as PyMacaroon

from tokensvc.errors import InvalidToken, PayloadTooLarge
from tokensvc.macaroons.macaroon import parse_binary
from tokensvc.macaroons.tokenformat import (
    TOKEN_PATTERN,
    b64decode_any,
    checksum_ok,
    decode_token,
    encode_token,
)

# Each test runs on the compiled path (tokensvc._speedups) and on the pure-Python one.
pytestmark = pytest.mark.usefixtures("verify_path")


def _macaroon() -> PyMacaroon:
    m = PyMacaroon(
        location="l",
        identifier=b"\x01\x00" + os.urandom(16) + b"k1",
        key=b"k" * 32,
        version=MACAROON_V2,
    )
    m.add_first_party_caveat("a = 1")
    return m


def _ours() -> str:
    return encode_token(parse_binary(b64decode_any(_macaroon().serialize()), max_caveats=8))


def test_token_matches_the_published_pattern() -> None:
    """Secret scanners can find our tokens with TOKEN_PATTERN, whole."""
    token = _ours()

    match = TOKEN_PATTERN.search(f"leaked: {token} in a log")

    assert match is not None and match.group(0) == token
    assert checksum_ok(token)


def test_a_typo_fails_the_checksum() -> None:
    """Changing one character of the payload is caught offline by the checksum."""
    token = _ours()
    i = len("tsv1_") + 10
    typo = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]

    assert not checksum_ok(typo)
    with pytest.raises(InvalidToken, match="checksum"):
        decode_token(typo, max_bytes=4096, max_caveats=8)


@pytest.mark.parametrize("padded", [True, False])
def test_plain_pymacaroons_serializations_are_accepted(padded: bool) -> None:
    """A pymacaroons base64 string (url-safe, padded or not) decodes to the same macaroon."""
    m = _macaroon()
    text = m.serialize()
    text = text + "=" * (-len(text) % 4) if padded else text

    parsed = decode_token(text, max_bytes=4096, max_caveats=8)

    assert parsed.signature.hex() == m.signature


def test_oversized_tokens_are_refused_before_decoding() -> None:
    """A token longer than the limit is PayloadTooLarge whatever it contains."""
    with pytest.raises(PayloadTooLarge):
        decode_token("tsv1_" + "A" * 5000, max_bytes=4096, max_caveats=8)


@pytest.mark.parametrize("text", ["", "%%%", "tsv1_", "tsv1_abc.00000000", "AAAA", "a b c"])
def test_garbage_strings_are_invalid_tokens(text: str) -> None:
    """Non-base64, truncated and checksum-less strings are InvalidToken."""
    with pytest.raises(InvalidToken):
        decode_token(text, max_bytes=4096, max_caveats=8)
