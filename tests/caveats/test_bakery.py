"""The macaroon-bakery text conditions, parsed as the Go and Python bakeries write them."""

from __future__ import annotations

from datetime import UTC, datetime

import macaroonbakery.checkers as bakery_checkers
import pyrfc3339  # type: ignore[import-untyped]
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from caveats import (
    SUCCESS,
    Allow,
    CaveatError,
    Context,
    Declared,
    Deny,
    ErrorCondition,
    Failure,
    TimeBefore,
    UnknownCaveat,
    format_rfc3339,
    parse_condition,
    parse_rfc3339,
    time_before,
)

T0 = 1795298400  # 2026-11-21T22:00:00Z


def ctx(**fields: object) -> Context:
    """A context at T0 with the given fields."""
    return Context(now=fields.pop("now", float(T0)), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "unix"),
    [
        ("2026-11-21T22:00:00Z", T0),
        ("2026-11-21T22:00:00.123456Z", T0 + 0.123456),
        ("2026-11-21T22:00:00.000000Z", T0),
        ("2026-11-21T22:00:00.5Z", T0 + 0.5),
        ("2026-11-21T22:00:00.123456789Z", T0 + 0.123456789),
        ("2026-11-21T22:00:00.1234567891234Z", T0 + 0.123456789),
        ("2026-11-21T23:00:00+01:00", T0),
        ("2026-11-21T16:30:00-05:30", T0),
        ("2026-11-22T00:00:00.25+02:00", T0 + 0.25),
        ("2026-11-21T22:00:00+00:00", T0),
        ("2026-11-21T22:00:00-00:00", T0),
        ("2026-11-21t22:00:00z", T0),
        ("1970-01-01T00:00:00Z", 0),
        ("2024-02-29T00:00:00Z", 1709164800),
    ],
)
def test_parse_rfc3339_reads_bakery_timestamps(text: str, unix: float) -> None:
    """UTC, offsets and fractional seconds of any length read as the instant they name."""

    parsed = parse_rfc3339(text)

    assert parsed == pytest.approx(unix, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-11-21",
        "2026-11-21T22:00:00",
        "2026-11-21 22:00:00Z",
        "2026-11-21T22:00Z",
        "2026-11-21T22:00:00.Z",
        "20261121T220000Z",
        "2026-11-21T22:00:00+0100",
        "2026-11-21T22:00:00+01",
        "2026-11-21T24:00:00Z",
        "2026-11-21T22:60:00Z",
        "2026-11-21T23:59:60Z",
        "2026-02-30T22:00:00Z",
        "2026-13-01T22:00:00Z",
        "0000-01-01T00:00:00Z",
        "2026-11-21T22:00:00+24:00",
        "2026-11-21T22:00:00+01:60",
        " 2026-11-21T22:00:00Z",
        "2026-11-21T22:00:00Z ",
        "2026-11-21T22:00:00ZZ",
        "２０２６-11-21T22:00:00Z",
    ],
)
def test_parse_rfc3339_rejects_non_rfc3339(text: str) -> None:
    """Only RFC 3339 date-times parse; near misses raise CaveatError instead of guessing."""

    with pytest.raises(CaveatError):
        parse_rfc3339(text)


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)))
def test_python_bakery_time_before_parses_to_the_same_instant(moment: datetime) -> None:
    """Whatever time-before the Python bakery writes, we read the instant it meant."""

    condition = bakery_checkers.time_before_caveat(moment).condition
    expected = moment.replace(tzinfo=UTC).timestamp()

    parsed = parse_condition(condition)

    assert isinstance(parsed, TimeBefore)
    assert parsed.expires_at == pytest.approx(expected, abs=1e-6)


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC]) | st.timezones(),
    )
)
def test_parse_rfc3339_agrees_with_pyrfc3339(moment: datetime) -> None:
    """Our parser and the bakery's pyrfc3339 agree on every RFC 3339 text with an offset."""

    offset = moment.utcoffset()
    assume(offset is not None and offset.seconds % 60 == 0)  # RFC 3339 offsets are whole minutes
    text = moment.isoformat()

    ours = parse_rfc3339(text)

    assert ours == pytest.approx(pyrfc3339.parse(text, utc=True).timestamp(), abs=1e-6)


@given(st.integers(0, 253402300799), st.integers(0, 999_999))
def test_format_then_parse_roundtrips_to_the_microsecond(seconds: int, micros: int) -> None:
    """format_rfc3339 writes what parse_rfc3339 reads back, to the microsecond."""

    unix = seconds + micros / 1e6

    text = format_rfc3339(unix)

    assert text.endswith("Z")
    assert parse_rfc3339(text) == pytest.approx(unix, abs=1e-6)


def test_format_rfc3339_writes_go_bakery_style() -> None:
    """Like Go's RFC3339Nano in UTC: no fraction when whole, trailing zeros trimmed."""

    texts = [format_rfc3339(T0), format_rfc3339(T0 + 0.5), format_rfc3339(T0 + 0.123456)]

    assert texts == [
        "2026-11-21T22:00:00Z",
        "2026-11-21T22:00:00.5Z",
        "2026-11-21T22:00:00.123456Z",
    ]


def test_time_before_builds_a_parsable_predicate() -> None:
    """time_before() gives the predicate a hand attenuation would add."""

    predicate = time_before(T0)

    assert predicate == b"time-before 2026-11-21T22:00:00Z"
    assert parse_condition(predicate.decode()) == TimeBefore(float(T0))


def test_time_before_holds_before_its_instant() -> None:
    """time-before holds while now is earlier than its time."""

    result = TimeBefore(T0 + 0.5).check(ctx(now=T0 + 0.499))

    assert result is SUCCESS


@pytest.mark.parametrize("now", [T0, T0 + 0.001, T0 + 86400])
def test_time_before_denies_from_its_instant_on(now: float) -> None:
    """A passed time-before is an attenuation that denies this request (403), not invalidity."""

    result = TimeBefore(float(T0)).check(ctx(now=now))

    assert isinstance(result, Failure)
    assert result.invalid is False


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("declared username bob", "username", "bob"),
        ("declared name Bob  Smith ", "name", "Bob  Smith "),
        ("declared empty ", "empty", ""),
    ],
)
def test_declared_splits_key_from_value_at_the_first_space(text: str, key: str, value: str) -> None:
    """The key ends at the first space; the value is everything after it, spaces included."""

    parsed = parse_condition(text)

    assert parsed == Declared(key, value)


@pytest.mark.parametrize("text", ["declared", "declared username", "declared  bob"])
def test_declared_without_key_and_value_is_malformed(text: str) -> None:
    """A declared condition needs a non-empty key and a value."""

    with pytest.raises(CaveatError):
        parse_condition(text)


def test_python_bakery_declared_caveat_parses() -> None:
    """What bakery's declared_caveat writes reads back as the same key and value."""

    condition = bakery_checkers.declared_caveat("username", "bob smith").condition

    parsed = parse_condition(condition)

    assert parsed == Declared("username", "bob smith")


def test_declared_always_holds_by_itself() -> None:
    """A declared condition only carries data; conflicts are judged across the token."""

    result = Declared("username", "bob").check(ctx())

    assert result is SUCCESS


def test_allow_and_deny_split_operations_on_whitespace() -> None:
    """Operations are separated by runs of whitespace, as bakery splits them."""

    allow = parse_condition("allow read  write")
    deny = parse_condition("deny delete")

    assert allow == Allow(("read", "write"))
    assert deny == Deny(("delete",))


@pytest.mark.parametrize("separator", ["\x1c", "\x1d", "\x1e", "\x1f"])
def test_the_information_separators_are_not_white_space_as_in_go(separator: str) -> None:
    """Red team (helper-33): str.split() cut `allow a\x1cb` into a and b, where Go's
    strings.Fields keeps one operation `a\x1cb`: this verifier allowed b, a Go one did not."""

    allow = parse_condition(f"allow a{separator}b")

    assert allow == Allow((f"a{separator}b",))
    assert allow.check(ctx(operation="b")) is not SUCCESS


def test_every_go_space_separates_operations() -> None:
    """What unicode.IsSpace calls a space separates: tab, LF, VT, FF, CR, NEL, NBSP, U+3000."""

    allow = parse_condition("allow a\tb\nc\x0bd\x0ce\rf\x85g\xa0h\u3000i")

    assert allow == Allow(tuple("abcdefghi"))


def test_python_bakery_allow_and_deny_parse() -> None:
    """What bakery's allow_caveat and deny_caveat write reads back as the same operations."""

    allow = bakery_checkers.allow_caveat(["read", "write"]).condition
    deny = bakery_checkers.deny_caveat(["delete"]).condition

    parsed = (parse_condition(allow), parse_condition(deny))

    assert parsed == (Allow(("read", "write")), Deny(("delete",)))


@pytest.mark.parametrize(("operation", "holds"), [("read", True), ("write", False), (None, False)])
def test_allow_needs_a_listed_operation(operation: str | None, holds: bool) -> None:
    """allow passes only a request naming one of its operations; a miss is a 403 denial."""

    result = Allow(("read",)).check(ctx(operation=operation))

    assert (result is SUCCESS) is holds
    assert not isinstance(result, Failure) or not result.invalid


def test_allow_with_no_operations_allows_nothing() -> None:
    """`allow` with an empty list denies every operation, as bakery's does."""

    result = parse_condition("allow").check(ctx(operation="read"))

    assert isinstance(result, Failure)


@pytest.mark.parametrize(("operation", "holds"), [("read", True), ("delete", False), (None, False)])
def test_deny_refuses_listed_and_unknown_operations(operation: str | None, holds: bool) -> None:
    """deny refuses its operations, and a request naming none (it might be one of them)."""

    result = Deny(("delete",)).check(ctx(operation=operation))

    assert (result is SUCCESS) is holds


def test_deny_with_no_operations_denies_nothing() -> None:
    """`deny` with an empty list restricts nothing."""

    result = parse_condition("deny").check(ctx())

    assert result is SUCCESS


def test_error_condition_never_holds() -> None:
    """An error condition fails everywhere (invalid) and says its message."""

    result = parse_condition("error no such user").check(ctx())

    assert result == Failure("error caveat: 'no such user'", invalid=True)
    assert parse_condition("error no such user") == ErrorCondition("no such user")


def test_unknown_condition_is_unknown_caveat() -> None:
    """A condition outside bakery's standard set is UnknownCaveat, not silently ignored."""

    with pytest.raises(UnknownCaveat):
        parse_condition("is-admin true")


@pytest.mark.parametrize(
    "text",
    ["", " time-before 2026-11-21T22:00:00Z", "time-before", "time-before  2026-11-21T22:00:00Z"],
)
def test_malformed_conditions_raise(text: str) -> None:
    """Empty conditions, a leading space or a missing or padded argument are malformed."""

    with pytest.raises(CaveatError):
        parse_condition(text)


def test_namespaced_condition_is_unknown() -> None:
    """Only the standard namespace (empty prefix) is understood; a prefixed name is unknown."""

    with pytest.raises(UnknownCaveat):
        parse_condition("std:time-before 2026-11-21T22:00:00Z")
