"""The CLI's HTTP client: JSON to one service URL, with the token stored for that URL only.

Redirects are never followed. urllib would follow one to any host and carry the Authorization
header along, so a redirect (from a proxy, or anyone who can answer plain HTTP) could collect the
token; the API itself never redirects, so the CLI stops and names where it was sent instead.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from tokensvc.cli.credentials import (
    DEFAULT_URL,
    Credential,
    credential_for,
    normalize_url,
    require_credential,
    target_url,
)
from tokensvc.errors import TokensvcError

__all__ = ["DEFAULT_URL", "ApiError", "Client"]

TIMEOUT_SECONDS = 30


class ApiError(TokensvcError):
    """The service answered with an error, or could not be reached."""

    def __init__(
        self, status: int, code: str, message: str, *, challenge: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        # A 401 of POST /v1/login that a second-factor code may answer (tokensvc login).
        self.challenge = challenge


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx surfaces as an HTTPError, answered below


_OPENER = urllib.request.build_opener(_NoRedirects())


@dataclass
class Client:
    url: str
    credential: Credential | None = None

    @classmethod
    def anonymous(cls, url: str | None = None) -> Client:
        """A client for --url / TOKENSVC_URL / the default server that sends no token."""
        return cls(url=target_url(url))

    @classmethod
    def signed_in(cls, url: str | None = None) -> Client:
        """A client carrying the token stored for exactly that server (or TOKENSVC_TOKEN).

        Raises:
            NotLoggedIn: no token for that server, or it has expired.
        """
        base = target_url(url)
        return cls(url=base, credential=require_credential(base))

    @classmethod
    def optional(cls, url: str | None = None) -> Client:
        """Signed in where a token is at hand for the server, else anonymous."""
        base = target_url(url)
        return cls(url=base, credential=credential_for(base))

    @classmethod
    def at(cls, url: str) -> Client:
        return cls(url=normalize_url(url))

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
    ) -> Any:
        """The JSON answer (None for an empty one); `form` is sent urlencoded instead of `body`.

        Raises:
            ApiError: the service answered an error, redirected, or could not be reached.
        """
        all_headers = {"Accept": "application/json", **(headers or {})}
        if self.credential is not None and "Authorization" not in all_headers:
            all_headers["Authorization"] = f"Bearer {self.credential.token}"
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)  # noqa: S310 - normalize_url admits http(s) only
        try:
            with _OPENER.open(req, timeout=TIMEOUT_SECONDS) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ApiError(0, "unreachable", f"cannot reach {self.url}: {reason}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ApiError(
                0, "bad_answer", f"{self.url} answered something that is not JSON"
            ) from None

    def _error(self, exc: urllib.error.HTTPError) -> ApiError:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "?")[:200]
            return ApiError(
                exc.code,
                "redirected",
                f"{self.url} redirects to {where}; not followed (a redirect would take your"
                " token along): if that is the service, use its URL with --url",
            )
        challenge = None
        try:
            answer = json.loads(exc.read())
            if isinstance(answer.get("challenge"), str):
                challenge = answer["challenge"]
            if "reason" in answer:  # /v1/verify's {"valid": false, "reason"}
                code = "invalid_token" if exc.code == 401 else "denied"
                message = str(answer["reason"])
            else:
                code, message = str(answer["error"]["code"]), str(answer["error"]["message"])
        except (ValueError, KeyError, TypeError, OSError):
            code, message = "http_error", f"HTTP {exc.code}"
        if exc.code == 401 and self.credential is not None:
            message = f"{message}; {self.credential.login_hint}"
        return ApiError(exc.code, code, message, challenge=challenge)
