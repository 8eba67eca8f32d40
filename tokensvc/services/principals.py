"""Who asks for an action (a principal), and who it is done by once authorised (an actor).

Every door names its principal the same way: the HTTP handlers a `BearerToken` (the token the
request presents, with where it comes from), the CLI's `--local` mode a `LocalOperator` (whoever
can read the configuration — the KEK and the database URL — can do anything, as with
`vault operator`). Services authorise the principal for the operation (tokensvc.services.
authorization) and record the resulting `Actor` in the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokensvc.tokens.verification import Verified


@dataclass(frozen=True, slots=True)
class BearerToken:
    """A token presented to the API, and what the request says about where it comes from."""

    token: str = field(repr=False)
    client_ip: str | None
    # The request path: an admin token may be limited to some resources of the API.
    resource: str


@dataclass(frozen=True, slots=True)
class LocalOperator:
    """The CLI's break-glass mode: an operator with the configuration, bound by nothing else."""

    os_user: str

    @property
    def name(self) -> str:
        """The actor name the audit trail records: `local:<os user>`."""
        return f"local:{self.os_user}"


Principal = BearerToken | LocalOperator


@dataclass(frozen=True, slots=True)
class Actor:
    """An authorised principal: the name recorded in the audit trail and, for a token, what the
    token established (its subject, its caveats — the bounds of what it may delegate)."""

    name: str
    principal: Principal
    verified: Verified | None  # None for a local operator

    @property
    def subject(self) -> str | None:
        """The token's subject; None for a local operator."""
        return None if self.verified is None else self.verified.subject
