"""The second factor end to end through the CLI, against two `tokensvc serve` replicas that share
PostgreSQL and Redis: enrol (QR printed), log in with a code, the same code refused a second
time on the other replica, a recovery code works once, an admin resets the factor."""

from __future__ import annotations

import base64
import secrets
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyotp

from tests.conftest import ADMIN_PASSWORD
from tests.ports import free_port
from tests.tokensvc.test_cli_login import TOKENSVC, Cli, _clean_env, http, stop

ALICE = "her long lantern passphrase"


@contextmanager
def replica(home: Path, env: dict[str, str]) -> Iterator[str]:
    """One `tokensvc serve` with `env` on free ports; its base URL. Always terminated."""
    port = free_port()
    log_path = home / f"server-{port}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [TOKENSVC, "serve", "--port", str(port), "--verify-port", str(free_port())],
        env={**_clean_env(home), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http("GET", url + "/healthz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "tokensvc serve did not come up:\n" + log_path.read_text()[-3000:]
                )
            time.sleep(0.1)
        yield url
    finally:
        stop(proc)
        log.close()


def run(
    cli: Cli, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`tokensvc ARGS` as `cli`'s user, with extra environment variables."""
    return subprocess.run(
        [TOKENSVC, *args],
        check=False,
        input=stdin,
        env={**cli.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cli.home,
    )


def enroll(cli: Cli, url: str, password: str) -> tuple[str, str]:
    """`tokensvc mfa enroll --password-stdin`, given the password, then answering its prompt
    with the app's first code; (stdout, secret)."""
    proc = subprocess.Popen(
        [TOKENSVC, "mfa", "enroll", "--url", url, "--password-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env,
        cwd=cli.home,
    )
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdin.write(password + "\n")
    proc.stdin.flush()
    shown = []
    while True:
        line = proc.stdout.readline()
        assert line, "enroll ended before showing the secret"
        shown.append(line)
        if line.startswith("secret"):
            break
    secret = line.rsplit(":", 1)[1].strip()
    out, err = proc.communicate(pyotp.TOTP(secret).now() + "\n", timeout=60)
    assert proc.returncode == 0, (out, err)
    return "".join(shown) + out, secret


def test_enrol_log_in_replay_refused_on_another_replica_recovery_once(
    tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """The whole CLI story across two replicas sharing PostgreSQL and Redis."""
    env = {
        "TOKENSVC_DATABASE_URL": pg_url,
        "TOKENSVC_REDIS_URL": redis_url,
        "TOKENSVC_REDIS_PREFIX": redis_prefix,
        "TOKENSVC_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
        "TOKENSVC_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "TOKENSVC_PASSWORD_PROFILE": "CHEAP_FOR_TESTS",
        "TOKENSVC_ALLOW_INSECURE": "test-password-profile",
        "TOKENSVC_VERIFY_PROCESS": "off",
        "TOKENSVC_DATA_DIR": str(tmp_path / "data"),
    }
    admin, alice = Cli(tmp_path / "admin"), Cli(tmp_path / "alice")
    for cli in (admin, alice):
        cli.home.mkdir()
    with replica(tmp_path, env) as one, replica(tmp_path, env) as two:
        admin.login(one, "admin", ADMIN_PASSWORD)
        admin.ok("user", "add", "alice", "--url", one, "--password-stdin", stdin=ALICE + "\n")
        alice.login(one, "alice", ALICE)

        shown, secret = enroll(alice, one, ALICE)
        status = alice.ok("mfa", "status", "--url", one)
        # The next step's code (the activation spent this one); ±1 step is accepted.
        otp = pyotp.TOTP(secret).at(time.time() + 30)
        first = alice("login", "--url", one, "--password-stdin", "alice", stdin=f"{ALICE}\n{otp}\n")
        replayed = alice(
            "login", "--url", two, "--password-stdin", "alice", stdin=f"{ALICE}\n{otp}\n"
        )
        codes = [line.strip() for line in shown.splitlines() if line.startswith("  ")]
        with_recovery = alice(
            "login",
            "--url",
            two,
            "--password-stdin",
            "--otp",
            codes[0],
            "alice",
            stdin=ALICE + "\n",
        )
        recovery_again = run(
            alice,
            "login",
            "--url",
            one,
            "--password-stdin",
            "alice",
            stdin=ALICE + "\n",
            env={"TOKENSVC_OTP": codes[0]},
        )
        left = alice.ok("mfa", "recovery-codes", "--url", two)
        reset = admin.ok("user", "mfa-reset", "alice", "--yes", "--url", one)
        password_only = alice(
            "login", "--url", two, "--password-stdin", "alice", stdin=ALICE + "\n"
        )

    assert "otpauth://totp/" in shown and ("█" in shown or "▀" in shown)  # the QR code
    assert len(codes) == 10
    assert "second factor active" in status
    assert first.returncode == 0 and "with a second factor" in first.stdout, first.stderr
    assert replayed.returncode != 0 and "Traceback" not in replayed.stderr
    assert "wrong code" in replayed.stderr  # refused at the code, after a right password
    assert with_recovery.returncode == 0, with_recovery.stderr
    assert recovery_again.returncode != 0 and "second factor" in recovery_again.stderr
    assert "9 recovery codes left" in left
    assert "removed" in reset
    assert password_only.returncode == 0 and "second factor" not in password_only.stdout
