"""What can go wrong when a protected service asks whether a request may go through.

One root exception that is never raised itself; the HTTP doors map the subclasses to statuses.
"""

from __future__ import annotations


class TokensvcClientError(Exception):
    """The root of every error this package raises on purpose."""


class Denied(TokensvcClientError):
    """The request may not go through; `status` is 401 (bad token) or 403 (denied here)."""

    status: int = 403
    code: str = "caveat_denied"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidToken(Denied):
    """No token, or a forged, malformed, expired or revoked one: bad in every context (401)."""

    status = 401
    code = "invalid_token"


class CaveatDenied(Denied):
    """A genuine token whose caveats deny this request's context (403)."""

    status = 403
    code = "caveat_denied"


class Unavailable(TokensvcClientError):
    """tokensvc could not be asked and the cache may not be trusted: neither allow nor deny (503)."""

    def __init__(self, reason: str, *, retry_after: int = 2) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class BadRequest(Denied):
    """A request tokensvc cannot judge as sent (a token or context beyond its limits) (400)."""

    status = 400
    code = "bad_request"
