"""Fuzzing the parsers that read attacker bytes: only typed errors, never a crash, never a hang."""

from __future__ import annotations

import base64
import gc
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keystore.discharger_key import DischargerKey
from tokensvc.bakery import codec
from tokensvc.errors import TokensvcError
from tokensvc.macaroons.identifier import decode_identifier, new_identifier
from tokensvc.macaroons.macaroon import Caveat, Macaroon, parse_binary, serialize_v2
from tokensvc.macaroons.tokenformat import decode_token, encode_token

# Each test runs on the compiled path (tokensvc._speedups) and on the pure-Python one.
# Each parse is bounded in CPU time: run alone, not beside other tests.
pytestmark = [pytest.mark.usefixtures("verify_path"), pytest.mark.serial]

TIME_BOUND = 0.05  # seconds per call
FUZZ = settings(
    max_examples=400,
    deadline=None,  # the bound is checked per call below, without hypothesis' own warm-up noise
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def only_typed_errors(call: Callable[[], Any]) -> None:
    """Run `call`: it returns or raises a TokensvcError, within the time bound.

    The bound is on this thread's CPU time with the cyclic garbage collector paused: a parser
    that blows up on some input burns CPU, while a busy machine that leaves this thread waiting
    for a core, or a full collection of the test process's heap landing in one call (~250 ms
    seen on loaded CI runs), says nothing about the parser.
    """
    gc.disable()
    started = time.thread_time()
    try:
        call()
    except TokensvcError:
        pass
    finally:
        elapsed = time.thread_time() - started
        gc.enable()
    assert elapsed < TIME_BOUND, f"took {elapsed * 1000:.1f} ms"


def _valid_macaroon() -> Macaroon:
    return Macaroon(
        identifier=new_identifier(key_id="k" + secrets.token_hex(4), admin=True).encode(),
        caveats=(
            Caveat(cid=b"time-before 2030-01-01T00:00:00Z"),
            Caveat(cid=b"\x01\x02\x03 typed", vid=b"v" * 72, location=b"https://tp.example"),
            Caveat(cid=b"declared user alice"),
        ),
        signature=secrets.token_bytes(32),
        location=b"tokensvc",
    )


VALID = _valid_macaroon()
VALID_V2 = serialize_v2(VALID)
VALID_TOKEN = encode_token(VALID)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with a few structure-aware edits: flips, cuts, splices, repeated slices."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "delete", "varint"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat" and data:
            end = draw(st.integers(pos, len(data)))
            data[pos:pos] = data[pos:end] * draw(st.integers(1, 8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "varint":
            # An absurd length prefix: the classic way to ask a parser for gigabytes.
            data[pos:pos] = b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f"
    return bytes(data)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _as_token(data: bytes) -> str:
    """Our tsv1_ form of arbitrary bytes, with a correct checksum, so parsing goes deep."""
    from tokensvc.macaroons.tokenformat import PREFIX, _checksum

    body = PREFIX + _b64url(data)
    return body + "." + _checksum(body)


def test_valid_token_round_trips() -> None:
    """The seeds of the mutations are themselves valid, so mutations start from deep inside."""
    assert decode_token(VALID_TOKEN, max_bytes=16384, max_caveats=128) == VALID
    assert parse_binary(VALID_V2, max_caveats=128) == VALID
    assert decode_identifier(VALID.identifier).admin


@FUZZ
@given(st.one_of(st.text(max_size=300), st.text(alphabet="tsv1_.-+/=AZaz09", max_size=300)))
def test_decode_token_text(text: str) -> None:
    """Any text: decode_token answers or raises a typed error."""
    only_typed_errors(lambda: decode_token(text, max_bytes=16384, max_caveats=128))


@FUZZ
@given(mutated(VALID_V2))
def test_decode_token_mutated_v2(data: bytes) -> None:
    """Mutations of a valid token, re-wrapped with a correct checksum and as plain base64."""
    only_typed_errors(lambda: decode_token(_as_token(data), max_bytes=16384, max_caveats=128))
    plain = base64.b64encode(data).decode()
    only_typed_errors(lambda: decode_token(plain, max_bytes=16384, max_caveats=128))


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(VALID_V2)))
def test_parse_binary(data: bytes) -> None:
    """Raw bytes (v1 and v2 both): a Macaroon or MalformedMacaroon."""
    only_typed_errors(lambda: parse_binary(data, max_caveats=16))


@FUZZ
@given(st.one_of(st.binary(max_size=200), mutated(VALID.identifier)))
def test_decode_identifier(data: bytes) -> None:
    """Identifier bytes: a TokenIdentifier or InvalidToken."""
    only_typed_errors(lambda: decode_identifier(data))


KEY = DischargerKey.generate()
FIRST_PARTY = DischargerKey.generate()
SEEDS = {
    version: codec.encode_caveat(
        "is-authenticated-user",
        secrets.token_bytes(24),
        version=version,
        third_party_public_key=KEY.public,
        key=FIRST_PARTY,
        namespace="std: tokensvc:ts" if version == 3 else codec.LEGACY_NAMESPACE,
    )
    for version in (1, 2, 3)
}


def test_caveat_seeds_decode() -> None:
    """The mutation seeds (one caveat per bakery version) decode to their condition."""
    for seed in SEEDS.values():
        assert codec.decode_caveat(seed, key=KEY).condition == "is-authenticated-user"


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=400),
        *(mutated(seed) for seed in SEEDS.values()),
        # Version 1 is base64 of JSON: mutate the JSON inside and re-encode, to get past base64.
        mutated(base64.b64decode(SEEDS[1])).map(base64.b64encode),
    )
)
def test_decode_caveat(data: bytes) -> None:
    """Third-party caveat ids and payloads: CaveatInfo, MalformedCaveat or CaveatNotForUs."""
    only_typed_errors(lambda: codec.decode_caveat(data, key=KEY))


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_bakery_b64_and_namespace(value: str | bytes) -> None:
    """The discharge form's base64 fields and the caveat namespace text: typed errors only."""
    only_typed_errors(lambda: codec.b64decode_any(value, what="id64"))
    if isinstance(value, str):
        only_typed_errors(lambda: codec.parse_namespace(value))


@FUZZ
@given(st.binary(max_size=600))
def test_discharge_form(raw: bytes) -> None:
    """The discharge endpoint's form parser (raw ids may hold any byte): typed errors only."""
    from tokensvc.web.handlers.bakery import parse_form

    only_typed_errors(lambda: parse_form(raw))
