"""Red team (round 2): the CLI on the user's machine and on the wire. Each test is an attack
that worked before its fix: a token printed in a traceback, `logout` forgetting a token it had
not revoked, a password sent in clear to another machine, a credentials store another user
could rewrite, a server's text driving the terminal, and answers that made tracebacks.

The servers here are plain listeners playing a broken or hostile tokensvc; each records the
Authorization headers it is sent.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port
from tests.tokensvc.test_cli_login import Cli

GOOD_TOKEN = "tsv1_" + "A" * 60 + ".00000000"
Answer = tuple[int, bytes]


class Hostile:
    """A listener on 127.0.0.1 answering each path as `answers` says (default: a login)."""

    def __init__(self) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.answers: dict[str, Callable[[], Answer]] = {}
        self.authorizations: list[str] = []
        self._httpd: ThreadingHTTPServer | None = None

    def login_answer(self, token: str = GOOD_TOKEN, **extra: Any) -> Answer:
        expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"token": token, "subject": "admin", "expires_at": expires, **extra}
        return 200, json.dumps(body).encode()

    def start(self) -> None:
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization"):
                    hostile.authorizations.append(self.headers["Authorization"])
                answer = hostile.answers.get(self.path, hostile.login_answer)
                status, body = answer()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        port = int(self.url.rsplit(":", 1)[1])
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    made = Cli(tmp_path / "user")
    made.home.mkdir()
    return made


def one_line_failure(result: Any, *never: str) -> str:
    """A failed command's one `Error:` line; no traceback, none of `never` anywhere."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    for secret in never:
        assert secret not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_a_token_with_a_line_break_is_refused_and_never_printed(cli: Cli, hostile: Hostile) -> None:
    """The reproduction: TOKENSVC_TOKEN holding a newline ended in http.client's traceback,
    which quoted the whole Authorization header; a server could plant such a token at login."""
    hostile.answers["/v1/login"] = lambda: hostile.login_answer("SECRETPART1\r\nSECRETPART2")

    cli.env["TOKENSVC_TOKEN"] = "SECRETPART1\nSECRETPART2"
    from_env = cli("whoami", "--url", hostile.url)
    del cli.env["TOKENSVC_TOKEN"]
    planted = cli("login", "--url", hostile.url, "--password-stdin", "admin", stdin="pw\n")

    assert "bad_token" in one_line_failure(from_env, "SECRETPART")
    assert "bad_token" in one_line_failure(planted, "SECRETPART")
    assert not cli.credentials.exists()


def test_logout_keeps_a_token_it_could_not_revoke(cli: Cli, hostile: Hostile) -> None:
    """The reproduction: with the server down, `logout` warned, deleted the stored token (and
    its id) and exited 0, while the token worked on for hours. It is kept now; --force forgets."""
    cli.ok("login", "--url", hostile.url, "--password-stdin", "admin", stdin="pw\n")
    hostile.stop()

    kept = cli("logout", "--url", hostile.url)
    still = json.loads(cli.credentials.read_text())["servers"]
    forced = cli("logout", "--url", hostile.url, "--force")

    assert "it is kept" in one_line_failure(kept, GOOD_TOKEN)
    assert list(still) == [hostile.url]
    assert forced.returncode == 0 and "could not revoke" in forced.stderr, forced
    assert not cli.credentials.exists()


def test_plain_http_to_another_machine_is_refused_before_anything_is_sent(cli: Cli) -> None:
    """The reproduction: `--url 192.0.2.2:18533` (and any bare host) meant http://, and the
    admin password went out in clear. Plain http is spoken to this machine only."""
    for url in ("192.0.2.2:18533", "http://tokens.example", "tokens.example:443"):
        refused = cli("login", "--url", url, "--password-stdin", "admin", stdin="pw\n")
        assert "insecure_url" in one_line_failure(refused), url


def test_plain_http_is_for_loopback_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """localhost and loopback addresses pass; another host only with the server's own
    TOKENSVC_ALLOW_INSECURE=plain-http; https always."""
    from tokensvc.cli.credentials import refuse_plain_http
    from tokensvc.cli.errors import InsecureUrl

    for url in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"):
        refuse_plain_http(url)
    refuse_plain_http("https://tokens.example")
    # Red team (helper-74): with a trailing dot these are names the resolver asks DNS about.
    for url in ("http://tokens.example", "http://localhost.:8080", "http://127.0.0.1.:8080"):
        with pytest.raises(InsecureUrl):
            refuse_plain_http(url)
    monkeypatch.setenv("TOKENSVC_ALLOW_INSECURE", "test-password-profile, plain-http")
    refuse_plain_http("http://tokens.example")


@pytest.mark.parametrize(
    ("target", "mode", "fix"), [("dir", 0o777, "chmod 700"), ("file", 0o666, "chmod 600")]
)
def test_a_credentials_store_others_can_change_is_not_trusted(
    cli: Cli, hostile: Hostile, target: str, mode: int, fix: str
) -> None:
    """The reproduction: with the store left writable by all, another user pointed `default`
    at their server and the next `tokensvc login` sent it the admin password."""
    cli.ok("login", "--url", hostile.url, "--password-stdin", "admin", stdin="pw\n")
    (cli.credentials.parent if target == "dir" else cli.credentials).chmod(mode)

    status = cli("auth", "status")
    login = cli("login", "--password-stdin", "admin", stdin="pw\n")

    assert fix in one_line_failure(status)
    assert fix in one_line_failure(login)
    assert len(hostile.authorizations) == 1  # the first login only


def test_the_folders_made_for_the_store_are_private_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red team (helper-74): under umask 000 the missing folders above the store were made
    0777, so another user could swap the store's folder for one of theirs."""
    import os

    from tokensvc.cli.credentials import editing

    config = tmp_path / "home" / ".config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    old = os.umask(0)
    try:
        with editing():
            pass
    finally:
        os.umask(old)

    for folder in (tmp_path / "home", config, config / "tokensvc"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder


def test_a_servers_text_cannot_drive_the_terminal(cli: Cli, hostile: Hostile) -> None:
    """The reproduction: an error message holding an OSC sequence reached the terminal raw."""
    body = {"error": {"code": "\x1b[31mbad", "message": "\x1b]0;pwned\x07 hi"}}
    hostile.answers["/v1/login"] = lambda: (401, json.dumps(body).encode())

    result = cli("login", "--url", hostile.url, "--password-stdin", "admin", stdin="pw\n")

    line = one_line_failure(result)
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "pwned" in line and "hi" in line


def test_a_proxy_never_carries_plain_http(cli: Cli, hostile: Hostile) -> None:
    """Red team (helper-74): urllib sent http:// requests, Authorization and all, to the proxy
    in HTTP_PROXY, loopback URLs included: the proxy read `tokensvc login`'s password and the
    stored token. Plain http goes straight to the service; https may still use a proxy (a
    tunnel it cannot read)."""
    proxy = Hostile()
    proxy.start()
    try:
        cli.env["HTTP_PROXY"] = cli.env["http_proxy"] = proxy.url
        cli.ok("login", "--url", hostile.url, "--password-stdin", "admin", stdin="pw\n")
        cli("token", "list", "--url", hostile.url)
    finally:
        proxy.stop()

    assert proxy.authorizations == []
    assert len(hostile.authorizations) >= 2


def test_a_servers_text_is_escaped_wherever_it_is_printed(cli: Cli, hostile: Hostile) -> None:
    """Red team (helper-74): a subject in a login answer set the terminal's title in `login`,
    `whoami` and `auth status`: only error messages were escaped. Every string of an answer is
    escaped as it arrives; a token spoiled that way is no token."""
    hostile.answers["/v1/login"] = lambda: hostile.login_answer(subject="\x1b]0;pwned\x07adm")

    logged = cli("login", "--url", hostile.url, "--password-stdin", "admin", stdin="pw\n")
    status = cli("auth", "status")
    hostile.answers["/v1/login"] = lambda: hostile.login_answer(token=GOOD_TOKEN + "\x1b")
    spoiled = cli("login", "--url", hostile.url, "--password-stdin", "admin", stdin="pw\n")

    assert logged.returncode == 0, logged
    for output in (logged.stdout + logged.stderr, status.stdout + status.stderr):
        assert "\x1b" not in output and "\x07" not in output and "pwned" in output
    assert "bad_token" in one_line_failure(spoiled)


def test_a_password_from_a_crlf_file_is_the_password(cli: Cli, hostile: Hostile) -> None:
    """`--password-stdin` fed from a CRLF file sent the password with a `\\r` (a wrong
    password, counted by the lockout); a user name with `:` would have been cut at it."""
    cli.ok("login", "--url", hostile.url, "--password-stdin", "admin", stdin="s3cret pass\r\n")
    colon = cli("login", "--url", hostile.url, "--password-stdin", "ad:min", stdin="pw\n")

    assert base64.b64decode(hostile.authorizations[0].split()[1]) == b"admin:s3cret pass"
    assert colon.returncode != 0 and "cannot contain ':'" in colon.stderr
    assert len(hostile.authorizations) == 1


@pytest.mark.parametrize(
    ("url", "answer"),
    [
        ("http://127.0.0.1:1/a b", None),
        ("http://127.0.0.1:1/é", None),
        ("http://b\u00fccher.example", None),
        (None, b"{}"),
        (None, b"[1]"),
        (None, b'{"token": 5, "subject": "admin", "expires_at": "x"}'),
    ],
)
def test_bad_urls_and_strange_answers_are_one_line(
    cli: Cli, hostile: Hostile, url: str | None, answer: bytes | None
) -> None:
    """Each of these made a traceback (http.client's InvalidURL, UnicodeEncodeError, KeyError,
    TypeError); none is a tokensvc answer or a service URL."""
    if answer is not None:
        hostile.answers["/v1/login"] = lambda: (200, answer)

    result = cli("login", "--url", url or hostile.url, "--password-stdin", "admin", stdin="pw\n")

    assert any(code in one_line_failure(result) for code in ("bad_url", "bad_answer"))


def test_an_answer_is_read_within_a_deadline_and_a_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server dripping a byte at a time held `tokensvc login` past its 30 s timeout (each
    read had its own); an endless answer was read whole."""
    from tokensvc.cli import client

    class Drip:
        def read1(self, n: int) -> bytes:
            time.sleep(0.02)
            return b"x"

    monkeypatch.setattr(client, "TIMEOUT_SECONDS", 0.2)
    with pytest.raises(TimeoutError):
        client._read_bounded(Drip())
    monkeypatch.setattr(client, "TIMEOUT_SECONDS", 30)
    monkeypatch.setattr(client, "MAX_ANSWER_BYTES", 10)
    with pytest.raises(ValueError, match="too large"):
        client._read_bounded(Drip())


def test_a_token_to_inspect_cannot_drive_the_terminal(cli: Cli) -> None:
    """Red team: `tokensvc token inspect` is for tokens of anyone's (one to be judged), and
    printed its holder's caveat text raw: an OSC sequence retitled the window, a CSI one
    coloured the output. Everything it shows of the token is escaped."""
    from pymacaroons import MACAROON_V2, Macaroon

    macaroon = Macaroon(location="x\x1b[2J", identifier="id", key="k" * 32, version=MACAROON_V2)
    macaroon.add_first_party_caveat("\x1b]0;pwned\x07 allow read")
    macaroon.add_first_party_caveat("declared user \x1b[31mred")

    shown = cli.ok("token", "inspect", macaroon.serialize())

    assert "\x1b" not in shown and "\x07" not in shown
    assert "pwned" in shown and "red" in shown
