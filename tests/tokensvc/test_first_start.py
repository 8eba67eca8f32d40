"""The README's first command, for real: `tokensvc serve` with no configuration at all.

A subprocess with a private HOME and XDG_DATA_HOME and no TOKENSVC_* variable: it must create its
data directory, KEK and SQLite database, print the generated admin password once, and serve a
login → mint → verify round trip over real HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Callable

SCRIPT = Path(sys.executable).parent / "tokensvc"
PASSWORD_LINE = re.compile(r"created user 'admin' with password: (\S+)")
START_TIMEOUT = 30.0


def script() -> str:
    if SCRIPT.exists():
        return str(SCRIPT)
    found = shutil.which("tokensvc")
    assert found, "the tokensvc console script is not installed"
    return found


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    stderr_path: Path
    stdout_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def request(
    url: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """One HTTP request; the status and JSON body, for errors too."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"tokensvc serve exited with {server.process.returncode}:\n{server.stderr}")
        try:
            if request(server.url + "/healthz")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"tokensvc serve did not answer /healthz within {START_TIMEOUT}s:\n{server.stderr}")


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment minus every TOKENSVC_* variable, with a private home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CONFIG_HOME=str(home / ".config"),
    )
    return env


@pytest.fixture
def start(bare_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start `tokensvc serve --port N` (as often as asked); every server is stopped afterwards."""
    servers: list[Server] = []

    def run() -> Server:
        port = free_port()
        n = len(servers)
        stdout_path, stderr_path = tmp_path / f"stdout{n}", tmp_path / f"stderr{n}"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                [script(), "serve", "--port", str(port), "--verify-port", str(free_port())],
                env=bare_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        server = Server(process, f"http://127.0.0.1:{port}", stderr_path, stdout_path)
        servers.append(server)
        wait_until_serving(server)
        return server

    yield run
    for server in servers:
        server.stop()


def basic(username: str, password: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    }


def test_first_start_without_configuration_serves_a_login_mint_verify_round_trip(
    start: Callable[[], Server], bare_env: dict[str, str]
) -> None:
    """With no configuration, `tokensvc serve` prints an admin password once, and login → mint → verify works over HTTP."""
    server = start()
    found = PASSWORD_LINE.search(server.stderr)
    assert found, server.stderr
    password = found.group(1)

    login_status, login = request(
        server.url + "/v1/login", method="POST", headers=basic("admin", password)
    )
    admin = {"Authorization": f"Bearer {login.get('token')}"}
    mint_status, minted = request(
        server.url + "/v1/tokens",
        method="POST",
        body={"subject": "alice", "ttl": "1h"},
        headers=admin,
    )
    verify_status, verified = request(
        server.url + "/v1/verify", method="POST", body={"token": minted.get("token")}
    )

    assert login_status == 200, login
    assert mint_status == 201, minted
    assert verify_status == 200, verified
    assert verified["subject"] == "alice" and verified["valid"] is True
    assert server.stderr.count(password) == 1
    assert password not in server.stdout
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in server.stderr, server.stderr


def test_first_start_keeps_its_secrets_private_and_a_restart_reuses_them(
    start: Callable[[], Server], bare_env: dict[str, str]
) -> None:
    """The data dir is 0700 and the generated KEK file 0600; a restart prints no new password and the first one still works."""
    first = start()
    password = PASSWORD_LINE.search(first.stderr).group(1)  # type: ignore[union-attr]
    first.stop()
    data_dir = Path(bare_env["XDG_DATA_HOME"]) / "tokensvc"
    kek = data_dir / "kek"

    second = start()
    login_status, login = request(
        second.url + "/v1/login", method="POST", headers=basic("admin", password)
    )

    assert kek.is_file(), sorted(p.name for p in data_dir.iterdir())
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert PASSWORD_LINE.search(second.stderr) is None, second.stderr
    assert password not in second.stderr
    assert login_status == 200, login
    verify_status, _ = request(
        second.url + "/v1/verify", method="POST", body={"token": login["token"]}
    )
    assert verify_status == 200


@pytest.mark.parametrize("form", ["sqlite:///{}", "sqlite+aiosqlite:///file:{}?uri=true"])
def test_a_sqlite_file_named_by_url_is_private_too(
    bare_env: dict[str, str], tmp_path: Path, form: str
) -> None:
    """Red team (helper-34): with TOKENSVC_DATABASE_URL naming a SQLite file, `tokensvc migrate`
    under umask 022 left the file (and its -wal, -shm) 0644, password hashes and sealed keys
    readable by every local user. Only the default file was made owner-only."""
    database = tmp_path / "elsewhere" / "tokens.db"
    database.parent.mkdir()
    # Also the URI form (red team, helper-40: it was left to SQLite, 0644).
    env = {**bare_env, "TOKENSVC_DATABASE_URL": form.format(database)}

    migrated = subprocess.run(
        [script(), "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0o022),  # the umask is the point of the test
        check=False,
    )

    assert migrated.returncode == 0, migrated.stderr
    made = sorted(database.parent.iterdir())
    assert database in made, made
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {
        p.name: oct(0o600) for p in made
    }


def test_sigterm_lets_a_request_in_flight_finish(
    start: Callable[[], Server], bare_env: dict[str, str]
) -> None:
    """Red team (helper-39): SIGTERM to `tokensvc serve` cancelled every task at once, the
    handlers in flight included (logged 499, the client cut off), though the README says they
    drain. A mint held up by the database (a write lock taken here) when the signal arrives
    must still commit and answer once the lock goes, and the server then exit 0."""
    import sqlite3
    import threading

    server = start()
    password = PASSWORD_LINE.search(server.stderr).group(1)  # type: ignore[union-attr]
    _, login = request(server.url + "/v1/login", method="POST", headers=basic("admin", password))
    database = Path(bare_env["XDG_DATA_HOME"]) / "tokensvc" / "tokensvc.db"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the one write lock: the mint's transaction waits for it
    answers: list[tuple[int, dict[str, Any]]] = []

    def mint() -> None:
        answers.append(
            request(
                server.url + "/v1/tokens",
                method="POST",
                body={"subject": "batch", "ttl": "1h"},
                headers={"Authorization": f"Bearer {login['token']}"},
            )
        )

    minting = threading.Thread(target=mint)
    minting.start()
    time.sleep(1.5)  # the mint is waiting on the lock (SQLite waits up to 5 s for it)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # the server is shutting down, the mint still waiting
    holder.execute("ROLLBACK")
    holder.close()
    minting.join(timeout=15)

    assert answers and answers[0][0] == 201, (answers, server.stderr)
    assert server.process.wait(timeout=15) == 0, server.stderr
