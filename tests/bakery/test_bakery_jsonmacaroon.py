"""JSON macaroons as pymacaroons and the bakery write and read them."""

from __future__ import annotations

import json
import os
from typing import Any

import pymacaroons
import pytest
from macaroonbakery import bakery, checkers
from pymacaroons.serializers.json_serializer import JsonSerializer

from tokensvc.bakery.jsonmacaroon import (
    from_bakery_json,
    to_bakery_json,
    to_json_v1,
    to_json_v2,
)
from tokensvc.macaroons import chain
from tokensvc.macaroons.macaroon import Caveat, Macaroon, MalformedMacaroon

ROOT = os.urandom(24)


def ours(identifier: bytes, *conditions: str, third_party: bool = False) -> Macaroon:
    """A macaroon signed with ROOT over first-party `conditions` (and one third-party caveat)."""
    macaroon = chain.sign(
        derived_key=chain.derive_key(ROOT),
        identifier=identifier,
        caveats=[Caveat(c.encode()) for c in conditions],
        location=None,
    )
    if third_party:
        macaroon = chain.add_third_party(
            macaroon,
            caveat_key=os.urandom(24),
            caveat_id=b"\x02binary\xff id",
            location=b"https://tp.example",
            nonce=os.urandom(24),
        )
    return macaroon


def pymacaroons_view(data: dict[str, Any]) -> pymacaroons.Macaroon:
    return pymacaroons.Macaroon.deserialize(json.dumps(data), JsonSerializer())


@pytest.mark.parametrize("identifier", [b"text id", b"\x03\x00", b"\xff\xfe binary"])
def test_v2_json_reads_in_pymacaroons_with_the_same_signature(identifier: bytes) -> None:
    """Our v2 JSON (text, NUL-bearing and binary ids) is the macaroon pymacaroons reads, signature and all."""
    macaroon = ours(identifier, "time-before 2030-01-01T00:00:00Z", third_party=True)

    seen = pymacaroons_view(to_json_v2(macaroon))

    assert seen.identifier_bytes == identifier
    assert bytes.fromhex(seen.signature) == macaroon.signature
    assert [c.caveat_id_bytes for c in seen.caveats] == [c.cid for c in macaroon.caveats]
    assert seen.caveats[1].verification_key_id == macaroon.caveats[1].vid
    assert seen.caveats[1].location == "https://tp.example"


def test_v1_json_reads_in_pymacaroons_with_the_same_signature() -> None:
    """Our v1 JSON is the macaroon pymacaroons reads as version 1."""
    macaroon = ours(b"eyJ0ZXh0IjoxfQ==", "declared username alice")

    seen = pymacaroons_view(to_json_v1(macaroon))

    assert seen.version == pymacaroons.MACAROON_V1
    assert seen.identifier == "eyJ0ZXh0IjoxfQ=="
    assert bytes.fromhex(seen.signature) == macaroon.signature
    assert [c.caveat_id for c in seen.caveats] == ["declared username alice"]


def test_v1_json_refuses_binary_ids() -> None:
    """A binary identifier has no v1 JSON form: ValueError, not a corrupted string."""
    with pytest.raises(ValueError, match="text ids"):
        to_json_v1(ours(b"\xff"))


@pytest.mark.parametrize("version", [1, 2, 3])
def test_bakery_reads_the_discharge_shape_of_each_version(version: int) -> None:
    """bakery.Macaroon.from_dict reads `to_bakery_json` for versions 1-3, namespace included in v3."""
    macaroon = ours(b"some-id", "time-before 2030-01-01T00:00:00Z")

    read = bakery.Macaroon.from_dict(to_bakery_json(macaroon, version=version, namespace="std:"))

    assert read.macaroon.identifier_bytes == b"some-id"
    assert bytes.fromhex(read.macaroon.signature) == macaroon.signature
    if version == 3:
        assert read.version == 3 and str(read.namespace) == "std:"


@pytest.mark.parametrize("version", [pymacaroons.MACAROON_V1, pymacaroons.MACAROON_V2])
def test_reads_pymacaroons_json_of_both_versions(version: int) -> None:
    """A pymacaroons-made macaroon in either JSON format parses to the same macaroon we verify."""
    made = pymacaroons.Macaroon(location="loc", identifier="the-id", key=ROOT, version=version)
    made.add_first_party_caveat("declared username bob")
    made.add_third_party_caveat("https://tp.example", os.urandom(24), "tp-id")

    parsed = from_bakery_json(json.loads(made.serialize(JsonSerializer())))

    assert parsed.identifier == b"the-id"
    assert parsed.signature == bytes.fromhex(made.signature)
    assert parsed.location == b"loc"
    assert parsed.caveats[0] == Caveat(b"declared username bob")
    assert parsed.caveats[1].location == b"https://tp.example"
    assert parsed.caveats[1].vid == made.caveats[1].verification_key_id


def test_reads_the_bakery_v3_wrapper() -> None:
    """`{"m", "v": 3, "ns"}` as a bakery discharger answers is read through to the macaroon."""
    made = bakery.Macaroon(root_key=ROOT, id=b"\x03\x00", location="", version=3)
    made.add_caveat(checkers.declared_caveat("username", "carol"))

    parsed = from_bakery_json(made.to_dict())

    assert parsed.identifier == b"\x03\x00"
    assert parsed.signature == bytes.fromhex(made.macaroon.signature)
    assert parsed.caveats == (Caveat(b"declared username carol"),)


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "text",
        {},
        {"i": "x"},
        {"i": "x", "s64": "AAAA"},
        {"i": "x", "i64": "eA", "s64": "A" * 43},
        {"i": "x", "s64": "!!!!"},
        {"i": "x", "s64": "A" * 43, "c": "nope"},
        {"i": "x", "s64": "A" * 43, "c": [1]},
        {"i": "x", "s64": "A" * 43, "c": [{"l": "loc"}]},
        {"i": 5, "s64": "A" * 43},
        {"identifier": "x", "signature": "zz"},
        {"identifier": "x", "signature": "00" * 31},
        {"m": {"i": "x", "s64": "A" * 43}, "v": 4},
        {"m": {"i": "x", "s64": "A" * 43}, "v": 3, "cdata": {"AA": "AA"}},
        {"i": "x", "s64": "A" * 43, "c": [{"i": "c"}] * 129},
    ],
)
def test_malformed_json_macaroons_are_refused(data: Any) -> None:
    """Wrong types, missing or doubled fields, bad base64/hex, short signatures, v4, cdata, too many caveats."""
    with pytest.raises(MalformedMacaroon):
        from_bakery_json(data)
