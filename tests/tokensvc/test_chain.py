"""The HMAC chain: agreement with pymacaroons both ways, and bounded handling of hostile bundles."""

from __future__ import annotations

import hmac
import os
import time

import pytest
from pymacaroons import MACAROON_V2, Verifier
from pymacaroons import Macaroon as PyMacaroon

from tokensvc.errors import InvalidToken
from tokensvc.macaroons import chain
from tokensvc.macaroons.macaroon import Caveat, Macaroon, parse_binary, serialize_v2
from tokensvc.macaroons.tokenformat import b64decode_any

# Each test runs on the compiled path (tokensvc._speedups) and on the pure-Python one.
pytestmark = pytest.mark.usefixtures("verify_path")

ROOT_KEY = os.urandom(32)


def _parse(m: PyMacaroon) -> Macaroon:
    return parse_binary(b64decode_any(m.serialize()), max_caveats=64)


def _to_py(m: Macaroon) -> PyMacaroon:
    import base64

    return PyMacaroon.deserialize(base64.urlsafe_b64encode(serialize_v2(m)).decode())


def _ours(*predicates: bytes) -> Macaroon:
    return chain.sign(
        derived_key=chain.derive_key(ROOT_KEY),
        identifier=b"\x01\x00" + bytes(16) + b"k1",
        caveats=[Caveat(p) for p in predicates],
        location=b"tokensvc",
    )


def test_pymacaroons_verifies_what_we_sign() -> None:
    """A macaroon we sign passes pymacaroons' Verifier with the same root key."""
    ours = _ours(b"a = 1", b"b = 2")
    verifier = Verifier()
    verifier.satisfy_exact("a = 1")
    verifier.satisfy_exact("b = 2")

    assert verifier.verify(_to_py(ours), ROOT_KEY)


def test_caveats_added_by_pymacaroons_are_returned_for_checking() -> None:
    """A caveat appended with pymacaroons keeps the chain valid and reaches the caveat checker."""
    py = _to_py(_ours(b"a = 1"))
    py.add_first_party_caveat("time-before 2000-01-01T00:00:00Z")

    predicates = chain.verify_chain(_parse(py), chain.derive_key(ROOT_KEY), [])

    assert predicates == [b"a = 1", b"time-before 2000-01-01T00:00:00Z"]


def test_a_tampered_caveat_breaks_the_signature() -> None:
    """Dropping or editing a caveat is detected."""
    ours = _ours(b"a = 1", b"b = 2")
    dropped = Macaroon(ours.identifier, ours.caveats[:1], ours.signature, ours.location)
    edited = Macaroon(ours.identifier, (Caveat(b"a = 2"), ours.caveats[1]), ours.signature)

    for bad in (dropped, edited):
        with pytest.raises(InvalidToken, match="signature"):
            chain.verify_chain(bad, chain.derive_key(ROOT_KEY), [])


def test_wrong_key_fails() -> None:
    """A macaroon does not verify under another root key."""
    with pytest.raises(InvalidToken):
        chain.verify_chain(_ours(b"x"), chain.derive_key(os.urandom(32)), [])


def _with_discharge() -> tuple[PyMacaroon, PyMacaroon, bytes]:
    discharge_key = os.urandom(32)
    root = PyMacaroon(location="svc", identifier="root", key=ROOT_KEY, version=MACAROON_V2)
    root.add_first_party_caveat("r = 1")
    root.add_third_party_caveat("https://tp", discharge_key, "tp-caveat")
    discharge = PyMacaroon(
        location="https://tp", identifier="tp-caveat", key=discharge_key, version=MACAROON_V2
    )
    discharge.add_first_party_caveat("d = 1")
    return root, discharge, discharge_key


def test_bound_discharge_verifies_and_contributes_its_caveats() -> None:
    """A discharge bound as pymacaroons binds it is accepted and its caveats are checked too."""
    root, discharge, _ = _with_discharge()
    bound = root.prepare_for_request(discharge)

    predicates = chain.verify_chain(_parse(root), chain.derive_key(ROOT_KEY), [_parse(bound)])

    assert sorted(predicates) == [b"d = 1", b"r = 1"]


def test_unbound_or_missing_discharge_fails() -> None:
    """Without the discharge, or with it unbound, verification fails."""
    root, discharge, _ = _with_discharge()

    with pytest.raises(InvalidToken, match="no discharge"):
        chain.verify_chain(_parse(root), chain.derive_key(ROOT_KEY), [])
    with pytest.raises(InvalidToken, match="discharge"):
        chain.verify_chain(_parse(root), chain.derive_key(ROOT_KEY), [_parse(discharge)])


def test_discharge_bound_to_another_token_fails() -> None:
    """A discharge bound to one token is refused on another with the same third-party caveat."""
    root, discharge, discharge_key = _with_discharge()
    other = PyMacaroon(location="svc", identifier="other", key=ROOT_KEY, version=MACAROON_V2)
    other.add_third_party_caveat("https://tp", discharge_key, "tp-caveat")
    bound_to_root = root.prepare_for_request(discharge)

    with pytest.raises(InvalidToken, match="discharge"):
        chain.verify_chain(_parse(other), chain.derive_key(ROOT_KEY), [_parse(bound_to_root)])


def test_unused_discharge_is_rejected() -> None:
    """A discharge no caveat asks for is an error, as in Go's macaroon library."""
    root, discharge, _ = _with_discharge()
    bound = root.prepare_for_request(discharge)
    stray = root.prepare_for_request(
        PyMacaroon(location="x", identifier="stray", key=os.urandom(32), version=MACAROON_V2)
    )

    with pytest.raises(InvalidToken, match="not used"):
        chain.verify_chain(_parse(root), chain.derive_key(ROOT_KEY), [_parse(bound), _parse(stray)])


@pytest.mark.serial  # wall-clock bound: run alone
def test_self_referencing_discharge_is_rejected_quickly() -> None:
    """A discharge whose own caveat names itself is refused in bounded time, not recursed into."""
    discharge_key = os.urandom(32)
    root = PyMacaroon(location="svc", identifier="root", key=ROOT_KEY, version=MACAROON_V2)
    root.add_third_party_caveat("https://tp", discharge_key, "loop")
    discharge = PyMacaroon(
        location="https://tp", identifier="loop", key=discharge_key, version=MACAROON_V2
    )
    discharge.add_third_party_caveat("https://tp", discharge_key, "loop")
    bound = root.prepare_for_request(discharge)
    started = time.perf_counter()

    with pytest.raises(InvalidToken, match="more than once"):
        chain.verify_chain(_parse(root), chain.derive_key(ROOT_KEY), [_parse(bound)])

    assert time.perf_counter() - started < 0.5


def test_deep_nesting_is_rejected() -> None:
    """A chain of discharges nested deeper than the limit is refused."""
    keys = [os.urandom(32) for _ in range(12)]
    root = PyMacaroon(location="svc", identifier="root", key=ROOT_KEY, version=MACAROON_V2)
    root.add_third_party_caveat("tp", keys[0], "d0")
    discharges = []
    for i in range(11):
        d = PyMacaroon(location="tp", identifier=f"d{i}", key=keys[i], version=MACAROON_V2)
        d.add_third_party_caveat("tp", keys[i + 1], f"d{i + 1}")
        discharges.append(d)
    discharges.append(
        PyMacaroon(location="tp", identifier="d11", key=keys[11], version=MACAROON_V2)
    )
    bound = [_parse(root.prepare_for_request(d)) for d in discharges]

    with pytest.raises(InvalidToken, match="deeper than 8"):
        chain.verify_chain(_parse(root), chain.derive_key(ROOT_KEY), bound, max_depth=8)
    assert (
        len(chain.verify_chain(_parse(root), chain.derive_key(ROOT_KEY), bound, max_depth=12)) == 0
    )


def test_add_third_party_matches_pymacaroons() -> None:
    """A third-party caveat we add can be discharged and verified by pymacaroons."""
    discharge_key = os.urandom(32)
    ours = chain.add_third_party(
        _ours(b"a = 1"),
        caveat_key=discharge_key,
        caveat_id=b"cav",
        location=b"https://tp",
        nonce=os.urandom(24),
    )
    discharge = PyMacaroon(
        location="https://tp", identifier="cav", key=discharge_key, version=MACAROON_V2
    )
    py_root = _to_py(ours)
    verifier = Verifier()
    verifier.satisfy_exact("a = 1")

    assert verifier.verify(py_root, ROOT_KEY, [py_root.prepare_for_request(discharge)])


@pytest.mark.parametrize("key_len", [0, 1, 23, 31, 32, 33, 63, 64, 65, 200])
@pytest.mark.parametrize("msg_len", [0, 1, 55, 56, 64, 119, 1000])
def test_our_hmac_equals_the_standard_library(key_len: int, msg_len: int) -> None:
    # The chain composes HMAC from two SHA-256 calls (faster than OpenSSL's one-shot HMAC);
    # every key length class (padded, exactly one block, hashed first) must agree with hmac.
    key, msg = os.urandom(key_len), os.urandom(msg_len)
    assert chain._hmac(key, msg) == hmac.digest(key, msg, "sha256")


def test_the_chain_cache_key_is_a_32_byte_digest_that_tells_every_bundle_apart() -> None:
    """The cache keeps 32 bytes a chain, not the strings (memory), and no two different bundles
    — however the same characters are split between token and discharges — share a key."""
    from tokensvc.tokens.verification import chain_key

    bundles = [
        ("ab", ()),
        ("a", ("b",)),
        ("ab", ("",)),
        ("a", ("", "b")),
        ("a", ("b", "")),
        ("b", ("a",)),
        ("", ("ab",)),
        ("ab", ("c",)),
        ("ab", ("c", "d")),
        ("ab", ("d", "c")),
        ("\ud800", ()),  # a lone surrogate (JSON allows its escape): a key, not an error
    ]
    keys = [chain_key(token, discharges) for token, discharges in bundles]
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys)
    assert len(set(keys)) == len(bundles)
    assert chain_key("ab", ("c",)) == chain_key("ab", ["c"])  # the same strings, the same key
