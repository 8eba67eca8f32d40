"""The introspection service: RFC 7662 answers about a token, for authenticated callers.

Introspection answers "is this token live?" — genuine signature, root key still there, not
expired, not revoked — not "does it allow some request?". The token is therefore verified with an
empty context: an `InvalidToken` makes it inactive, while a `CaveatDenied` (a caveat that needs an
operation, resource, audience or client IP the empty context does not name) still leaves it active;
its restrictions are reported as `scope` and `aud` instead. A token with third-party caveats needs
its discharges, which RFC 7662 has no field for, so it is reported inactive (use `/v1/verify`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from caveats import (
    Allow,
    Audience,
    CaveatError,
    Context,
    Deny,
    Operations,
    check_predicates,
    parse_predicate,
)
from tokensvc.errors import BadRequest, CaveatDenied, InvalidToken, PayloadTooLarge
from tokensvc.macaroons.identifier import decode_identifier
from tokensvc.services.authorization import Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.principals import Principal
from tokensvc.tokens.verification import Verifier

#: The operation a caller's token must allow to introspect other tokens.
INTROSPECT_OPERATION: Final = "tokens:introspect"

_INACTIVE: Final[dict[str, Any]] = {"active": False}


@service
class IntrospectionService:
    def __init__(
        self,
        *,
        authorizer: Authorizer,
        verifier: Verifier,
        issuer: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._authz = authorizer
        self._verifier = verifier
        self._issuer = issuer
        self._clock = clock

    async def introspect(self, who: Principal, token: str) -> dict[str, Any]:
        """The RFC 7662 answer for `token`: its claims when live, else only `{"active": false}`.

        Raises:
            InvalidToken, CaveatDenied: the caller's own token is bad or does not allow
                `tokens:introspect` on this API.
            Unavailable: the key store is down and the token's key is not cached.
        """
        await self._authz.holder(who, INTROSPECT_OPERATION)
        return await self._describe(token)

    async def _describe(self, token: str) -> dict[str, Any]:
        """The RFC 7662 answer for `token`: its claims when live, else only `{"active": false}`."""
        verifier = self._verifier
        try:
            await verifier.verify(token)
        except CaveatDenied:
            pass  # live, but restricted to contexts an empty one does not name; see the module doc
        except (InvalidToken, BadRequest, PayloadTooLarge):
            return dict(_INACTIVE)

        # The chain verified, so these caveats are the genuine ones; read the claims from them.
        macaroon = verifier.parse(token)
        predicates = [c.cid for c in macaroon.caveats if c.vid is None]
        now = self._clock().timestamp()
        outcome = check_predicates(predicates, Context(now=now))
        # A passed bakery `time-before` denies rather than invalidates, so expiry is re-checked here.
        if outcome.subject is None or (
            outcome.expires_at is not None and outcome.expires_at <= now
        ):
            return dict(_INACTIVE)
        body: dict[str, Any] = {
            "active": True,
            "sub": outcome.subject,
            "jti": decode_identifier(macaroon.identifier).token_id_hex,
            "token_type": "macaroon",
            "iss": self._issuer,
        }
        if outcome.expires_at is not None:
            body["exp"] = int(outcome.expires_at)
        operations = _operations(predicates)
        if operations is not None:
            body["scope"] = " ".join(operations)
        audiences = _audiences(predicates)
        if audiences is not None:
            body["aud"] = audiences[0] if len(audiences) == 1 else audiences
        return body


def _operations(predicates: list[bytes]) -> list[str] | None:
    """What every operation restriction allows (typed Operations, bakery allow and deny), or None
    if none lists what is allowed. A token limited by deny conditions alone has no expressible
    scope: none is reported, but /v1/verify still refuses the denied operations. An empty
    `deny` denies nothing, as the bakery and /v1/verify read it (caveats.bakery.Deny)."""
    allowed: list[str] | None = None
    denied: set[str] = set()
    for item in _decoded(predicates):
        if isinstance(item, Operations | Allow):
            values = item.operations
            allowed = (
                list(dict.fromkeys(values))
                if allowed is None
                else [v for v in allowed if v in values]
            )
        elif isinstance(item, Deny):
            denied.update(item.operations)
    if allowed is None:
        return None
    return [v for v in allowed if v not in denied]


def _audiences(predicates: list[bytes]) -> list[str] | None:
    """What every Audience caveat allows (attenuation only narrows), or None if none restricts."""
    allowed: list[str] | None = None
    for item in _decoded(predicates):
        if isinstance(item, Audience):
            values = item.audiences
            allowed = (
                list(dict.fromkeys(values))
                if allowed is None
                else [v for v in allowed if v in values]
            )
    return allowed


def _decoded(predicates: list[bytes]) -> list[object]:
    items: list[object] = []
    for predicate in predicates:
        try:
            items.append(parse_predicate(predicate))
        except CaveatError:
            continue
    return items
