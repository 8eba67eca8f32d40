"""The service's one exception hierarchy: what went wrong, in domain terms.

No HTTP here: tokensvc/web/errors.py alone maps each class to a status; `code` is the stable,
machine-readable name of the error that every door (HTTP body, CLI message) shows.
"""

from __future__ import annotations


class TokensvcError(Exception):
    """Root of every error tokensvc raises on purpose; never raised itself."""

    code: str = "internal_error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadRequest(TokensvcError):
    """The request is malformed."""

    code = "bad_request"


class PayloadTooLarge(TokensvcError):
    """The request body or token is larger than allowed."""

    code = "payload_too_large"


class UnsupportedEncoding(TokensvcError):
    """The request body has a Content-Encoding this service does not decode."""

    code = "unsupported_media_type"

    def __init__(self, message: str | None = None, *, accepted: str) -> None:
        super().__init__(message)
        self.accepted = accepted  # the Accept-Encoding the answer names (RFC 9110 §15.5.16)


class UnsupportedMediaType(TokensvcError):
    """The request body is of a media type this endpoint does not read."""

    code = "unsupported_media_type"


class RequestTimeout(TokensvcError):
    """The client did not send its whole request body in time."""

    code = "request_timeout"


class ClientDisconnected(TokensvcError):
    """The client closed the connection before its request was read: nobody gets the answer.

    Not a server error: counted and logged as 499, nginx's status for it.
    """

    code = "client_closed_request"


class InvalidToken(TokensvcError):
    """The token is malformed, forged, expired, revoked or its key is gone."""

    code = "invalid_token"


class CaveatDenied(TokensvcError):
    """The token is genuine but its caveats do not allow this request."""

    code = "caveat_denied"


class Unauthenticated(TokensvcError):
    """The request carries no valid credentials."""

    code = "unauthenticated"


class Forbidden(TokensvcError):
    """The caller is authenticated but not allowed to do this."""

    code = "forbidden"


class NotFound(TokensvcError):
    """No such resource."""

    code = "not_found"


class Conflict(TokensvcError):
    """The resource already exists or changed underneath the request."""

    code = "conflict"


class LockedOut(TokensvcError):
    """Too many failed attempts; try again later."""

    code = "locked_out"

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(TokensvcError):
    """A dependency is down; try again later."""

    code = "unavailable"

    def __init__(self, message: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SecondFactorNeeded(Unauthenticated):
    """The password step did not yield a token: a wrong name or password, or a right one that
    needs a second factor — one answer for all, carrying a challenge to answer with a code."""

    def __init__(self, message: str, *, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge
