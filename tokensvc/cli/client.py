"""The CLI's HTTP client: JSON to one service URL, with the token stored for that URL only.

Redirects are never followed. urllib would follow one to any host and carry the Authorization
header along, so a redirect (from a proxy, or anyone who can answer plain HTTP) could collect the
token; the API itself never redirects, so the CLI stops and names where it was sent instead.
"""

from __future__ import annotations

import http.client
import json
import time
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
    opener,
    refuse_plain_http,
    require_credential,
    target_url,
)
from tokensvc.cli.render import shown
from tokensvc.errors import TokensvcError

__all__ = ["DEFAULT_URL", "ApiError", "Client"]

TIMEOUT_SECONDS = 30
#: The largest answer read: every API answer is far smaller (a page of 1,000 registry rows).
MAX_ANSWER_BYTES = 8 << 20


def printable(text: str, limit: int = 500) -> str:
    """Text from the server as it may be shown on a terminal, at most `limit` characters,
    escaped as every value the CLI shows is (render.shown): an answer cannot move the cursor
    or retitle the window (red team: an OSC sequence in an error message reached it)."""
    return shown(text[:limit])


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


_OPENER = opener(_NoRedirects())


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
        refuse_plain_http(self.url)
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
                raw = _read_bounded(resp)
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ApiError(
                0, "unreachable", f"cannot reach {self.url}: {printable(str(reason))}"
            ) from None
        except (http.client.HTTPException, ValueError, UnicodeError) as exc:
            # http.client refusing what it was to send (its message may quote a header, and
            # so a token) or a broken answer: named by type only.
            raise ApiError(
                0, "bad_exchange", f"no exchange with {self.url} ({type(exc).__name__})"
            ) from None
        try:
            return _displayable(json.loads(raw)) if raw else None
        except (ValueError, RecursionError):
            raise ApiError(
                0, "bad_answer", f"{self.url} answered something that is not JSON"
            ) from None

    def _error(self, exc: urllib.error.HTTPError) -> ApiError:
        if 300 <= exc.code < 400:
            where = printable(exc.headers.get("Location", "?"), 200)
            return ApiError(
                exc.code,
                "redirected",
                f"{self.url} redirects to {where}; not followed (a redirect would take your"
                " token along): if that is the service, use its URL with --url",
            )
        challenge = None
        try:
            answer = json.loads(_read_bounded(exc))
            if isinstance(answer.get("challenge"), str):
                challenge = answer["challenge"]
            if "reason" in answer:  # /v1/verify's {"valid": false, "reason"}
                code = "invalid_token" if exc.code == 401 else "denied"
                message = str(answer["reason"])
            else:
                code, message = str(answer["error"]["code"]), str(answer["error"]["message"])
        except (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError):
            # Not tokensvc's error shape (a list, a string, nesting past the parser's depth).
            code, message = "http_error", f"HTTP {exc.code}"
        message = printable(message)
        if exc.code == 401 and self.credential is not None:
            message = f"{message}; {self.credential.login_hint}"
        return ApiError(exc.code, printable(code, 64), message, challenge=challenge)


def _displayable(answer: Any) -> Any:
    """`answer` with every string's unprintable characters escaped (`render.shown`), once, as
    it arrives: whatever prints a field of it (a table, a success line, the stored login's
    subject) cannot be driven by a hostile server's escape sequences (red team, helper-74: a
    subject set the terminal's title in `login`, `whoami` and `auth status`). Tokens are
    printable ASCII already (`checked_token`), so they come through as they are."""
    if isinstance(answer, str):
        return shown(answer)
    if isinstance(answer, list):
        return [_displayable(item) for item in answer]
    if isinstance(answer, dict):
        return {shown(str(key)): _displayable(value) for key, value in answer.items()}
    return answer


def _read_bounded(resp: Any) -> bytes:
    """The answer's body, at most MAX_ANSWER_BYTES, read within TIMEOUT_SECONDS in all: the
    socket timeout alone bounds each read, and a server sending a byte at a time would
    otherwise hold a command for ever (red team)."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    chunks: list[bytes] = []
    size = 0
    while chunk := resp.read1(65536):  # what has arrived: the deadline is checked between
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise ValueError("answer too large")
        if time.monotonic() > deadline:
            raise TimeoutError("answer too slow")
        chunks.append(chunk)
    return b"".join(chunks)
