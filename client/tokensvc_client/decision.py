"""The per-request decision over a verdict's caveats: tokensvc's own rule, shared by construction.

Temporary home until `caveats` exposes the server's pure decision function; the semantics are
tokensvc.tokens.verification.Verifier._decide: every caveat must hold; any failure that makes the
token bad everywhere (expired, unknown or malformed caveat, older generation) → 401, else 403;
reasons joined by "; ".
"""

from __future__ import annotations

from caveats import Context, Policy
from tokensvc_client.errors import CaveatDenied, InvalidToken


def decide(
    policy: Policy,
    now: float,
    operation: str | None,
    resource: str | None,
    audience: str | None,
    client_ip: str | None,
    generation: int,
) -> None:
    """Return if `policy` holds in this context; raise InvalidToken (401) or CaveatDenied (403)."""
    context = Context(now, operation, resource, audience, client_ip, generation)
    if policy.holds(context):
        return
    failures = policy.explain(context)
    if failures:
        reasons = "; ".join(f.reason for f in failures)
        if any(f.invalid for f in failures):
            raise InvalidToken(reasons)
        raise CaveatDenied(reasons)
