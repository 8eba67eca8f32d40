"""check_predicates: every predicate of a token against one request, never raising."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from caveats import (
    CaveatError,
    Context,
    Failure,
    Outcome,
    Policy,
    check_predicates,
    checker,
    decode,
    parse_condition,
    subject_of,
)

NOW = 1763760000.0
CTX = Context(
    now=NOW,
    operation="read",
    resource="/docs/1",
    audience="files",
    client_ip="10.0.0.5",
    generation=0,
)
GOOD = [
    b"[0,1763763600]",
    b"[1,1763750000]",
    b'[2,"bob"]',
    b'[3,["read","write"]]',
    b'[4,["/docs/*"]]',
    b'[5,["files"]]',
    b'[6,["10.0.0.0/8"]]',
    b"[7,0]",
    b"time-before 2026-11-21T22:00:00Z",
    b"declared username bob",
    b"allow read write",
    b"deny delete",
]


def reasons(outcome: Outcome) -> list[str]:
    """The failure reasons of an outcome, in order."""
    return [f.reason for f in outcome.failures]


def test_contract_example_from_architecture_doc() -> None:
    """The example in docs/architecture.md behaves as documented."""

    outcome = check_predicates([b"[0,1763763600]", b"time-before 2026-11-21T22:00:00Z"], CTX)

    assert outcome.failures == []
    assert outcome.subject is None
    assert outcome.expires_at == 1763763600.0
    assert outcome.declared == {}


def test_a_token_whose_caveats_all_hold_passes() -> None:
    """Every kind of caveat at once, all satisfied: no failures, and what they carry collected."""

    outcome = check_predicates(GOOD, CTX)

    assert outcome.failures == []
    assert outcome.ok
    assert not outcome.invalid
    assert outcome.subject == "bob"
    assert outcome.declared == {"username": "bob"}


def test_no_predicates_is_an_empty_pass() -> None:
    """A token without caveats has nothing to fail (the service decides if that is enough)."""

    outcome = check_predicates([], CTX)

    assert outcome == Outcome([], None, None, {})


def test_expires_at_is_the_earliest_expiry_or_time_before() -> None:
    """The token expires at the earliest of its Expiry and time-before caveats."""

    outcome = check_predicates(
        [
            b"[0,1763763600]",
            b"time-before 2025-11-21T21:30:00.5Z",
            b"[0,1763770000]",
            b"time-before 2026-11-21T22:00:00Z",
        ],
        CTX,
    )

    assert outcome.expires_at == 1763760600.5  # 2025-11-21T21:30:00.5Z


def test_expired_token_is_invalid() -> None:
    """A passed minted Expiry makes the outcome invalid (401)."""

    outcome = check_predicates([b"[0,1763700000]"], CTX)

    assert reasons(outcome) == ["token expired"]
    assert outcome.invalid


def test_passed_time_before_is_a_denial_not_invalidity() -> None:
    """A passed hand-added time-before denies the request (403); the token is not invalid."""

    outcome = check_predicates([b"time-before 2025-11-21T21:00:00Z"], CTX)

    assert len(outcome.failures) == 1
    assert not outcome.invalid


def test_context_denials_are_not_invalid() -> None:
    """Caveats that this request does not meet give non-invalid failures (403), in order."""

    outcome = check_predicates(
        [b'[3,["write"]]', b'[4,["/admin/*"]]', b'[5,["mail"]]', b'[6,["192.168.0.0/16"]]'], CTX
    )

    assert len(outcome.failures) == 4
    assert not outcome.invalid
    assert "operation" in outcome.failures[0].reason
    assert "resource" in outcome.failures[1].reason


def test_revoked_generation_is_invalid() -> None:
    """A token minted before the subject's revoke-all is invalid."""

    outcome = check_predicates([b'[2,"bob"]', b"[7,0]"], Context(now=NOW, generation=1))

    assert reasons(outcome) == ["token revoked (subject generation)"]
    assert outcome.invalid


def test_same_subject_twice_is_fine() -> None:
    """Repeating the subject (token and discharge agree) is not a conflict."""

    outcome = check_predicates([b'[2,"bob"]', b'[2,"bob"]'], CTX)

    assert outcome.failures == []
    assert outcome.subject == "bob"


def test_conflicting_subjects_are_invalid() -> None:
    """A token naming two subjects is invalid and names nobody, even if one is repeated later."""

    outcome = check_predicates([b'[2,"bob"]', b'[2,"eve"]', b'[2,"bob"]', b'[2,"eve"]'], CTX)

    assert reasons(outcome) == ["conflicting subject caveats"]
    assert outcome.invalid
    assert outcome.subject is None


def test_conflicting_declared_values_are_invalid() -> None:
    """One key declared with two values is invalid and dropped for good; other keys survive."""

    outcome = check_predicates(
        [
            b"declared username bob",
            b"declared role admin",
            b"declared username eve",
            b"declared username bob",
        ],
        CTX,
    )

    assert reasons(outcome) == ["conflicting declared values for 'username'"]
    assert outcome.invalid
    assert outcome.declared == {"role": "admin"}


def test_same_declared_value_twice_is_fine() -> None:
    """Declaring the same key and value twice is agreement, not conflict."""

    outcome = check_predicates([b"declared username bob", b"declared username bob"], CTX)

    assert outcome.failures == []
    assert outcome.declared == {"username": "bob"}


def test_error_condition_is_invalid() -> None:
    """A bakery error condition fails the token everywhere, with its message."""

    outcome = check_predicates([b"error cannot find user"], CTX)

    assert reasons(outcome) == ["error caveat: 'cannot find user'"]
    assert outcome.invalid


@pytest.mark.parametrize(
    ("predicate", "prefix"),
    [
        (b"[999,1]", "unknown caveat"),
        (b"is-admin true", "unknown caveat"),
        (b"time-before", "malformed caveat"),
        (b"time-before tomorrow", "malformed caveat"),
        (b"[0]", "malformed caveat"),
        (b'[0,"soon"]', "malformed caveat"),
        (b"[0,1", "malformed caveat"),
        (b"[]", "malformed caveat"),
        (b"", "malformed caveat"),
        (b" allow read", "malformed caveat"),
        (b"\xff\xfe\x00", "malformed caveat"),
        (b"allow \xc3(", "malformed caveat"),
    ],
)
def test_unknown_and_malformed_predicates_are_invalid(predicate: bytes, prefix: str) -> None:
    """Anything but a well-formed known caveat denies the token everywhere, with a reason."""

    outcome = check_predicates([predicate], CTX)

    assert len(outcome.failures) == 1
    assert outcome.failures[0].invalid
    assert outcome.failures[0].reason.startswith(prefix)


def test_bad_predicates_do_not_stop_the_others_from_being_checked() -> None:
    """One bad predicate adds a failure; the rest are still checked and collected."""

    outcome = check_predicates([b"junk", b'[2,"bob"]', b'[3,["write"]]'], CTX)

    assert len(outcome.failures) == 2
    assert outcome.subject == "bob"


@pytest.mark.parametrize("size", [200, 5_000, 1_000_000])
def test_reasons_echo_at_most_about_80_characters(size: int) -> None:
    """However long a bad predicate is, its reason echoes a bounded, escaped prefix of it."""

    outcome = check_predicates([b"x\n" * (size // 2), b"[" + b"9" * size + b"]"], CTX)

    assert len(outcome.failures) == 2
    for failure in outcome.failures:
        assert failure.reason.count("x") + failure.reason.count("9") <= 80
        assert len(failure.reason) < 200
        assert "\n" not in failure.reason


def test_str_and_bytearray_predicates_are_read_as_utf8_bytes() -> None:
    """Predicates as pymacaroons hands them to callbacks (str) or as buffers work like bytes."""
    predicates: list[object] = ['[2,"józef"]', bytearray(b"declared a b"), memoryview(b"[7,0]")]

    outcome = check_predicates(predicates, CTX)  # type: ignore[arg-type]

    assert outcome.failures == []
    assert outcome.subject == "józef"
    assert outcome.declared == {"a": "b"}


@pytest.mark.parametrize("predicate", [None, 12, ["[0,1]"], "\ud800"])
def test_non_bytes_predicates_are_invalid(predicate: object) -> None:
    """A predicate that is not bytes (or encodable text) is an invalid failure, not an exception."""

    outcome = check_predicates([predicate], CTX)  # type: ignore[list-item]

    assert len(outcome.failures) == 1
    assert outcome.invalid


def test_a_check_that_crashes_denies() -> None:
    """If a check raises (here: a context field of the wrong type), the request is denied."""

    bad_ctx = Context(now=NOW, resource=12)  # type: ignore[arg-type]

    outcome = check_predicates([b'[4,["/docs/*"]]'], bad_ctx)

    assert reasons(outcome) == ["caveat check failed unexpectedly"]


def test_decoding_is_cached_per_predicate() -> None:
    """Checking a predicate again reuses its decoded caveat instead of decoding it again."""
    predicate = b'[5,["cache-probe-audience"]]'
    check_predicates([predicate], CTX)
    first = checker._decoded[predicate]

    fresh = bytes(bytearray(predicate))  # equal bytes, another object (as each token brings)
    check_predicates([fresh, fresh], CTX)
    policy = Policy([fresh])

    assert checker._decoded[predicate] is first
    assert policy._steps == (first,)


def test_malformed_predicates_are_cached_too() -> None:
    """A bad predicate sent again costs a lookup, not another parse."""
    predicate = b"[999,1,2,3]"
    check_predicates([predicate], CTX)
    failure = checker._decoded[predicate]

    outcome = check_predicates([predicate], CTX)

    assert outcome.failures == [failure]
    assert checker._decoded[predicate] is failure


def test_oversized_predicates_are_not_cached() -> None:
    """Predicates above MAX_CACHED_PREDICATE bytes are decoded each time, bounding cache memory."""
    predicate = b'[5,["' + b"a" * checker.MAX_CACHED_PREDICATE + b'"]]'

    outcome = check_predicates([predicate], Context(now=NOW, audience="a" * 1024))
    Policy([predicate])

    assert outcome.failures == []
    assert predicate not in checker._decoded


def test_cache_is_bounded() -> None:
    """The decode cache never holds more than CACHE_SIZE predicates: when full it starts again,
    and what is decoded after that is cached."""
    checker.clear_decode_cache()
    for i in range(checker.CACHE_SIZE):
        Policy([b'[2,"bounded-%d"]' % i])
    assert len(checker._decoded) == checker.CACHE_SIZE == 16384

    Policy([b'[2,"one-more"]'])

    assert len(checker._decoded) == 1
    assert Policy([b'[2,"one-more"]']).subject == "one-more"


def test_cached_results_do_not_leak_between_contexts() -> None:
    """Only decoding is cached: the same predicate passes one request and fails another."""
    predicate = b'[3,["read"]]'

    allowed = check_predicates([predicate], CTX)
    denied = check_predicates([predicate], Context(now=NOW, operation="write"))

    assert allowed.failures == []
    assert len(denied.failures) == 1


@pytest.mark.parametrize(
    ("predicates", "subject"),
    [
        ([b"[0,1]", b'[2,"bob"]'], "bob"),
        ([b'[2,"bob"]', b'[2,"bob"]'], "bob"),
        ([b'[2,"bob"]', b'[2,"eve"]'], None),
        ([b"[0,1]", b"junk"], None),
        ([], None),
    ],
)
def test_subject_of_reads_the_subject_before_checking(
    predicates: list[bytes], subject: str | None
) -> None:
    """subject_of gives the one subject a token names, or None if it names none or several."""

    found = subject_of(predicates)

    assert found == subject


def _parses(predicate: bytes) -> bool:
    """Whether `predicate` is a well-formed known caveat, by the public parsers."""
    try:
        if predicate.startswith(b"["):
            decode(predicate)
        else:
            parse_condition(predicate.decode("utf-8"))
    except (CaveatError, UnicodeDecodeError):
        return False
    return True


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_and_fail_unless_well_formed(predicate: bytes) -> None:
    """Any bytes at all give an Outcome; if they are not a known caveat, an invalid failure."""

    outcome = check_predicates([predicate], CTX)

    assert all(isinstance(f, Failure) for f in outcome.failures)
    assert outcome.invalid or _parses(predicate)


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)
)
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=10)


@given(st.lists(_json, max_size=5))
def test_arbitrary_json_arrays_never_raise(values: list[object]) -> None:
    """JSON arrays of any shape, typed-caveat look-alikes included, never make the checker raise."""
    try:
        predicate = orjson.dumps(values)
    except orjson.JSONEncodeError:
        assume(False)  # integers beyond 64 bits

    outcome = check_predicates([predicate], CTX)

    assert all(isinstance(f, Failure) for f in outcome.failures)
    assert not outcome.failures or outcome.invalid or _parses(predicate)


@given(st.lists(st.one_of(st.sampled_from(GOOD), st.binary(max_size=40)), max_size=12))
def test_mixed_predicates_never_raise(predicates: list[bytes]) -> None:
    """Good and bad predicates mixed in any order give an Outcome with a failure per bad one."""

    outcome = check_predicates(predicates, CTX)

    bad = [p for p in predicates if not _parses(p)]
    rejected = [f for f in outcome.failures if f.reason.startswith(("unknown", "malformed"))]
    assert len(rejected) == len(bad)
