"""Policy: a token's predicates decoded once; `holds` must answer exactly as check_predicates."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from caveats import Context, Policy, check_predicates

NOW = 1763760000.0
# Predicates of every kind: typed caveats that hold or fail depending on the context, bakery
# conditions, conflicting subjects and declared values, and malformed or unknown ones.
PREDICATES = [
    b"[0,1763763600]",  # expiry: holds before
    b"[0,1763756400]",  # expiry: past at NOW
    b"[1,1763750000]",  # not before
    b"[1,1763760000]",  # not before: exactly NOW (Policy folds time caveats into bounds)
    b'[2,"bob"]',
    b'[2,"eve"]',
    b'[3,["read","write"]]',
    b'[3,["delete"]]',
    b'[4,["/docs/*"]]',
    b'[5,["files"]]',
    b'[6,["10.0.0.0/8"]]',
    b"[7,0]",
    b"[7,3]",
    b"time-before 2026-11-21T22:00:00Z",
    b"time-before 2025-01-01T00:00:00Z",
    b"declared username bob",
    b"declared username eve",
    b"allow read write",
    b"deny delete",
    b"error always",
    b"[99,1]",
    b"[3,",
    b"no-such-condition x",
    b"\xff\xfe",
]

contexts = st.builds(
    Context,
    now=st.sampled_from(
        [NOW, NOW - 10_000, NOW + 10_000, 1763763600.0, 1763763599.5, 1763750000.0, NOW - 0.5]
    ),
    operation=st.sampled_from([None, "read", "write", "delete"]),
    resource=st.sampled_from([None, "/docs/1", "/etc/passwd"]),
    audience=st.sampled_from([None, "files", "mail"]),
    client_ip=st.sampled_from([None, "10.0.0.5", "192.0.2.1", "not an ip"]),
    generation=st.sampled_from([0, 1, 3, 4]),
)


@given(st.lists(st.sampled_from(PREDICATES), max_size=8), contexts)
def test_holds_exactly_when_check_predicates_finds_no_failure(
    predicates: list[bytes], ctx: Context
) -> None:
    policy = Policy(predicates)
    outcome = check_predicates(predicates, ctx)
    assert policy.holds(ctx) is (not outcome.failures)
    # What does not depend on the context is settled once, as check_predicates collects it.
    assert policy.subject == outcome.subject
    assert policy.expires_at == outcome.expires_at
    assert policy.declared == outcome.declared


def test_a_policy_is_checked_afresh_against_each_context() -> None:
    policy = Policy([b'[2,"bob"]', b'[3,["read"]]', b"[0,1763763600]"])
    assert policy.holds(Context(now=NOW, operation="read"))
    assert not policy.holds(Context(now=NOW, operation="write"))
    assert not policy.holds(Context(now=1763763600.0, operation="read"))  # expired
    assert policy.subject == "bob"
    assert policy.expires_at == 1763763600.0


def test_a_malformed_predicate_never_holds() -> None:
    policy = Policy([b'[2,"bob"]', b"[99,1]"])
    assert not policy.holds(Context(now=NOW))


def test_policies_without_declared_values_cannot_be_poisoned_through_a_copy() -> None:
    """Policies with no declared values share one empty dict; what callers get is a copy, so a
    caller writing into its copy cannot give another token a declared value."""
    outcome = check_predicates([b'[2,"mallory"]'], Context(now=NOW))
    outcome.declared["username"] = "admin"

    policy = Policy([b'[2,"alice"]'])

    assert policy.declared == {}
    assert check_predicates([b'[2,"alice"]'], Context(now=NOW)).declared == {}
