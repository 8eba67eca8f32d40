"""The one decision rule: may a token with these caveats be used in this context, and if not, why.

tokensvc's Verifier and the zero-hop client package (which caches tokensvc's verdicts and decides
locally) both call `decide`, so their answers — allow, 401 or 403, and the reason — are the same
by construction rather than by two implementations kept in step.
"""

from __future__ import annotations

from typing import Final

from caveats.checker import Policy
from caveats.context import Context
from caveats.result import Failure

#: The answer for a token whose id has been revoked (checked before any caveat).
TOKEN_REVOKED: Final = Failure("token revoked", invalid=True)
#: The answer for a context that requires a second factor (`require_mfa`) and a token minted
#: without one; checked after the caveats, so a revoked or expired token is still a 401.
MFA_REQUIRED: Final = Failure(
    "the token was minted without a second factor (MFA required)", invalid=False
)


def decide(policy: Policy, ctx: Context, revoked: bool = False) -> Failure | None:
    """None when the token may be used in `ctx`; otherwise the one Failure that says why.

    `revoked`: the token's id is revoked (→ TOKEN_REVOKED). Otherwise every caveat is checked;
    the failures' reasons are joined by "; " in predicate order, and the result is `invalid`
    (the token is bad everywhere → 401) if any failure is, else a scope denial (→ 403).
    `ctx.generation` must be the subject's current generation as the caller knows it.

    `revoked` is positional (not keyword-only) on purpose: this is the verify hot path, and a
    keyword argument costs measurably more per call.
    """
    if revoked:
        return TOKEN_REVOKED
    if policy.holds(ctx):
        return None
    failures = policy.explain(ctx)
    if not failures:  # holds() and explain() disagree only on a check that returned a foreign
        return None  # Success instance: explain() is the authority, as before this function
    if len(failures) == 1:  # the common denial: that Failure itself, nothing built
        return failures[0]
    return Failure("; ".join(f.reason for f in failures), any(f.invalid for f in failures))
