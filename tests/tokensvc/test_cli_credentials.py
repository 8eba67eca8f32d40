"""CLI logins like `gh`: one per server URL and user, each token sent only where it was issued.

Against a real `tokensvc serve` subprocess (embedded SQLite) and, where an attacker is needed, a
plain HTTP listener on another port that records every Authorization header it is sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.ports import free_port
from tests.tokensvc.test_cli_login import (  # noqa: F401
    Cli,
    assert_one_line_failure,
    http,
    server,
)

ALICE_PASSWORD = "her long lantern passphrase"
FAKE_TOKEN = "tsv1_" + "A" * 60 + ".00000000"


@dataclass
class Listener:
    """An HTTP server that is not tokensvc: it records what it is sent."""

    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    redirect_to: str | None = None  # answer everything but /v1/login with a 307 there

    @property
    def authorizations(self) -> list[str]:
        return [s["authorization"] for s in self.seen if s["authorization"] is not None]


def _serve(listener: Listener) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            listener.seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                }
            )
            if self.path == "/v1/login":  # hands out a token, as a server one logs in to would
                expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
                body = {"token": FAKE_TOKEN, "subject": "admin", "expires_at": expires}
                self._json(200, body)
            elif listener.redirect_to is not None:
                self.send_response(307)
                self.send_header("Location", listener.redirect_to + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:  # whatever a client would take as success
                self._json(200, {"users": [], "keys": [], "tokens": [], "entries": []})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", int(listener.url.rsplit(":", 1)[1])), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return httpd, thread


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    """Two recording listeners on free ports; shut down after the test."""
    made = [Listener(f"http://127.0.0.1:{free_port()}") for _ in range(2)]
    running = [_serve(x) for x in made]
    yield made
    for httpd, thread in running:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def admin_cli(tmp_path: Path, server: str) -> Cli:  # noqa: F811
    cli = Cli(tmp_path / "admin")
    cli.home.mkdir()
    cli.login(server, "admin", ADMIN_PASSWORD)
    return cli


def needs_discharge_at(location: str) -> str:
    """A plain pymacaroons token with a third-party caveat whose discharger is `location`."""
    from pymacaroons import MACAROON_V2, Macaroon

    m = Macaroon(location="x", identifier="id", key="k" * 32, version=MACAROON_V2)
    m.add_third_party_caveat(location, "c" * 32, "cid")
    return str(m.serialize())


def test_a_stored_token_is_never_sent_to_another_url(
    admin_cli: Cli,
    server: str,  # noqa: F811
    listeners: list[Listener],
) -> None:
    """With an admin login for the server, commands pointed at another port (--url, host:port,
    TOKENSVC_URL, a discharge from a location under it) send that listener no Authorization
    header and fail saying nothing is stored for it; the token still works on its own server."""
    evil = listeners[0]
    port = evil.url.rsplit(":", 1)[1]
    attempts = [
        admin_cli("user", "list", "--url", evil.url),
        admin_cli("user", "list", "--url", f"127.0.0.1:{port}"),
        admin_cli("whoami", "--url", evil.url + "/"),
        admin_cli("token", "mint", "--subject", "x", "--url", evil.url),
        admin_cli("keys", "list", "--url", evil.url),
        admin_cli("audit", "--url", evil.url),
    ]
    admin_cli.env["TOKENSVC_URL"] = evil.url
    attempts.append(admin_cli("user", "list"))
    attempts.append(admin_cli("token", "discharge", "--no-verify", needs_discharge_at(evil.url)))
    del admin_cli.env["TOKENSVC_URL"]

    users = json.loads(admin_cli.ok("user", "list", "--json"))

    assert evil.authorizations == []
    for result in attempts[:-1]:
        assert f"not logged in to {evil.url}" in assert_one_line_failure(result)
    assert attempts[-1].returncode != 0  # the listener's answer is no discharge
    assert [s["path"] for s in evil.seen if s["method"] == "POST"] == ["/discharge"]
    assert "admin" in [u["name"] for u in users]


def test_a_redirect_is_not_followed_with_the_token(
    tmp_path: Path, listeners: list[Listener]
) -> None:
    """A server that answers 307 to another host gets its own token, the other host nothing,
    and the command fails in one line naming the redirect."""
    first, second = listeners
    first.redirect_to = second.url
    cli = Cli(tmp_path)
    cli.login(first.url, "admin", "whatever")

    result = cli("user", "list", "--url", first.url)

    assert "redirects to " + second.url in assert_one_line_failure(result)
    assert first.authorizations[-1] == f"Bearer {FAKE_TOKEN}"  # its own token, at login
    assert second.seen == []


def test_several_logins_side_by_side_with_auth_status_and_switch(
    admin_cli: Cli,
    server: str,  # noqa: F811
    listeners: list[Listener],
) -> None:
    """Logging in as alice keeps the admin login; `auth status` lists both servers and users with
    expiry and the active ones; `auth switch admin` makes admin act again."""
    admin_cli.ok("user", "add", "alice", "--password-stdin", stdin=ALICE_PASSWORD + "\n")
    admin_token = admin_cli.token(server)
    admin_cli.login(listeners[0].url, "admin", "whatever")
    admin_cli.login(server, "alice", ALICE_PASSWORD)

    as_alice = json.loads(admin_cli.ok("whoami", "--json"))
    status = json.loads(admin_cli.ok("auth", "status", "--json"))
    text = admin_cli.ok("auth", "status")
    admin_cli.ok("auth", "switch", "admin", "--url", server)
    as_admin = json.loads(admin_cli.ok("whoami", "--json"))

    assert as_alice["subject"] == "alice"
    assert as_admin["subject"] == "admin"
    assert admin_cli.token(server) == admin_token
    servers = {s["url"]: s for s in status["servers"]}
    assert set(servers) == {server, listeners[0].url}
    assert servers[server]["default"] is True
    users = {u["user"]: u for u in servers[server]["users"]}
    assert users["alice"]["active"] is True and users["admin"]["active"] is False
    assert all(u["expires_at"].endswith("Z") and not u["expired"] for u in users.values())
    assert f"{server}  (default)" in text
    assert "* alice" in text and "  admin" in text and "token expires" in text


def test_tokensvc_token_is_used_and_never_written(
    admin_cli: Cli,
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """With TOKENSVC_TOKEN and TOKENSVC_URL and no login, admin commands work and nothing is stored."""
    ci = Cli(tmp_path / "ci")
    ci.home.mkdir()
    ci.env.update(TOKENSVC_TOKEN=admin_cli.token(server), TOKENSVC_URL=server)

    users = json.loads(ci.ok("user", "list", "--json"))
    status = ci.ok("auth", "status")

    assert "admin" in [u["name"] for u in users]
    assert "TOKENSVC_TOKEN is set" in status
    assert not ci.credentials.exists()
    assert not any((ci.home / "cfg").rglob("*")) if (ci.home / "cfg").exists() else True


def test_a_revoked_or_expired_stored_token_says_log_in_again(
    admin_cli: Cli,
    server: str,  # noqa: F811
) -> None:
    """After the stored token is revoked, or once its stored expiry has passed, an admin command
    fails in one line that names the command to log in again."""
    token = admin_cli.token(server)
    admin_cli.ok("token", "revoke", "--token", "-", stdin=token + "\n")

    revoked = admin_cli("user", "list")
    data = admin_cli.stored()
    data["servers"][server]["users"]["admin"]["expires_at"] = "2020-01-01T00:00:00Z"
    admin_cli.credentials.write_text(json.dumps(data))
    expired = admin_cli("user", "list")

    again = f"log in again: tokensvc login admin --url {server}"
    assert again in assert_one_line_failure(revoked)
    assert "token revoked" in revoked.stderr
    assert again in assert_one_line_failure(expired)
    assert "expired at 2020-01-01T00:00:00Z" in expired.stderr


def test_the_old_single_slot_file_is_migrated(
    admin_cli: Cli,
    server: str,  # noqa: F811
) -> None:
    """A credentials file of the old one-login form keeps working and is rewritten in the new form, 0600."""
    token = admin_cli.token(server)
    admin_cli.credentials.write_text(
        json.dumps({"url": server + "/", "token": token, "subject": "admin", "expires_at": None})
    )

    whoami = json.loads(admin_cli.ok("whoami", "--json"))

    assert whoami["subject"] == "admin"
    data = admin_cli.stored()
    assert data["version"] == 2
    assert data["default"] == server
    assert data["servers"][server]["users"]["admin"]["token"] == token
    assert admin_cli.credentials.stat().st_mode & 0o777 == 0o600


def test_host_and_port_alone_mean_http_and_bad_urls_fail_in_one_line(
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`--url 127.0.0.1:PORT` logs in to http://127.0.0.1:PORT; ftp://, user info and garbage are one-line errors."""
    cli = Cli(tmp_path)
    hostport = server.removeprefix("http://")

    cli.login(hostport, "admin", ADMIN_PASSWORD)
    bad = [
        cli("whoami", "--url", "ftp://127.0.0.1:21"),
        cli("whoami", "--url", "http://user:pw@127.0.0.1:1"),
        cli("whoami", "--url", "http://127.0.0.1:notaport"),
    ]

    assert server in cli.stored()["servers"]
    assert json.loads(cli.ok("whoami", "--json"))["url"] == server
    for result in bad:
        assert "bad_url" in assert_one_line_failure(result)


@pytest.mark.parametrize("planted", ["symlink", "readable file"])
def test_a_planted_temporary_file_never_receives_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    """Red team (helper-34): the store was written through `credentials.tmp` opened with
    O_TRUNC, not O_EXCL: a symlink or a world-readable file left there took the tokens. It is
    now made afresh, so the planted one is replaced, its target untouched."""
    from tokensvc.cli import credentials

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    store_dir = tmp_path / "tokensvc"
    store_dir.mkdir(mode=0o700)
    target = tmp_path / "attacker-readable"
    target.write_text("")
    target.chmod(0o644)
    tmp = store_dir / "credentials.tmp"
    if planted == "symlink":
        tmp.symlink_to(target)
    else:
        tmp.write_text("")
        tmp.chmod(0o644)

    with credentials.editing() as store:
        store.put("http://127.0.0.1:1", "alice", {"token": "tsv1_secret", "expires_at": None})

    assert target.read_text() == ""
    saved = store_dir / "credentials.json"
    assert "tsv1_secret" in saved.read_text()
    assert saved.stat().st_mode & 0o777 == 0o600
    assert not tmp.exists()
