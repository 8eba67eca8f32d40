"""The bootstrap admin is announced once per service, not once per process: `tokensvc serve
--workers 2` runs three processes (two verify workers and the lane), and printed three times."""

from __future__ import annotations

import base64
import re
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.ports import free_port
from tests.tokensvc.test_cli_login import TOKENSVC, _clean_env

PASSWORD_LINE = re.compile(r"created user 'admin' with password: (\S+)")
NO_ADMIN = "no admin user exists"


@contextmanager
def serving_two_workers(env: dict[str, str], log: Path) -> Iterator[str]:
    """`tokensvc serve --workers 2` with `env`, until every process answered; its base URL."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                TOKENSVC,
                "serve",
                "--port",
                str(port),
                "--verify-port",
                str(free_port()),
                "--workers",
                "2",
            ],
            env=env,
            stdout=out,
            stderr=out,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 40
            # /metrics is served by the lane: once it answers, all three processes have started.
            while True:
                try:
                    with urllib.request.urlopen(base + "/metrics", timeout=5):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("server did not start: " + log.read_text()) from None
                    time.sleep(0.2)
            time.sleep(2.0)  # every process has run its start-up by now
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _login(base: str, password: str) -> int:
    basic = base64.b64encode(f"admin:{password}".encode()).decode()
    request = urllib.request.Request(
        base + "/v1/login", method="POST", headers={"Authorization": "Basic " + basic}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_generated_admin_password_is_printed_once_and_is_the_real_one(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """Embedded mode, no admin password, two workers: exactly one process prints a generated
    password (the one whose insert won), and that password logs in."""
    env = _clean_env(tmp_path)
    env.update(
        TOKENSVC_DATA_DIR=str(tmp_path / "data"),
        TOKENSVC_REDIS_URL=redis_url,
        TOKENSVC_REDIS_PREFIX=redis_prefix,
        TOKENSVC_PASSWORD_PROFILE="CHEAP_FOR_TESTS",
        TOKENSVC_ALLOW_INSECURE="test-password-profile",
    )
    log = tmp_path / "server.log"

    with serving_two_workers(env, log) as base:
        printed = PASSWORD_LINE.findall(log.read_text())
        status = _login(base, printed[0]) if printed else None

    assert len(printed) == 1, log.read_text()
    assert status == 200


def test_a_missing_admin_is_warned_about_once(
    tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """PostgreSQL, no TOKENSVC_ADMIN_PASSWORD, two workers: one warning that no admin exists,
    not one per process."""
    env = _clean_env(tmp_path)
    env.update(
        TOKENSVC_DATABASE_URL=pg_url,
        TOKENSVC_KEK=base64.b64encode(secrets.token_bytes(32)).decode(),
        TOKENSVC_REDIS_URL=redis_url,
        TOKENSVC_REDIS_PREFIX=redis_prefix,
        TOKENSVC_PASSWORD_PROFILE="CHEAP_FOR_TESTS",
        TOKENSVC_ALLOW_INSECURE="test-password-profile",
    )
    log = tmp_path / "server.log"

    with serving_two_workers(env, log):
        text = log.read_text()

    assert text.count(NO_ADMIN) == 1, text
