"""The CLI's HTTP client, and where a logged-in user's token is kept (mode 0600)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokensvc.errors import TokensvcError, Unauthenticated

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiError(TokensvcError):
    """The service answered with an error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "tokensvc" / "credentials.json"


def save_credentials(data: dict[str, Any]) -> Path:
    """Write the credentials file atomically, created 0600 in a 0700 directory."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def load_credentials() -> dict[str, Any] | None:
    try:
        data = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Client:
    url: str
    token: str | None = None

    @classmethod
    def from_saved(cls, url: str | None = None) -> Client:
        saved = load_credentials()
        if saved is None:
            raise Unauthenticated("not logged in: run `tokensvc login` first")
        return cls(url=(url or saved.get("url") or DEFAULT_URL).rstrip("/"), token=saved["token"])

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> Any:
        all_headers = {"Accept": "application/json", **(headers or {})}
        if self.token and "Authorization" not in all_headers:
            all_headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)  # noqa: S310 - the operator's own service URL (--url / TOKENSVC_URL)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the operator's own service URL (--url / TOKENSVC_URL)
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)["error"]
                raise ApiError(exc.code, err["code"], err["message"]) from None
            except (ValueError, KeyError, TypeError):
                raise ApiError(exc.code, "http_error", f"HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise ApiError(0, "unreachable", f"cannot reach {self.url}: {exc.reason}") from None
        return json.loads(raw) if raw else None
