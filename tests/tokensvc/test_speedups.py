"""The compiled verify path (tokensvc/_speedups.c) against the Python reference it stands in for.

The compiled functions must give exactly what the Python code gives on well-formed input, and
answer None (so that Python names the error) wherever the Python code raises. Hypothesis draws
valid macaroons, mutates their bytes, and draws base64 text with stray characters.
"""

from __future__ import annotations

import base64
import hmac
import importlib.util
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SPEEDUPS_MISSING
from tokensvc.errors import InvalidToken
from tokensvc.macaroons import chain, tokenformat
from tokensvc.macaroons.macaroon import Caveat, Macaroon, MalformedMacaroon, parse_v2, serialize_v2

try:
    from tokensvc import _speedups as _built
except ImportError:
    _built = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def speedups() -> ModuleType:
    # Not a skip: the dev environment and the image build the module; without it, an uncached
    # verify runs the pure-Python path at about half the speed.
    assert _built is not None, SPEEDUPS_MISSING
    return _built


def _python_parse(data: bytes, max_caveats: int = 128) -> Macaroon | None:
    try:
        return parse_v2(data, max_caveats=max_caveats)
    except MalformedMacaroon:
        return None


_first_party = st.binary(max_size=300).map(Caveat)  # (builds() would fill in a location)
_third_party = st.builds(
    Caveat, st.binary(max_size=200), st.binary(max_size=120), st.none() | st.binary(max_size=60)
)
macaroons = st.builds(
    Macaroon,
    st.binary(max_size=300),
    st.lists(_first_party | _third_party, max_size=8).map(tuple),
    st.binary(min_size=32, max_size=32),
    st.none() | st.binary(max_size=100),
)


# ---- parse_v2 --------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(macaroons)
def test_well_formed_macaroons_parse_to_the_same_records(speedups: ModuleType, m: Macaroon) -> None:
    data = serialize_v2(m)
    parsed = speedups.parse_v2(data, 128)
    assert parsed == parse_v2(data, max_caveats=128) == m
    assert type(parsed) is Macaroon
    assert all(type(c) is Caveat for c in parsed.caveats)
    assert type(parsed.caveats) is tuple


@settings(max_examples=600, deadline=None)
@given(macaroons, st.data())
def test_mutated_bytes_are_refused_exactly_where_python_refuses(
    speedups: ModuleType, m: Macaroon, data: st.DataObject
) -> None:
    raw = bytearray(serialize_v2(m))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[at] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        del raw[at:]
    elif kind == "insert":
        raw.insert(at, data.draw(st.integers(0, 255)))
    else:
        del raw[at]
    mutated = bytes(raw)
    assert speedups.parse_v2(mutated, 128) == _python_parse(mutated)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_after_a_version_byte(speedups: ModuleType, tail: bytes) -> None:
    data = b"\x02" + tail
    assert speedups.parse_v2(data, 128) == _python_parse(data)


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 4])
def test_the_caveat_limit_is_the_same(speedups: ModuleType, limit: int) -> None:
    data = serialize_v2(Macaroon(b"id", tuple(Caveat(b"c%d" % i) for i in range(3)), bytes(32)))
    assert speedups.parse_v2(data, limit) == _python_parse(data, limit)
    assert (speedups.parse_v2(data, limit) is None) == (limit < 3)


def test_long_fields_use_multi_byte_lengths(speedups: ModuleType) -> None:
    m = Macaroon(b"i" * 70_000, (Caveat(b"c" * 300), Caveat(b"x", b"v" * 200, b"l")), bytes(32))
    assert speedups.parse_v2(serialize_v2(m), 128) == m


def _memory_grown_by(call: Callable[[bytes, int], object], inputs: tuple[bytes, ...]) -> int:
    """Bytes still allocated after 20,000 calls on each input (after 2,000 to warm up free lists
    and caches): refcounts in C are easy to get wrong, and a leak of one object per call would
    be over 1 MB."""
    tracemalloc.start()
    try:
        for _ in range(2_000):
            for data in inputs:
                call(data, 128)
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            for data in inputs:
                call(data, 128)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_parsing_leaks_nothing(speedups: ModuleType) -> None:
    valid = serialize_v2(
        Macaroon(b"id", (Caveat(b"a"), Caveat(b"b", b"v", b"loc")), bytes(32), b"here")
    )
    assert _memory_grown_by(speedups.parse_v2, (valid, valid[:-5])) < 64 * 1024


# ---- HMAC and the first-party chain ----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_equals_the_standard_library(speedups: ModuleType, key: bytes, msg: bytes) -> None:
    expected = hmac.digest(key, msg, "sha256")
    assert speedups.hmac_sha256(key, msg) == expected == chain._hmac_python(key, msg)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=32, max_size=32), st.binary(max_size=100), st.lists(st.binary(), max_size=6)
)
def test_first_party_chain_equals_the_python_loop(
    speedups: ModuleType, key: bytes, identifier: bytes, cids: list[bytes]
) -> None:
    sig = hmac.digest(key, identifier, "sha256")
    for cid in cids:
        sig = hmac.digest(sig, cid, "sha256")
    caveats = tuple(Caveat(c) for c in cids)
    assert speedups.first_party_chain(key, identifier, caveats) == (sig, cids)


def test_a_third_party_caveat_leaves_the_chain_to_python(speedups: ModuleType) -> None:
    caveats = (Caveat(b"a"), Caveat(b"b", b"vid", b"there"))
    assert speedups.first_party_chain(bytes(32), b"id", caveats) is None
    token = Macaroon(b"id", caveats, bytes(32))
    with pytest.raises(InvalidToken, match="third-party caveat has no discharge"):
        chain.verify_chain(token, bytes(32), [])


def test_bad_argument_types_raise_type_errors(speedups: ModuleType) -> None:
    with pytest.raises(TypeError):
        speedups.hmac_sha256("key", b"msg")
    with pytest.raises(TypeError):
        speedups.first_party_chain(bytes(32), b"id", [Caveat(b"a")])  # a list, not a tuple
    with pytest.raises(TypeError):
        speedups.first_party_chain(bytes(32), b"id", (b"not a caveat",))
    with pytest.raises(TypeError):
        speedups.parse_v2("text", 1)
    with pytest.raises(TypeError):
        speedups.b64decode("text")
    with pytest.raises(TypeError):
        speedups.decode_tsv1("tsv1_text", 1)


# ---- base64 ----------------------------------------------------------------------------------


def _python_b64(text: bytes) -> bytes | None:
    try:
        return _reference_b64decode(text)
    except MalformedMacaroon:
        return None


def _reference_b64decode(text: bytes) -> bytes:
    saved = tokenformat._compiled_b64decode
    tokenformat._compiled_b64decode = None
    try:
        return tokenformat.b64decode_any(text)
    finally:
        tokenformat._compiled_b64decode = saved


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_base64_of_any_bytes_decodes_the_same(
    speedups: ModuleType, raw: bytes, urlsafe: bool, padded: bool
) -> None:
    text = base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)
    if not padded:
        text = text.rstrip(b"=")
    assert speedups.b64decode(text) == raw == _reference_b64decode(text)


@settings(max_examples=600, deadline=None)
@given(st.text(alphabet="ABCxyz019+/-_= .\n\x00é", max_size=40))
def test_stray_characters_are_refused_exactly_where_python_refuses(
    speedups: ModuleType, text: str
) -> None:
    data = text.encode("utf-8")
    assert speedups.b64decode(data) == _python_b64(data)


# ---- the tsv1 token form ---------------------------------------------------------------------


def _python_decode(token: bytes, max_caveats: int = 128) -> Macaroon | None:
    """decode_token with every compiled step off: the reference decode_tsv1 stands in for."""
    saved = (tokenformat._compiled_decode_tsv1, tokenformat._compiled_b64decode)
    tokenformat._compiled_decode_tsv1 = tokenformat._compiled_b64decode = None
    try:
        return tokenformat.decode_token(
            token.decode("latin-1"), max_bytes=1 << 20, max_caveats=max_caveats
        )
    except InvalidToken:
        return None
    finally:
        tokenformat._compiled_decode_tsv1, tokenformat._compiled_b64decode = saved


@settings(max_examples=400, deadline=None)
@given(macaroons)
def test_tokens_decode_to_the_same_records(speedups: ModuleType, m: Macaroon) -> None:
    token = tokenformat.encode_token(m).encode("ascii")
    decoded = speedups.decode_tsv1(token, 128)
    assert decoded == _python_decode(token) == m
    assert type(decoded) is Macaroon


@settings(max_examples=800, deadline=None)
@given(macaroons, st.data())
def test_mutated_tokens_are_refused_exactly_where_python_refuses(
    speedups: ModuleType, m: Macaroon, data: st.DataObject
) -> None:
    """A changed character anywhere (prefix, body, dot, checksum), a cut or an insertion: the
    compiled call accepts exactly the tokens Python accepts. Where the checksum is recomputed
    over the changed body, the base64 and macaroon checks behind it are reached too."""
    token = tokenformat.encode_token(m)
    body = token.rpartition(".")[0]
    raw = bytearray(data.draw(st.sampled_from([token, body])).encode("ascii"))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    char = data.draw(st.sampled_from(b"Aa0-_+/=.~\x00\xff"))
    if kind == "flip":
        raw[at] = char
    elif kind == "truncate":
        del raw[at:]
    elif kind == "insert":
        raw.insert(at, char)
    else:
        del raw[at]
    mutated = bytes(raw)
    if len(raw) < len(token) - 8 or data.draw(st.booleans()):
        # The body alone, changed: give it a correct checksum so that the checksum passes.
        mutated = mutated + b".%08x" % zlib.crc32(mutated)
    assert speedups.decode_tsv1(mutated, 128) == _python_decode(mutated)


@pytest.mark.parametrize(
    "token",
    [
        b"",
        b"tsv1_",
        b"tsv1_.00000000",
        b"tsv1_AAAA.%08x" % zlib.crc32(b"tsv1_AAAA"),  # checksum fine, not a macaroon
        b"TSV1_AAAA.%08x" % zlib.crc32(b"TSV1_AAAA"),
        b"tsv1_AAAA.%08X" % zlib.crc32(b"tsv1_AAAA"),  # upper-case hex is not the checksum
        b"tsv1_AAAA.%07x" % (zlib.crc32(b"tsv1_AAAA") & 0xFFFFFFF),
    ],
)
def test_short_and_odd_tokens_are_left_to_python(speedups: ModuleType, token: bytes) -> None:
    assert speedups.decode_tsv1(token, 128) is None
    assert _python_decode(token) is None


def test_a_v1_payload_is_left_to_python(speedups: ModuleType) -> None:
    """A tsv1 token wrapping a binary v1 macaroon (which we never mint, and decode_token still
    reads) is refused by the compiled call and decoded by Python."""
    from pymacaroons import Macaroon as PMMacaroon

    v1 = PMMacaroon(location="x", identifier="id", key="k")
    v1.add_first_party_caveat("a")
    body = "tsv1_" + base64.urlsafe_b64encode(base64.urlsafe_b64decode(v1.serialize())).decode()
    body = body.rstrip("=")
    token = f"{body}.{zlib.crc32(body.encode()):08x}".encode()
    assert speedups.decode_tsv1(token, 128) is None
    decoded = _python_decode(token)
    assert decoded is not None and decoded.identifier == b"id"


def test_decoding_tokens_leaks_nothing(speedups: ModuleType) -> None:
    m = Macaroon(b"id", (Caveat(b"a"), Caveat(b"b", b"v", b"loc")), bytes(32), b"here")
    valid = tokenformat.encode_token(m).encode("ascii")
    bad_base64 = b"tsv1_A.%08x" % zlib.crc32(b"tsv1_A")
    assert _memory_grown_by(speedups.decode_tsv1, (valid, bad_base64)) < 64 * 1024


# ---- SHA-256 backends and per-module state (multi-phase init) --------------------------------


def _fresh_instance() -> ModuleType:
    """A second, independent instance of the compiled module, as a fresh import makes it."""
    spec = importlib.util.find_spec("tokensvc._speedups")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fast_sha256_binding_is_in_use(speedups: ModuleType) -> None:
    """OpenSSL's provider functions are bound (the EVP fallback costs ~15% more per HMAC)."""
    assert speedups._sha256_backend() == "provider"


@pytest.mark.parametrize("key_len", [0, 1, 31, 32, 33, 64, 65, 200])
@pytest.mark.parametrize("msg_len", [0, 1, 55, 56, 64, 191, 192, 193, 1000])
def test_both_sha256_backends_equal_the_standard_library(
    speedups: ModuleType, key_len: int, msg_len: int
) -> None:
    """The provider binding and the EVP fallback give hmac.digest's answer at every length class
    (one-buffer and two-part messages, hashed keys)."""
    evp = _fresh_instance()
    evp._use_evp()
    key = bytes(range(256))[:key_len]
    msg = b"m" * msg_len

    expected = hmac.digest(key, msg, "sha256")

    assert evp._sha256_backend() == "evp"
    assert speedups.hmac_sha256(key, msg) == expected
    assert evp.hmac_sha256(key, msg) == expected


def test_each_module_instance_keeps_its_own_state(speedups: ModuleType) -> None:
    """A fresh instance has its own classes and digest context: setting them there changes
    nothing in the instance tokensvc uses (what single-phase init with statics could not do)."""
    token = serialize_v2(Macaroon(b"id", (Caveat(b"a"),), bytes(32), b"here"))
    other = _fresh_instance()

    with pytest.raises(RuntimeError, match="set_types was not called"):
        other.parse_v2(token, 128)

    class OtherCaveat(NamedTuple):
        cid: bytes
        vid: bytes | None
        location: bytes | None

    class OtherMacaroon(NamedTuple):
        identifier: bytes
        caveats: tuple[OtherCaveat, ...]
        signature: bytes
        location: bytes | None

    other.set_types(OtherCaveat, OtherMacaroon)
    other._use_evp()
    assert type(other.parse_v2(token, 128)) is OtherMacaroon
    assert type(speedups.parse_v2(token, 128)) is Macaroon
    assert speedups._sha256_backend() == "provider"
    assert speedups.first_party_chain(bytes(32), b"id", (Caveat(b"a"),)) == other.first_party_chain(
        bytes(32), b"id", (OtherCaveat(b"a", None, None),)
    )


_SUBINTERPRETER_SCRIPT = """
import hmac, pathlib
from typing import NamedTuple
from tokensvc import _speedups

class Caveat(NamedTuple):
    cid: bytes
    vid: bytes | None = None
    location: bytes | None = None

class Macaroon(NamedTuple):
    identifier: bytes
    caveats: tuple
    signature: bytes
    location: bytes | None = None

_speedups.set_types(Caveat, Macaroon)
parsed = _speedups.decode_tsv1({token!r}, 128)
ok = (
    type(parsed) is Macaroon
    and parsed.identifier == b"id"
    and [c.cid for c in parsed.caveats] == [b"a", b"b"]
    and _speedups.hmac_sha256(b"k", b"m") == hmac.digest(b"k", b"m", "sha256")
)
pathlib.Path({out!r}).write_text("ok" if ok else "wrong: " + repr(parsed))
"""


def test_a_subinterpreter_imports_its_own_instance(speedups: ModuleType, tmp_path: Path) -> None:
    """In a subinterpreter the module initialises afresh and works; afterwards this interpreter's
    instance still builds this interpreter's classes (a static shared with the subinterpreter
    would now point at its destroyed classes)."""
    try:
        import _xxsubinterpreters as interpreters  # CPython 3.11/3.12's low-level API
    except ImportError:
        pytest.skip("this Python has no _xxsubinterpreters; the fresh-instance test covers state")
    m = Macaroon(b"id", (Caveat(b"a"), Caveat(b"b")), bytes(32), b"here")
    token = tokenformat.encode_token(m).encode("ascii")
    out = tmp_path / "result"

    interpreter = interpreters.create()
    try:
        interpreters.run_string(
            interpreter, _SUBINTERPRETER_SCRIPT.format(token=token, out=str(out))
        )
    finally:
        interpreters.destroy(interpreter)

    assert out.read_text() == "ok"
    parsed = speedups.decode_tsv1(token, 128)
    assert type(parsed) is Macaroon
    assert all(type(c) is Caveat for c in parsed.caveats)
    assert parsed == m
