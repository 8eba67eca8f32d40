"""Third-party caveat ids, against the real macaroonbakery codec in both directions."""

from __future__ import annotations

import base64
import json
import os

import nacl.public
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from macaroonbakery import bakery, checkers

from keystore.discharger_key import DischargerKey
from tokensvc.bakery import codec
from tokensvc.bakery.errors import CaveatNotForUs, MalformedCaveat

VERSIONS = [bakery.VERSION_1, bakery.VERSION_2, bakery.VERSION_3]


def bakery_key(key: DischargerKey) -> bakery.PrivateKey:
    """Our key pair as macaroonbakery holds one."""
    return bakery.PrivateKey(nacl.public.PrivateKey(key.private.reveal()))


def ours(key: bakery.PrivateKey) -> DischargerKey:
    """A macaroonbakery key pair as ours."""
    return DischargerKey.from_private(key.serialize(raw=True))


def bakery_caveat(
    version: int,
    *,
    to: DischargerKey,
    condition: str = "user-is alice",
    root_key: bytes = b"r" * 24,
    ns: checkers.Namespace | None = None,
) -> bytes:
    """A caveat id (v1, v2) or payload (v3) as a bakery first party encodes it for `to`."""
    info = bakery.ThirdPartyInfo(version=version, public_key=bakery_key(to).public_key)
    namespace = ns if ns is not None else checkers.Namespace({"std": ""})
    return bytes(bakery.encode_caveat(condition, root_key, info, bakery.generate_key(), namespace))


@pytest.mark.parametrize("version", VERSIONS)
def test_decodes_what_the_bakery_encodes(version: int) -> None:
    """A caveat the bakery encodes for our key decodes to its condition, root key and version."""
    key = DischargerKey.generate()
    caveat = bakery_caveat(version, to=key, condition="has-role dev ünïcode", root_key=b"k" * 24)

    info = codec.decode_caveat(caveat, key=key)

    assert info.condition == "has-role dev ünïcode"
    assert info.root_key == b"k" * 24
    assert info.version == version
    assert info.namespace == "std:"
    assert info.std_prefix == ""


def test_version_3_namespace_comes_back_canonical_with_its_std_prefix() -> None:
    """A v3 caveat's namespace is read (sorted `uri:prefix` text) and the std prefix found."""
    key = DischargerKey.generate()
    ns = checkers.Namespace({"testns": "t", "std": "s"})

    info = codec.decode_caveat(bakery_caveat(3, to=key, ns=ns), key=key)

    assert info.namespace == "std:s testns:t"
    assert info.std_prefix == "s"


@pytest.mark.parametrize("version", VERSIONS)
def test_the_bakery_decodes_what_we_encode(version: int) -> None:
    """A caveat we encode for a bakery discharger's key decodes there to the same condition and key."""
    discharger = bakery.generate_key()
    me = DischargerKey.generate()

    caveat = codec.encode_caveat(
        "is-ok please",
        b"q" * 24,
        version=version,
        third_party_public_key=discharger.public_key.serialize(raw=True),
        key=me,
        namespace="std:",
    )
    info = bakery.decode_caveat(discharger, caveat)

    assert info.condition == "is-ok please"
    assert info.root_key == b"q" * 24
    assert info.version == version
    assert info.first_party_public_key.serialize(raw=True) == me.public


def test_version_1_is_base64_json_naming_both_keys() -> None:
    """A v1 caveat id is standard base64 of JSON with both public keys, as Go's bakery writes it."""
    me, them = DischargerKey.generate(), DischargerKey.generate()

    caveat = codec.encode_caveat(
        "c", b"k" * 24, version=1, third_party_public_key=them.public, key=me
    )

    wrapper = json.loads(base64.b64decode(caveat, validate=True))
    assert set(wrapper) == {"ThirdPartyPublicKey", "FirstPartyPublicKey", "Nonce", "Id"}
    assert base64.b64decode(wrapper["ThirdPartyPublicKey"]) == them.public
    assert base64.b64decode(wrapper["FirstPartyPublicKey"]) == me.public


@pytest.mark.parametrize("version", VERSIONS)
def test_caveat_for_another_key_is_refused(version: int) -> None:
    """A caveat encrypted to someone else's key is CaveatNotForUs, not a crash or a success."""
    key, other = DischargerKey.generate(), DischargerKey.generate()

    with pytest.raises(CaveatNotForUs):
        codec.decode_caveat(bakery_caveat(version, to=other), key=key)


def test_caveat_for_a_key_sharing_our_prefix_is_refused_by_the_box() -> None:
    """A v2 caveat whose 4-byte key prefix matches ours but is sealed to another key does not open."""
    key, other = DischargerKey.generate(), DischargerKey.generate()
    caveat = bytearray(bakery_caveat(2, to=other))
    caveat[1:5] = key.public[:4]

    with pytest.raises(CaveatNotForUs, match="encrypted to another key, or was altered"):
        codec.decode_caveat(bytes(caveat), key=key)


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("where", ["first party key", "nonce", "ciphertext", "last byte"])
def test_any_altered_byte_is_refused(version: int, where: str) -> None:
    """Flipping a bit in the first party's key, the nonce or the sealed part makes the box refuse."""
    key = DischargerKey.generate()
    caveat = bytearray(bakery_caveat(version, to=key))
    index = {"first party key": 10, "nonce": 40, "ciphertext": 70, "last byte": -1}[where]
    caveat[index] ^= 0x01

    with pytest.raises(CaveatNotForUs):
        codec.decode_caveat(bytes(caveat), key=key)


def test_altered_version_1_id_is_refused() -> None:
    """A v1 id whose sealed `Id` was changed does not open."""
    key = DischargerKey.generate()
    wrapper = json.loads(base64.b64decode(bakery_caveat(1, to=key)))
    sealed = bytearray(base64.b64decode(wrapper["Id"]))
    sealed[5] ^= 0x80
    wrapper["Id"] = base64.b64encode(bytes(sealed)).decode()

    with pytest.raises(CaveatNotForUs):
        codec.decode_caveat(base64.b64encode(json.dumps(wrapper).encode()), key=key)


@pytest.mark.parametrize(
    ("caveat", "message"),
    [
        (b"", "empty"),
        (b"\x04" + os.urandom(100), "unknown third-party caveat version"),
        (b"\x00" + os.urandom(100), "unknown third-party caveat version"),
        (b"\x02" + os.urandom(20), "too short"),
        (b"\x03\x00", "caveat64"),
        (b"e" * (codec.MAX_CAVEAT_BYTES + 1), "longer than"),
        (b"eyJub3QganNvbg", "not JSON"),
        (b"e!!!", "not base64"),
        (base64.b64encode(b'{"Nonce": "AAAA"}'), "ThirdPartyPublicKey missing"),
        (base64.b64encode(b'{"ThirdPartyPublicKey": "AAAA"}'), "not 32 bytes"),
    ],
    # Named, not derived from the random bytes: every pytest-xdist worker must collect the same ids.
    ids=[
        "empty",
        "v4",
        "v0",
        "v2 too short",
        "bare v3 id",
        "oversize",
        "not JSON",
        "not base64",
        "no public key",
        "short public key",
    ],
)
def test_malformed_caveats_are_refused_with_a_reason(caveat: bytes, message: str) -> None:
    """Empty, unknown versions, truncations, a bare v3 id, oversize, bad base64 or JSON: MalformedCaveat."""
    with pytest.raises(MalformedCaveat, match=message):
        codec.decode_caveat(caveat, key=DischargerKey.generate())


def test_malformed_secret_parts_are_refused() -> None:
    """A well-sealed v2/v3 box whose inside is malformed (version, lengths, UTF-8) is MalformedCaveat."""
    key, sender = DischargerKey.generate(), DischargerKey.generate()

    def sealed(version: int, secret: bytes) -> bytes:
        from nacl.bindings import crypto_box

        nonce = os.urandom(24)
        box = crypto_box(secret, nonce, key.public, sender.private.reveal())
        return bytes([version]) + key.public[:4] + sender.public + nonce + box

    cases = {
        "inner version": sealed(2, b"\x03\x18" + b"k" * 24 + b"c"),
        "root key length": sealed(2, b"\x02\x7f" + b"k" * 24 + b"c"),
        "empty root key": sealed(2, b"\x02\x00c"),
        "length prefix": sealed(2, b"\x02\xff\xff\xff\xff\xff\xff"),
        "condition is not UTF-8": sealed(2, b"\x02\x02kk\xff"),
        "empty condition": sealed(2, b"\x02\x02kk"),
        "namespace length": sealed(3, b"\x03\x02kk\x7fstd:"),
        "namespace entry": sealed(3, b"\x03\x02kk\x03stdcond"),
    }

    for name, caveat in cases.items():
        with pytest.raises(MalformedCaveat):
            codec.decode_caveat(caveat, key=key)
        assert name  # each case raised


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_ever_raise_malformed_caveat(data: bytes) -> None:
    """Whatever the bytes, decoding raises MalformedCaveat (or its CaveatNotForUs) and nothing else."""
    with pytest.raises(MalformedCaveat):
        codec.decode_caveat(data, key=KEY)


KEY = DischargerKey.generate()


@pytest.mark.parametrize("text", ["AAECAw==", "AAECAw", "AAEC-_8", "AAEC+/8=", "AAEC+/8"])
def test_base64_in_every_variant_decodes(text: str) -> None:
    """Standard and URL-safe alphabets, padded or not, all decode."""
    assert codec.b64decode_any(text) in (b"\x00\x01\x02\x03", b"\x00\x01\x02\xfb\xff")


@pytest.mark.parametrize("text", ["A", "AA=A", "A A", "é", "AAE\n"])
def test_bad_base64_is_malformed(text: str) -> None:
    """Impossible lengths, stray padding, spaces and non-ASCII are refused."""
    with pytest.raises(MalformedCaveat):
        codec.b64decode_any(text)
