"""The binary codec against pymacaroons' own serializer, and against hostile bytes."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymacaroons import MACAROON_V1, MACAROON_V2
from pymacaroons import Macaroon as PyMacaroon

from tokensvc.errors import InvalidToken
from tokensvc.macaroons.macaroon import MalformedMacaroon, parse_binary, parse_v2, serialize_v2
from tokensvc.macaroons.tokenformat import b64decode_any

# Each test runs on the compiled path (tokensvc._speedups) and on the pure-Python one.
pytestmark = pytest.mark.usefixtures("verify_path")


def _pymacaroon(version: int, caveats: int = 3, third_party: bool = True) -> PyMacaroon:
    m = PyMacaroon(location="here", identifier=b"\x01\x00id", key=os.urandom(32), version=version)
    for i in range(caveats):
        m.add_first_party_caveat(f"caveat {i}")
    if third_party:
        m.add_third_party_caveat("https://there", os.urandom(32), "third-party-id")
    return m


@pytest.mark.parametrize("version", [MACAROON_V1, MACAROON_V2])
def test_parses_what_pymacaroons_writes(version: int) -> None:
    """Every field pymacaroons writes, in either binary version, comes back unchanged."""
    m = _pymacaroon(version)

    parsed = parse_binary(b64decode_any(m.serialize()), max_caveats=16)

    assert parsed.identifier == m.identifier_bytes
    assert parsed.location == b"here"
    assert [c.cid for c in parsed.caveats] == [c.caveat_id_bytes for c in m.caveats]
    assert parsed.caveats[-1].vid == m.caveats[-1].verification_key_id
    assert parsed.caveats[-1].location == b"https://there"
    assert parsed.signature.hex() == m.signature


def test_serialize_v2_is_byte_identical_to_pymacaroons() -> None:
    """Our v2 writer produces exactly pymacaroons' bytes, so tokens round-trip through both."""
    m = _pymacaroon(MACAROON_V2)
    raw = b64decode_any(m.serialize())

    again = serialize_v2(parse_v2(raw, max_caveats=16))

    assert again == raw


def test_trailing_bytes_are_rejected() -> None:
    """A v2 macaroon followed by extra bytes is malformed (pymacaroons silently ignores them)."""
    raw = b64decode_any(_pymacaroon(MACAROON_V2).serialize())

    with pytest.raises(MalformedMacaroon):
        parse_v2(raw + b"\x00", max_caveats=16)


def test_caveat_count_is_bounded() -> None:
    """A token with more caveats than the limit is rejected before any crypto runs."""
    raw = b64decode_any(_pymacaroon(MACAROON_V2, caveats=20, third_party=False).serialize())

    with pytest.raises(MalformedMacaroon, match="more than 10 caveats"):
        parse_binary(raw, max_caveats=10)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x03abc", b"\x02", b"\x02\x02\xff\xff\xff\xff\xff\xff", b"\x02\x02\x05abc", b"0000"],
)
def test_garbage_is_malformed(raw: bytes) -> None:
    """Empty, unknown-version, truncated and overlong inputs are MalformedMacaroon."""
    with pytest.raises(MalformedMacaroon):
        parse_binary(raw, max_caveats=16)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_invalid_token(raw: bytes) -> None:
    """Whatever the bytes, parsing returns a macaroon or raises InvalidToken, nothing else."""
    try:
        parse_binary(raw, max_caveats=16)
    except InvalidToken:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.data())
def test_truncations_of_a_valid_token_never_crash(cut: int, data: st.DataObject) -> None:
    """Every prefix of a valid token, and every single-byte change, parses or raises InvalidToken."""
    raw = bytearray(b64decode_any(_pymacaroon(MACAROON_V2).serialize()))
    index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[index] = data.draw(st.integers(min_value=0, max_value=255))

    for candidate in (bytes(raw[:cut]), bytes(raw)):
        try:
            parse_binary(candidate, max_caveats=16)
        except InvalidToken:
            pass
