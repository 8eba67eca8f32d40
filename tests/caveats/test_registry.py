"""The caveat registry: tags, the compact wire form, strict decoding and registry misuse."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caveats import (
    SUCCESS,
    Audience,
    Caveat,
    CaveatError,
    ClientCIDR,
    Context,
    Expiry,
    Generation,
    NotBefore,
    Operations,
    Resources,
    Result,
    Subject,
    UnknownCaveat,
    caveat,
    check_fields,
    decode,
    encode,
    registered,
    registry,
)

# Golden vectors: these bytes are in tokens already issued. If one of these tests fails, the wire
# format changed and old tokens no longer mean what they meant; fix the code, not the vector.
GOLDEN: list[tuple[Caveat, bytes]] = [
    (Expiry(1763763600), b"[0,1763763600]"),
    (NotBefore(1763760000), b"[1,1763760000]"),
    (Subject("bob"), b'[2,"bob"]'),
    (Operations(("read", "write")), b'[3,["read","write"]]'),
    (Resources(("/docs/*", "/healthz")), b'[4,["/docs/*","/healthz"]]'),
    (Audience(("files",)), b'[5,["files"]]'),
    (ClientCIDR(("10.0.0.0/8", "2001:db8::/32")), b'[6,["10.0.0.0/8","2001:db8::/32"]]'),
    (Generation(3), b"[7,3]"),
]

# Every field value the wire allows, per type; the strings include non-ASCII text.
_ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
_texts = st.lists(_text, min_size=1, max_size=5).map(tuple)
_cidrs = st.lists(
    st.one_of(
        st.ip_addresses(v=4).flatmap(
            lambda a: st.integers(0, 32).map(lambda n: f"{ipaddress.ip_network((a, n), False)}")
        ),
        st.ip_addresses(v=6).flatmap(
            lambda a: st.integers(0, 128).map(lambda n: f"{ipaddress.ip_network((a, n), False)}")
        ),
    ),
    min_size=1,
    max_size=4,
).map(tuple)

STRATEGIES: dict[type, st.SearchStrategy[Caveat]] = {
    Expiry: st.builds(Expiry, _ints),
    NotBefore: st.builds(NotBefore, _ints),
    Subject: st.builds(Subject, _text),
    Operations: st.builds(Operations, _texts),
    Resources: st.builds(Resources, _texts),
    Audience: st.builds(Audience, _texts),
    ClientCIDR: st.builds(ClientCIDR, _cidrs),
    Generation: st.builds(Generation, _ints),
}


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in the test vanish afterwards (monkeypatch restores the tables)."""
    monkeypatch.setattr(registry, "_BY_TAG", dict(registry._BY_TAG))
    monkeypatch.setattr(registry, "_BY_CLASS", dict(registry._BY_CLASS))


@pytest.mark.parametrize(("instance", "wire"), GOLDEN, ids=lambda v: type(v).__name__)
def test_encode_matches_golden_bytes(instance: Caveat, wire: bytes) -> None:
    """Each core caveat encodes to exactly the bytes tokens already carry."""

    encoded = encode(instance)

    assert encoded == wire


@pytest.mark.parametrize(("instance", "wire"), GOLDEN, ids=lambda v: type(v).__name__)
def test_decode_matches_golden_bytes(instance: Caveat, wire: bytes) -> None:
    """The golden bytes decode to the caveat they were made from."""

    decoded = decode(wire)

    assert decoded == instance
    assert type(decoded) is type(instance)


def test_golden_vectors_cover_every_registered_tag() -> None:
    """A newly registered caveat needs a golden vector before it ships."""

    golden_tags = {decode(wire).__class__ for _, wire in GOLDEN}

    assert set(registered().values()) == golden_tags
    assert sorted(registered()) == list(range(8))


def test_strategies_cover_every_registered_caveat() -> None:
    """The roundtrip property below runs over every registered caveat type."""

    covered = set(STRATEGIES)

    assert covered == set(registered().values())


@given(st.one_of(*STRATEGIES.values()))
def test_encode_decode_roundtrip(instance: Caveat) -> None:
    """Decoding the encoding of any valid caveat gives an equal caveat and stable bytes."""

    wire = encode(instance)
    decoded = decode(wire)

    assert decoded == instance
    assert encode(decoded) == wire


@given(st.one_of(*STRATEGIES.values()))
def test_decoded_caveats_are_hashable(instance: Caveat) -> None:
    """Decoded caveats are immutable values: hashable and equal to themselves."""

    decoded = decode(encode(instance))

    assert hash(decoded) == hash(instance)


def test_non_ascii_strings_are_raw_utf8() -> None:
    """Strings go on the wire as UTF-8, not as JSON escapes."""

    wire = encode(Subject("józef"))

    assert wire == '[2,"józef"]'.encode()


def test_decode_tolerates_json_whitespace() -> None:
    """A hand-written caveat with spaces decodes to the same caveat as the compact form."""

    decoded = decode(b'[3, ["read", "write"]]')

    assert decoded == Operations(("read", "write"))


def test_unknown_tag_raises_unknown_caveat() -> None:
    """A well-formed caveat with an unregistered tag is an UnknownCaveat, a CaveatError."""

    with pytest.raises(UnknownCaveat) as excinfo:
        decode(b"[999,1]")

    assert isinstance(excinfo.value, CaveatError)


@pytest.mark.parametrize(
    "predicate",
    [
        b"",
        b"0",
        b"{}",
        b"[]",
        b"[",
        b"[0,1]x",
        b'["0",1]',
        b"[true,1]",
        b"[0.0,1]",
        b"[-1,1]",
        b"[null,1]",
        b"[0]",
        b"[0,1,2]",
        b'[0,"1"]',
        b"[0,true]",
        b"[0,1.0]",
        b"[0,1e3]",
        b"[0,null]",
        b"[0,9223372036854775808]",
        b"[0,-9223372036854775809]",
        b"[0,18446744073709551616]",
        b"[2,1]",
        b'[2,""]',
        b'[2,["bob"]]',
        b"[3,[]]",
        b'[3,"read"]',
        b"[3,[1]]",
        b'[3,[""]]',
        b'[3,[["read"]]]',
        b'[3,{"read":1}]',
        b'[6,["not a network"]]',
        b'[6,["10.0.0.0/33"]]',
        b"[7]",
        b" [7,1]",
        b"[7,NaN]",
        b'[2,"\\ud800"]',
        b'[2,"\xff"]',
    ],
)
def test_decode_rejects_malformed(predicate: bytes) -> None:
    """Anything but an exact, well-typed `[tag, *fields]` raises CaveatError."""

    with pytest.raises(CaveatError):
        decode(predicate)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Operations(()),
        lambda: Operations(["read"]),  # type: ignore[arg-type]
        lambda: Operations(("read", "")),
        lambda: Operations(("read", 1)),  # type: ignore[arg-type]
        lambda: Resources(()),
        lambda: Audience(()),
        lambda: ClientCIDR(()),
        lambda: ClientCIDR(("10.0.0.0/33",)),
        lambda: Expiry(True),
        lambda: Expiry("1763763600"),  # type: ignore[arg-type]
        lambda: Expiry(1763763600.5),  # type: ignore[arg-type]
        lambda: Expiry(2**63),
        lambda: Subject(""),
        lambda: Subject("\ud800"),
        lambda: Generation(None),  # type: ignore[arg-type]
    ],
)
def test_construction_rejects_malformed(build: object) -> None:
    """A caveat that could not be encoded cannot be constructed either."""

    with pytest.raises(CaveatError):
        build()  # type: ignore[operator]


def test_encode_rejects_unregistered_class() -> None:
    """Only registered caveats have a wire form."""

    @dataclass(frozen=True, slots=True)
    class Stray:
        def check(self, ctx: Context) -> Result:
            return SUCCESS

    with pytest.raises(CaveatError):
        encode(Stray())


@pytest.mark.usefixtures("scratch_registry")
def test_duplicate_tag_is_refused() -> None:
    """Registering a second caveat under a taken tag fails loudly."""

    with pytest.raises(CaveatError, match="already registered"):

        @caveat(tag=0)
        @dataclass(frozen=True, slots=True)
        class Impostor:
            at: int

            def check(self, ctx: Context) -> Result:
                return SUCCESS


@pytest.mark.usefixtures("scratch_registry")
def test_same_class_twice_is_refused() -> None:
    """One class cannot hold two tags."""

    @caveat(tag=1000)
    @dataclass(frozen=True, slots=True)
    class Once:
        at: int

        def check(self, ctx: Context) -> Result:
            return SUCCESS

    with pytest.raises(CaveatError, match="already registered"):
        caveat(tag=1001)(Once)


@pytest.mark.parametrize("tag", [-1, True, 1.0, "1"])
def test_bad_tags_are_refused(tag: object) -> None:
    """Tags are non-negative ints."""

    with pytest.raises(CaveatError):
        caveat(tag=tag)  # type: ignore[arg-type]


@pytest.mark.usefixtures("scratch_registry")
def test_non_frozen_dataclass_is_refused() -> None:
    """A mutable caveat could change meaning after it is decoded and cached."""

    @dataclass(slots=True)
    class Mutable:
        at: int

        def check(self, ctx: Context) -> Result:
            return SUCCESS

    with pytest.raises(CaveatError, match="frozen"):
        caveat(tag=1000)(Mutable)


@pytest.mark.usefixtures("scratch_registry")
def test_unslotted_dataclass_is_refused() -> None:
    """Caveats must be slotted, which also catches @caveat placed under @dataclass."""

    @dataclass(frozen=True)
    class Unslotted:
        at: int

        def check(self, ctx: Context) -> Result:
            return SUCCESS

    with pytest.raises(CaveatError, match="slotted"):
        caveat(tag=1000)(Unslotted)


@pytest.mark.usefixtures("scratch_registry")
def test_plain_class_is_refused() -> None:
    """Only dataclasses have the field list the wire form is made of."""

    class Plain:
        def check(self, ctx: Context) -> Result:
            return SUCCESS

    with pytest.raises(CaveatError, match="dataclass"):
        caveat(tag=1000)(Plain)


@pytest.mark.usefixtures("scratch_registry")
def test_class_without_check_is_refused() -> None:
    """A caveat must be able to check itself."""

    @dataclass(frozen=True, slots=True)
    class Inert:
        at: int

    with pytest.raises(CaveatError, match="check"):
        caveat(tag=1000)(Inert)  # type: ignore[type-var]


@pytest.mark.usefixtures("scratch_registry")
def test_unsupported_field_type_is_refused() -> None:
    """Field types are limited to what the wire form validates: int, str, tuple[str, ...]."""

    @dataclass(frozen=True, slots=True)
    class Floaty:
        at: float

        def check(self, ctx: Context) -> Result:
            return SUCCESS

    with pytest.raises(CaveatError, match="unsupported field type"):
        caveat(tag=1000)(Floaty)


@pytest.mark.usefixtures("scratch_registry")
def test_failed_registration_leaves_tag_free() -> None:
    """A refused class does not take its tag."""

    @dataclass(frozen=True)
    class Unslotted:
        at: int

        def check(self, ctx: Context) -> Result:
            return SUCCESS

    with pytest.raises(CaveatError):
        caveat(tag=1000)(Unslotted)

    assert 1000 not in registered()


@pytest.fixture
def versioned(scratch_registry: None) -> type[Caveat]:
    """A caveat at tag 1000 that gained a defaulted field in a later version."""

    @caveat(tag=1000)
    @dataclass(frozen=True, slots=True)
    class Quota:
        limit: int
        unit: str = "requests"

        def __post_init__(self) -> None:
            check_fields(self)

        def check(self, ctx: Context) -> Result:
            return SUCCESS

    return Quota


def test_shorter_field_list_fills_defaults(versioned: type[Caveat]) -> None:
    """A caveat minted before a field was appended decodes with that field's default."""

    decoded = decode(b"[1000,5]")

    assert decoded == versioned(5, "requests")  # type: ignore[call-arg]


def test_trailing_defaults_are_not_encoded(versioned: type[Caveat]) -> None:
    """Appending a field does not change the bytes of caveats that leave it at its default."""

    plain = encode(versioned(5))  # type: ignore[call-arg]
    explicit = encode(versioned(5, "bytes"))  # type: ignore[call-arg]

    assert plain == b"[1000,5]"
    assert explicit == b'[1000,5,"bytes"]'


def test_longer_field_list_than_known_is_refused(versioned: type[Caveat]) -> None:
    """A field this code does not know could be a restriction it would ignore, so it is refused."""

    with pytest.raises(CaveatError, match="takes 1 to 2 fields"):
        decode(b'[1000,5,"bytes",1]')


def test_check_fields_refuses_unregistered_instances() -> None:
    """check_fields only knows registered caveats."""

    with pytest.raises(CaveatError):
        check_fields(object())


@pytest.mark.usefixtures("scratch_registry")
def test_default_that_is_not_a_valid_wire_value_is_refused() -> None:
    """Old tokens decode to a field's default, so the default must itself be valid."""

    @dataclass(frozen=True, slots=True)
    class Scoped:
        at: int
        scopes: tuple[str, ...] = ()

        def check(self, ctx: Context) -> Result:
            return SUCCESS

    with pytest.raises(CaveatError, match="default"):
        caveat(tag=1000)(Scoped)
