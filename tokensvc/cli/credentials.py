"""Where the CLI keeps its logins: per server URL and per user, like `gh`'s hosts file.

The file is `$XDG_CONFIG_HOME/tokensvc/credentials.json`, mode 0600 in a 0700 directory:

    {"version": 2, "default": URL,
     "servers": {URL: {"user": NAME, "users": {NAME: {"token", "expires_at", "token_id"}}}}}

A stored token is looked up by the exact (normalized) URL it was issued by, so it is only ever
sent back there: a `--url` or `TOKENSVC_URL` naming another server finds no token for it, and
the command fails saying so instead of sending one. `TOKENSVC_TOKEN` (for CI) overrides the file
and is never written to it.

The OS keyring (the `keyring` library) is deliberately not used: on the headless hosts where
operators and CI run this there is usually no keyring backend, so the 0600 file would be the
real store anyway (gh falls back to the same), and a second store would double the code that
decides where a token may go.

The single-slot file of earlier versions (`{"url", "token", "subject", "expires_at"}`) is
migrated in place the first time it is read.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import stat
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from tokensvc.cli.errors import BadToken, BadUrl, CredentialsUnreadable, InsecureUrl, NotLoggedIn

DEFAULT_URL: Final = "http://127.0.0.1:8080"
TOKEN_ENV: Final = "TOKENSVC_TOKEN"  # noqa: S105 - the variable's name, not a secret
URL_ENV: Final = "TOKENSVC_URL"
VERSION: Final = 2
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: The server's variable of insecure choices; `plain-http` there also lets the CLI talk plain
#: http to a host that is not this machine.
INSECURE_ENV: Final = "TOKENSVC_ALLOW_INSECURE"
_MAX_TOKEN: Final = 1 << 20


def checked_token(value: object, where: str) -> str:
    """`value` if it can be a token: printable ASCII without whitespace, at most 1 MiB.

    A token holding a line break would be refused by http.client with the whole header in the
    message (a traceback that printed it, red team); one with other odd characters is no token
    of ours either. The message names where it came from, never the value.

    Raises:
        BadToken: anything else.
    """
    if (
        not isinstance(value, str)
        or not value
        or len(value) > _MAX_TOKEN
        or not value.isascii()
        or not value.isprintable()
        or any(c.isspace() for c in value)
        or "\\" in value  # no token has one; an answer's control characters arrive escaped
    ):
        raise BadToken(f"{where} is not a token (whitespace, control or non-ASCII characters)")
    return value


def is_loopback(url: str) -> bool:
    """Whether `url` (normalized) names this machine: localhost or a loopback address."""
    # Exactly: `localhost.` and `127.0.0.1.` are names the resolver sends to DNS (red team,
    # helper-74), and not `*.localhost`, which goes there too without nss-myhostname.
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def opener(*handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
    """A urllib opener for the CLI's calls that never sends plain http through a proxy: urllib
    would hand an http:// request, Authorization header and all, to the proxy in HTTP_PROXY,
    loopback URLs included (red team, helper-74: the proxy read `tokensvc login`'s password).
    An https proxy only tunnels (CONNECT), and NO_PROXY still applies to it."""
    https_only = {k: v for k, v in urllib.request.getproxies().items() if k == "https"}
    return urllib.request.build_opener(urllib.request.ProxyHandler(https_only), *handlers)


def refuse_plain_http(url: str) -> None:
    """InsecureUrl for an http:// URL to another machine, unless TOKENSVC_ALLOW_INSECURE names
    `plain-http`: every CLI call carries a password or token (in a header or the body), and
    plain http would hand it to anyone on the path (red team: `--url tokens.corp.example` sent
    the admin password in clear, and `host:443` too)."""
    if not url.startswith("http://") or is_loopback(url):
        return
    allowed = {part.strip() for part in os.environ.get(INSECURE_ENV, "").split(",")}
    if "plain-http" in allowed:
        return
    raise InsecureUrl(
        f"{url} is plain http to another machine: passwords and tokens would cross the network"
        f" readable; use https://, or set {INSECURE_ENV}=plain-http to allow it"
    )


def normalize_url(raw: str) -> str:
    """`raw` as the key credentials are stored under: scheme://host[:port][/path], lower-case host.

    `host:port` alone means http:// (as `--url 127.0.0.1:8080` in the help suggests). A URL with
    user info, a query or a fragment is refused: none belongs in a service URL, and user info
    would be sent as a second credential.

    Raises:
        BadUrl: not an http(s) URL with a host.
    """
    text = raw.strip()
    if "://" not in text:
        text = "http://" + text
    if not text.isascii() or not text.isprintable() or " " in text:
        # http.client would refuse it later with a traceback; an IDN host goes in its
        # ASCII (punycode) form, a path's odd characters percent-encoded.
        raise BadUrl(
            f"not a service URL: {raw[:200]!r} (ASCII only, no spaces: write an international"
            " host name in its xn-- form, and percent-encode a path)"
        )
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise BadUrl(
            f"not a service URL: {raw[:200]!r} (use e.g. https://tokens.example or 127.0.0.1:8080)"
        ) from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        raise BadUrl(
            f"not a service URL: {raw[:200]!r} (use e.g. https://tokens.example or 127.0.0.1:8080)"
        )
    if parts.username is not None or parts.password is not None:
        raise BadUrl("a service URL must not carry a user name or password")
    if parts.query or parts.fragment:
        raise BadUrl(f"a service URL has no query or fragment: {raw[:200]!r}")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "tokensvc" / "credentials.json"


@dataclass(frozen=True, slots=True)
class Credential:
    """A token and where it may be sent."""

    url: str
    token: str
    user: str | None  # None for TOKENSVC_TOKEN: who it belongs to is the server's business
    expires_at: str | None
    from_env: bool = False

    def __repr__(self) -> str:  # the token never reaches a log or a traceback
        return f"Credential(url={self.url!r}, user={self.user!r}, from_env={self.from_env!r})"

    @property
    def login_hint(self) -> str:
        """What to do when the server refuses this token."""
        if self.from_env:
            return f"the token in {TOKEN_ENV} was refused: set a fresh one"
        return f"log in again: tokensvc login {self.user} --url {self.url}"

    def expired(self, now: datetime) -> bool:
        when = parse_time(self.expires_at)
        return when is not None and when <= now


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _empty() -> dict[str, Any]:
    return {"version": VERSION, "default": None, "servers": {}}


def _migrated(data: dict[str, Any]) -> dict[str, Any]:
    """The single-slot file of earlier versions as version 2; anything else unchanged."""
    if "version" in data:
        return data
    token, url = data.get("token"), data.get("url") or DEFAULT_URL
    new = _empty()
    if isinstance(token, str) and isinstance(url, str):
        try:
            key = normalize_url(url)
        except BadUrl:
            return new
        user = str(data.get("subject") or "unknown")
        new["default"] = key
        new["servers"][key] = {
            "user": user,
            "users": {user: {"token": token, "expires_at": data.get("expires_at")}},
        }
    return new


class Store:
    """The credentials file: read once, changed in memory, written back atomically."""

    def __init__(self, data: dict[str, Any], path: Path, *, migrated: bool = False) -> None:
        self.data = data
        self.path = path
        self.migrated = migrated  # read from an old single-slot file

    @property
    def default(self) -> str | None:
        value = self.data.get("default")
        return value if isinstance(value, str) else None

    @property
    def servers(self) -> dict[str, dict[str, Any]]:
        servers = self.data.setdefault("servers", {})
        assert isinstance(servers, dict)  # noqa: S101 - _load checked the shape
        return servers

    def put(self, url: str, user: str, entry: dict[str, Any]) -> None:
        """Store `user`'s token for `url`; it becomes that server's active user and the default."""
        server = self.servers.setdefault(url, {"user": user, "users": {}})
        server["users"][user] = entry
        server["user"] = user
        self.data["default"] = url

    def remove(self, url: str, user: str) -> bool:
        server = self.servers.get(url)
        if not server or user not in server["users"]:
            return False
        del server["users"][user]
        if not server["users"]:
            del self.servers[url]
        elif server.get("user") == user:
            server["user"] = sorted(server["users"])[0]
        if self.default == url and url not in self.servers:
            self.data["default"] = next(iter(sorted(self.servers)), None)
        return True

    def credential(self, url: str, user: str | None = None) -> Credential | None:
        server = self.servers.get(url)
        if not server:
            return None
        name = user or server.get("user")
        entry = server["users"].get(name) if isinstance(name, str) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            return None
        token = checked_token(entry["token"], f"the token stored for {name} at {url}")
        return Credential(url=url, token=token, user=name, expires_at=entry.get("expires_at"))


def _owned_and_private(path: Path, *, what: str, fix: str, forbidden: int) -> None:
    """CredentialsUnreadable unless `path` (followed, if a link) belongs to this user and has
    none of the `forbidden` mode bits: like ssh's StrictModes, a credentials store another user
    could write is not trusted (red team: one rewrote `default` to their server, and the next
    `tokensvc login` sent it the admin password)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CredentialsUnreadable(f"cannot read {path}: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.getuid() or mode & forbidden:
        raise CredentialsUnreadable(
            f"{what} {path} belongs to another user or others may change it (mode {mode:04o});"
            f" {fix}"
        )


def _check_store(path: Path) -> None:
    _owned_and_private(
        path.parent,
        what="the credentials directory",
        fix=f"run `chmod 700 {path.parent}` if it is yours",
        forbidden=0o022,
    )
    _owned_and_private(
        path, what="the credentials file", fix=f"run `chmod 600 {path}`", forbidden=0o077
    )


def _load(path: Path) -> Store:
    _check_store(path)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return Store(_empty(), path)
    except OSError as exc:
        raise CredentialsUnreadable(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise CredentialsUnreadable(f"{path} is not a credentials file: remove it and log in again")
    version = data.get("version")
    if version is not None and version != VERSION:
        raise CredentialsUnreadable(
            f"{path} has format {version!r}, not {VERSION}: a newer tokensvc wrote it"
        )
    migrated = version is None
    data = _migrated(data)
    servers = data.get("servers")
    if not isinstance(servers, dict) or not all(
        isinstance(s, dict)
        and isinstance(s.get("users"), dict)
        and all(isinstance(entry, dict) for entry in s["users"].values())
        for s in servers.values()
    ):
        raise CredentialsUnreadable(f"{path} is not a credentials file: remove it and log in again")
    return Store(data, path, migrated=migrated)


def _save(store: Store) -> None:
    """Write atomically, the file created 0600 in a 0700 directory.

    The temporary file is made afresh (O_EXCL, O_NOFOLLOW): one left behind, or planted in a
    directory that is not the owner's alone, is never opened, so tokens are never written
    through a symlink or into a file another user could already read (red team)."""
    path = store.path
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # whatever the umask
        json.dump(store.data, fh, indent=1)
    os.replace(tmp, path)


@contextlib.contextmanager
def editing() -> Iterator[Store]:
    """The store, locked against other `tokensvc` processes, written back when the block ends."""
    path = credentials_path()
    # Every missing folder on the way 0700, not only the last: `parents=True` makes the others
    # with the umask's mode, and under umask 000 another local user could swap the store's
    # folder between its check and its read (red team, helper-74).
    for folder in reversed([d for d in (path.parent, *path.parent.parents) if not d.exists()]):
        folder.mkdir(mode=0o700, exist_ok=True)
    _check_store(path)
    lock_fd = os.open(
        path.parent / ".credentials.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600
    )
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        store = _load(path)
        yield store
        if store.servers or store.default:
            _save(store)
        else:  # the last login is gone: leave no file behind
            path.unlink(missing_ok=True)
    finally:
        os.close(lock_fd)


def load() -> Store:
    """The store as it is (read-only use); an old single-slot file is migrated on the way."""
    store = _load(credentials_path())
    if store.migrated:
        with editing() as fresh:  # written back in the new form, under the lock
            return fresh
    return store


def target_url(url: str | None) -> str:
    """The server a command talks to: --url, else TOKENSVC_URL, else the last one logged in to."""
    chosen = url or os.environ.get(URL_ENV)
    if chosen:
        return normalize_url(chosen)
    default = load().default
    if default is None:
        return DEFAULT_URL
    try:
        return normalize_url(default)
    except BadUrl:
        raise CredentialsUnreadable(
            f"the default server in {credentials_path()} is not a service URL: log in again"
        ) from None


def env_token() -> str | None:
    value = os.environ.get(TOKEN_ENV, "").strip()
    return checked_token(value, TOKEN_ENV) if value else None


def credential_for(url: str) -> Credential | None:
    """The token to send to `url` (normalized): TOKENSVC_TOKEN, else the one stored for `url`."""
    token = env_token()
    if token is not None:
        return Credential(url=url, token=token, user=None, expires_at=None, from_env=True)
    return load().credential(url)


def require_credential(url: str, *, now: datetime | None = None) -> Credential:
    """The token for `url`, or a message saying how to get one.

    Raises:
        NotLoggedIn: nothing stored for `url`, or the stored token has expired.
    """
    found = credential_for(url)
    if found is None:
        others = sorted(load().servers)
        hint = (
            f" (logins are stored for {', '.join(others)}: choose one with --url or {URL_ENV})"
            if others
            else ""
        )
        raise NotLoggedIn(f"not logged in to {url}: run `tokensvc login --url {url}`{hint}")
    if found.expired(now or datetime.now(UTC)):
        raise NotLoggedIn(
            f"the stored token of {found.user} at {url} expired at {found.expires_at}: "
            + found.login_hint
        )
    return found
