"""Delegation never amplifies: what a token minted with another token's authority may be.

The rule (docs/security.md, "Delegation"), applied by the token service to every mint made with a
token (a local operator's break-glass mint has no parent and no bounds):

1. **Carried.** Every restricting first-party caveat of the minting token — operations, resources,
   audience, client networks, not-before, and the bakery `allow` / `deny` conditions — is copied
   verbatim into the child. A macaroon's caveats all hold at once, so the child can never do what
   the parent could not, whatever the request asks for; the subset checks below only turn a
   request that would mint a token narrower than asked into a clear refusal.
2. **Time.** The child expires no later than the parent (the earliest of its `Expiry` caveats and
   `time-before` conditions), unless the parent's caveats allow the operation `tokens:outlive`
   here — an unrestricted admin token does; a narrowed one does only if it lists it — and its
   holder did not narrow its lifetime (the token service decides this, `may_outlive`, from the
   expiry the parent was minted with). A TTL asked for beyond that is refused; the default TTL is
   shortened to fit.
3. **Admin.** An admin-capable child only for the parent's own subject: its admin power is the
   parent's caveats (carried) applied to the same identity, so it can do no admin operation the
   parent could not, and no admin can be impersonated in the audit trail.
4. **Refused.** A parent whose caveats cannot be carried as a restriction — `declared` attributes
   (claims about the parent's subject, which would be attached to another), `error` conditions,
   anything unknown — cannot mint. (A parent with third-party caveats never gets here: the API
   authenticates tokens without discharges, so such a token does not verify.)

Pure: no I/O, no clock (the time comes in).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Final

from caveats import (
    Allow,
    Audience,
    CaveatError,
    ClientCIDR,
    Deny,
    Expiry,
    Generation,
    NotBefore,
    Operations,
    Resources,
    Subject,
    TimeBefore,
    parse_predicate,
)
from tokensvc.errors import Forbidden
from tokensvc.operations.durations import format_duration
from tokensvc.tokens.minting import MintRequest
from tokensvc.tokens.verification import Verified

#: The operation a minting token's caveats must allow for a child to outlive it.
OUTLIVE_OPERATION: Final = "tokens:outlive"

#: Caveats that state a token's own identity, generation and lifetime: what every minted token
#: has, never carried into a child (time is bounded separately) and restricting nothing else.
_OWN: Final = (Subject, Generation, Expiry, TimeBefore)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def delegate(
    parent: Verified,
    request: MintRequest,
    *,
    may_outlive: bool,
    now: datetime,
    default_ttl: timedelta,
) -> MintRequest:
    """`request` bounded by what `parent` may do: its caveats carried, its expiry capped.

    Raises:
        Forbidden: the request asks for more than the parent may delegate, or the parent carries
            a caveat that cannot be delegated.
    """
    carried: list[bytes] = []
    for raw, item in _parsed(parent):
        if item is None:
            raise Forbidden("the minting token carries a caveat that cannot be delegated")
        if isinstance(item, _OWN):
            continue  # the child's own identity and generation; time is bounded below
        if isinstance(item, Operations | Allow | Deny):
            _check_operations(item, request.operations)
        elif isinstance(item, Resources):
            _check_resources(item, request.resources)
        elif isinstance(item, Audience):
            _check_subset("audiences", request.audiences, item.audiences)
        elif isinstance(item, ClientCIDR):
            _check_networks(item, request.cidrs)
        elif not isinstance(item, NotBefore):
            raise Forbidden(
                f"the minting token carries a {type(item).__name__} caveat, which cannot be"
                " delegated"
            )
        carried.append(raw)

    if request.admin and request.subject != parent.subject:
        raise Forbidden("an admin-capable token can only be minted for the minting token's subject")

    ttl = request.ttl
    if not may_outlive and parent.expires_at is not None:
        remaining = timedelta(seconds=int(parent.expires_at - now.timestamp()))
        if ttl is None:
            ttl = min(default_ttl, remaining)
        elif ttl > remaining:
            raise Forbidden(
                f"ttl must be at most {format_duration(remaining)}:"
                " a token cannot outlive the token that mints it"
                f" (unless that token allows {OUTLIVE_OPERATION})"
            )
        not_after = datetime.fromtimestamp(parent.expires_at, UTC)
    else:
        not_after = None
    return dataclasses.replace(
        request,
        ttl=ttl,
        carried=request.carried + tuple(carried),
        not_after=not_after,
        # "A second factor was used" is true of the parent's subject only, and only if it was:
        # the child claims it when the parent does and names the same subject, never otherwise.
        mfa=parent.mfa and request.subject == parent.subject,
    )


def restricting_caveats(token: Verified) -> list[bytes]:
    """The caveats of `token` that restrict what it may do (those `delegate` carries, and any
    it cannot parse); empty for a token as its subject's own login or mint made it."""
    return [raw for raw, item in _parsed(token) if not isinstance(item, _OWN)]


def minted_generation(token: Verified) -> int | None:
    """The subject generation `token` was minted at (the lowest, should a holder have added
    another Generation caveat: the token is revoked once the subject's passes any of them);
    None for a token without one."""
    found: int | None = None
    for _, item in _parsed(token):
        if isinstance(item, Generation) and (found is None or item.generation < found):
            found = item.generation
    return found


def _parsed(token: Verified) -> Iterator[tuple[bytes, object | None]]:
    """Each first-party caveat of `token`, raw and parsed (None: it does not parse)."""
    for predicate in token.policy.predicates:
        raw = predicate if isinstance(predicate, bytes) else predicate.encode()
        try:
            yield raw, parse_predicate(raw)
        except CaveatError:
            yield raw, None


def _check_subset(kind: str, asked: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    beyond = [value for value in asked if value not in allowed]
    if beyond:
        raise Forbidden(
            f"{kind} must be within the minting token's {list(allowed)!r};"
            f" not allowed: {beyond[:5]!r}"
        )


def _check_operations(item: Operations | Allow | Deny, asked: tuple[str, ...]) -> None:
    if isinstance(item, Deny):
        # An empty `deny` denies nothing (bakery's reading, and /v1/verify's).
        denied = [op for op in asked if op in item.operations]
        if denied:
            raise Forbidden(f"operations denied by the minting token: {denied[:5]!r}")
        return
    _check_subset("operations", asked, item.operations)


def _covers(pattern: str, asked: str) -> bool:
    """Whether every resource `asked` matches is also matched by `pattern`."""
    if pattern.endswith("*"):
        return asked.startswith(pattern[:-1])
    return asked == pattern


def _check_resources(item: Resources, asked: tuple[str, ...]) -> None:
    beyond = [r for r in asked if not any(_covers(p, r) for p in item.resources)]
    if beyond:
        raise Forbidden(
            f"resources must be within the minting token's {list(item.resources)!r};"
            f" not allowed: {beyond[:5]!r}"
        )


def _check_networks(item: ClientCIDR, asked: tuple[str, ...]) -> None:
    allowed = [_network(c) for c in item.cidrs]
    for cidr in asked:
        network = _network(cidr)
        if not any(
            network.version == parent.version and network.subnet_of(parent)  # type: ignore[arg-type]
            for parent in allowed
        ):
            raise Forbidden(
                f"cidrs must be within the minting token's {list(item.cidrs)!r};"
                f" not allowed: {cidr[:64]!r}"
            )


def _network(cidr: str) -> _Network:
    network = ipaddress.ip_network(cidr, strict=False)
    # IPv4-mapped IPv6 networks count as the IPv4 ones they carry, as caveats.ClientCIDR reads them.
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network
