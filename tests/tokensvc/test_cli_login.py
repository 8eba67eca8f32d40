"""The `tokensvc` CLI end to end against a real `tokensvc serve` subprocess (embedded SQLite mode).

One server runs for the module; each test keeps its credentials in its own XDG_CONFIG_HOME.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.ports import free_port

TOKENSVC = str(Path(sys.executable).with_name("tokensvc"))
BOB_PASSWORD = "his long lantern passphrase"


def _clean_env(home: Path) -> dict[str, str]:
    """The environment minus every TOKENSVC_* variable, with HOME and XDG_CONFIG_HOME under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "cfg"), PYTHONUNBUFFERED="1")
    env.pop("XDG_DATA_HOME", None)
    return env


def stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate a server this test started (by its own pid), killing it after 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http(
    method: str, url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """A plain HTTP call to the server; status and JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`tokensvc serve` on a free port with a fresh data dir; its base URL. Always terminated."""
    home = tmp_path_factory.mktemp("server")
    port = free_port()
    env = _clean_env(home)
    env.update(
        TOKENSVC_DATA_DIR=str(home / "data"),
        TOKENSVC_ADMIN_PASSWORD=ADMIN_PASSWORD,
        TOKENSVC_PASSWORD_PROFILE="CHEAP_FOR_TESTS",
        TOKENSVC_ALLOW_INSECURE="test-password-profile",
    )
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [TOKENSVC, "serve", "--port", str(port), "--verify-port", str(free_port())],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http("GET", url + "/healthz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "tokensvc serve did not come up:\n" + (home / "server.log").read_text()[-3000:]
                )
            time.sleep(0.1)
        yield url
    finally:
        stop(proc)
        log.close()


class Cli:
    """Runs `tokensvc` commands as one user, whose config dir lives under `home`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = _clean_env(home)

    @property
    def credentials(self) -> Path:
        return self.home / "cfg" / "tokensvc" / "credentials.json"

    def __call__(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TOKENSVC, *args],
            check=False,
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.home,
        )

    def ok(self, *args: str, stdin: str = "") -> str:
        """Run a command that must succeed; its standard output."""
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result.stdout

    def stored(self) -> dict[str, Any]:
        """The credentials file as JSON."""
        data: dict[str, Any] = json.loads(self.credentials.read_text())
        return data

    def token(self, url: str) -> str:
        """The token stored for `url`, as `tokensvc auth token` prints it."""
        return self.ok("auth", "token", "--url", url).strip()

    def login(self, url: str, name: str, password: str) -> str:
        return self.ok("login", "--url", url, "--password-stdin", name, stdin=password + "\n")


def assert_one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """A non-zero exit with one line on stderr and no traceback anywhere; that line."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def admin_cli(tmp_path: Path, server: str) -> Cli:
    """A CLI user logged in to the server as the bootstrap admin."""
    cli = Cli(tmp_path / "admin")
    cli.home.mkdir()
    cli.login(server, "admin", ADMIN_PASSWORD)
    return cli


# ---- login, whoami, logout -------------------------------------------------------------------------


def test_login_stores_the_token_0600_and_whoami_uses_it(server: str, tmp_path: Path) -> None:
    """`tokensvc login --password-stdin admin` exits 0, writes a 0600 file in a 0700 dir, and `whoami --json` says admin."""
    cli = Cli(tmp_path)

    out = cli.login(server, "admin", ADMIN_PASSWORD)
    whoami = json.loads(cli.ok("whoami", "--json"))

    assert f"logged in to {server} as admin until" in out
    assert "tsv1_" not in out  # the token is stored, not printed
    assert stat.S_IMODE(cli.credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.credentials.parent.stat().st_mode) == 0o700
    stored = cli.stored()
    assert stored["default"] == server
    assert stored["servers"][server]["user"] == "admin"
    token = stored["servers"][server]["users"]["admin"]["token"]
    assert token.startswith("tsv1_")
    assert cli.token(server) == token
    assert whoami["subject"] == "admin"
    assert whoami["url"] == server
    assert http("POST", server + "/v1/verify", {"token": token})[1]["subject"] == "admin"


def test_login_json_output(server: str, tmp_path: Path) -> None:
    """`tokensvc login --json` prints the subject, the expiry and where the token was stored."""
    cli = Cli(tmp_path)

    out = cli.ok(
        "login", "--url", server, "--password-stdin", "--json", "admin", stdin=ADMIN_PASSWORD + "\n"
    )

    info = json.loads(out)
    assert info["subject"] == "admin"
    assert Path(info["stored"]) == cli.credentials
    assert "token" not in info


def test_wrong_password_fails_in_one_line_and_stores_nothing(server: str, tmp_path: Path) -> None:
    """A wrong password exits non-zero with a one-line message, no traceback, and no credentials file."""
    cli = Cli(tmp_path)

    result = cli("login", "--url", server, "--password-stdin", "admin", stdin="wrong password\n")

    line = assert_one_line_failure(result)
    assert "invalid username or password" in line
    assert "wrong password" not in result.stdout + result.stderr
    assert not cli.credentials.exists()


def test_unreachable_server_fails_in_one_line(tmp_path: Path) -> None:
    """Logging in to a port where nothing listens exits non-zero with one line and no traceback."""
    cli = Cli(tmp_path)

    result = cli(
        "login",
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "--password-stdin",
        "admin",
        stdin=ADMIN_PASSWORD + "\n",
    )

    assert "cannot reach" in assert_one_line_failure(result)


def test_logout_removes_the_credentials(admin_cli: Cli) -> None:
    """`tokensvc logout` deletes the credentials file; `whoami` then fails in one line."""
    assert admin_cli.credentials.exists()

    out = admin_cli.ok("logout")
    whoami = admin_cli("whoami")
    again = admin_cli.ok("logout")

    assert "logged out" in out
    assert not admin_cli.credentials.exists()
    assert "not logged in" in assert_one_line_failure(whoami)
    assert "not logged in" in again


# ---- acting with the stored token ------------------------------------------------------------------


def test_user_add_list_and_mint_through_the_api(
    server: str, admin_cli: Cli, tmp_path: Path
) -> None:
    """With the stored admin token: `user add bob`, `user list` shows bob, `token mint --subject bob` verifies."""
    admin_cli.ok("user", "add", "bob", "--password-stdin", stdin=BOB_PASSWORD + "\n")

    users = json.loads(admin_cli.ok("user", "list", "--json"))
    minted = json.loads(admin_cli.ok("token", "mint", "--subject", "bob", "--ttl", "10m", "--json"))
    status, verified = http("POST", server + "/v1/verify", {"token": minted["token"]})
    bob = Cli(tmp_path / "bob")
    bob.home.mkdir()
    bob.login(server, "bob", BOB_PASSWORD)

    assert "bob" in [u["name"] for u in users]
    assert all("password" not in json.dumps(u) for u in users)
    assert status == 200, verified
    assert verified["subject"] == "bob"
    expires = datetime.strptime(verified["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(expires - (datetime.now(UTC) + timedelta(minutes=10))) < timedelta(seconds=30)
    assert json.loads(bob.ok("whoami", "--json"))["subject"] == "bob"


def test_plain_users_cannot_administer(server: str, admin_cli: Cli, tmp_path: Path) -> None:
    """A logged-in plain user's `user add` and `token mint` fail with a one-line forbidden message."""
    admin_cli.ok("user", "add", "dora", "--password-stdin", stdin=BOB_PASSWORD + "\n")
    dora = Cli(tmp_path / "dora")
    dora.home.mkdir()
    dora.login(server, "dora", BOB_PASSWORD)

    add = dora("user", "add", "eve", "--password-stdin", stdin=BOB_PASSWORD + "\n")
    mint = dora("token", "mint", "--subject", "eve")

    assert "forbidden" in assert_one_line_failure(add)
    assert "forbidden" in assert_one_line_failure(mint)


def test_passwd_and_disable_revoke_the_users_stored_token(
    server: str, admin_cli: Cli, tmp_path: Path
) -> None:
    """`user passwd` and `user disable` kill the user's stored token; the new password and `--enable` bring them back."""
    admin_cli.ok("user", "add", "frank", "--password-stdin", stdin=BOB_PASSWORD + "\n")
    frank = Cli(tmp_path / "frank")
    frank.home.mkdir()
    frank.login(server, "frank", BOB_PASSWORD)

    admin_cli.ok("user", "passwd", "frank", "--password-stdin", stdin="a new orchid passphrase\n")
    after_passwd = frank("whoami")
    old_password = frank(
        "login", "--url", server, "--password-stdin", "frank", stdin=BOB_PASSWORD + "\n"
    )
    frank.login(server, "frank", "a new orchid passphrase")
    admin_cli.ok("user", "disable", "frank")
    after_disable = frank("whoami")
    while_disabled = frank(
        "login", "--url", server, "--password-stdin", "frank", stdin="a new orchid passphrase\n"
    )
    admin_cli.ok("user", "disable", "--enable", "frank")
    frank.login(server, "frank", "a new orchid passphrase")

    assert_one_line_failure(after_passwd)
    assert_one_line_failure(old_password)
    assert_one_line_failure(after_disable)
    assert "invalid username or password" in assert_one_line_failure(while_disabled)
    assert json.loads(frank.ok("whoami", "--json"))["subject"] == "frank"


def test_unlock_clears_a_lockout(server: str, admin_cli: Cli) -> None:
    """After 5 failed logins lock carol, `tokensvc user unlock carol` clears her counters and she logs in."""
    admin_cli.ok("user", "add", "carol", "--password-stdin", stdin=BOB_PASSWORD + "\n")
    admin_token = admin_cli.token(server)
    for _ in range(5):
        assert http("POST", server + "/v1/login", headers=basic_auth("carol", "wrong!"))[0] == 401
    before = http(
        "GET",
        server + "/v1/users/carol/lockout",
        headers={"Authorization": f"Bearer {admin_token}"},
    )[1]

    out = admin_cli.ok("user", "unlock", "carol")
    after = http(
        "GET",
        server + "/v1/users/carol/lockout",
        headers={"Authorization": f"Bearer {admin_token}"},
    )[1]
    status, _ = http("POST", server + "/v1/login", headers=basic_auth("carol", BOB_PASSWORD))

    assert before["failures"] == 5
    assert "cleared" in out
    assert after["failures"] == 0
    assert after["locked"] is False
    assert status == 200
