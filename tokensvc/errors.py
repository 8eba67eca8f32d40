"""The service's one exception hierarchy; the HTTP layer maps `status` and `code` in one place."""

from __future__ import annotations


class TokensvcError(Exception):
    """Root of every error tokensvc raises on purpose; never raised itself."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadRequest(TokensvcError):
    """The request is malformed."""

    status = 400
    code = "bad_request"


class PayloadTooLarge(TokensvcError):
    """The request body or token is larger than allowed."""

    status = 413
    code = "payload_too_large"


class UnsupportedEncoding(TokensvcError):
    """The request body has a Content-Encoding this service does not decode."""

    status = 415
    code = "unsupported_media_type"

    def __init__(self, message: str | None = None, *, accepted: str) -> None:
        super().__init__(message)
        self.accepted = accepted  # the Accept-Encoding the answer names (RFC 9110 §15.5.16)


class ClientDisconnected(TokensvcError):
    """The client closed the connection before its request was read: nobody gets the answer.

    Not a server error: counted and logged as 499, nginx's status for it.
    """

    status = 499
    code = "client_closed_request"


class InvalidToken(TokensvcError):
    """The token is malformed, forged, expired, revoked or its key is gone."""

    status = 401
    code = "invalid_token"


class CaveatDenied(TokensvcError):
    """The token is genuine but its caveats do not allow this request."""

    status = 403
    code = "caveat_denied"


class Unauthenticated(TokensvcError):
    """The request carries no valid credentials."""

    status = 401
    code = "unauthenticated"


class Forbidden(TokensvcError):
    """The caller is authenticated but not allowed to do this."""

    status = 403
    code = "forbidden"


class NotFound(TokensvcError):
    """No such resource."""

    status = 404
    code = "not_found"


class Conflict(TokensvcError):
    """The resource already exists or changed underneath the request."""

    status = 409
    code = "conflict"


class LockedOut(TokensvcError):
    """Too many failed attempts; try again later."""

    status = 429
    code = "locked_out"

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(TokensvcError):
    """A dependency is down; try again later."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
