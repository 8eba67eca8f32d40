"""caveats.decide: the one allow / 401 / 403 rule shared by the Verifier and the client package."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from caveats import TOKEN_REVOKED, Caveat, Context, Policy, decide, encode
from caveats.standard import Audience, Expiry, Generation, Operations, Resources, Subject

NOW = 1763760000.0


def _policy(*caveats: Caveat) -> Policy:
    return Policy([encode(c) for c in caveats])


BASE = (Subject("bob"), Expiry(int(NOW) + 3600), Generation(2))


def test_allow_is_none() -> None:
    """A token whose every caveat holds in the context is allowed: decide returns None."""
    policy = _policy(*BASE, Operations(("read",)))

    result = decide(policy, Context(NOW, "read", generation=2))

    assert result is None


def test_revoked_wins_over_every_caveat() -> None:
    """A revoked token id is refused as invalid (401) even when every caveat holds."""
    policy = _policy(*BASE)

    result = decide(policy, Context(NOW, generation=2), True)

    assert result is TOKEN_REVOKED
    assert result.invalid
    assert result.reason == "token revoked"


def test_scope_denial_is_not_invalid() -> None:
    """An operation outside the token's scope is a 403 (not invalid) with the caveat's reason."""
    policy = _policy(*BASE, Operations(("read",)))

    result = decide(policy, Context(NOW, "write", generation=2))

    assert result is not None
    assert not result.invalid
    assert "write" in result.reason


def test_expired_or_old_generation_is_invalid_and_reasons_are_joined() -> None:
    """Expiry and a raised generation both make the token invalid (401), reasons joined by '; '."""
    policy = _policy(*BASE, Operations(("read",)))

    result = decide(policy, Context(NOW + 7200, "write", generation=3))

    assert result is not None
    assert result.invalid
    assert result.reason.count("; ") == 2


def test_unknown_caveat_denies_as_invalid() -> None:
    """A predicate of an unregistered tag is refused as invalid, whatever the context."""
    policy = Policy([encode(BASE[0]), b"[9999,1]"])

    result = decide(policy, Context(NOW))

    assert result is not None
    assert result.invalid
    assert "unknown caveat" in result.reason


@given(
    op=st.sampled_from(["read", "write", "delete", None]),
    resource=st.sampled_from(["/docs/a", "/other", None]),
    audience=st.sampled_from(["files", "mail", None]),
    generation=st.integers(0, 4),
    dt=st.sampled_from([-10.0, 0.0, 3599.0, 3601.0]),
)
def test_decide_agrees_with_explain(
    op: str | None, resource: str | None, audience: str | None, generation: int, dt: float
) -> None:
    """decide allows exactly when explain finds nothing, and is invalid exactly when a failure is."""
    policy = _policy(
        *BASE, Operations(("read", "write")), Resources(("/docs/*",)), Audience(("files",))
    )
    ctx = Context(NOW + dt, op, resource, audience, None, generation)

    result = decide(policy, ctx)

    failures = policy.explain(ctx)
    assert (result is None) == (not failures)
    if result is not None:
        assert result.invalid == any(f.invalid for f in failures)
        assert result.reason == "; ".join(f.reason for f in failures)
