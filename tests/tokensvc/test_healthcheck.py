"""`tokensvc healthcheck`, the image's HEALTHCHECK: one command for plain HTTP and native TLS.

Each test runs a real `tokensvc serve` (embedded database, private HOME) and the check as a
subprocess with the same environment, as Docker runs it in the container.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ADMIN_PASSWORD
from tests.ports import free_port
from tests.tokensvc.test_cli_login import TOKENSVC, _clean_env


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `name` (a DNS name, not 127.0.0.1) and its key."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@contextmanager
def served(tmp_path: Path, **variables: str) -> Iterator[dict[str, str]]:
    """`tokensvc serve` with `variables`, once its port accepts; the environment it ran with.

    A free port can be taken by another test worker between the look and the bind (a CI run
    failed so): the server then says so and exits, and it starts again on other ports."""
    env = _clean_env(tmp_path)
    log = tmp_path / "server.log"
    for attempt in range(3):
        env.update(
            TOKENSVC_DATA_DIR=str(tmp_path / "data"),
            TOKENSVC_PORT=str(free_port()),
            TOKENSVC_ADMIN_PASSWORD=ADMIN_PASSWORD,
            TOKENSVC_PASSWORD_PROFILE="CHEAP_FOR_TESTS",
            TOKENSVC_VERIFY_PORT=str(free_port()),
            # Plain HTTP on 0.0.0.0 is what one of these tests checks the health of.
            TOKENSVC_ALLOW_INSECURE="test-password-profile,plain-http",
            **variables,
        )
        with log.open("wb") as out:
            proc = subprocess.Popen([TOKENSVC, "serve"], env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while b"Running on" not in log.read_bytes() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        if proc.poll() is None:
            break
        assert b"Address already in use" in log.read_bytes() and attempt < 2, log.read_text()
    try:
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENSVC, "healthcheck", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_plain_http_is_checked_on_the_configured_port(tmp_path: Path) -> None:
    """Without TLS: /healthz and /readyz answer, exit 0; the same check against a port nothing
    listens on exits 1 with one line naming the address."""
    # The image's setting: the check must map "every interface" to loopback.
    with served(tmp_path, TOKENSVC_HOST="0.0.0.0") as env:  # noqa: S104
        alive = check(env)
        ready = check(env, "--ready")
    nothing = check({**env, "TOKENSVC_PORT": str(free_port())})

    assert alive.returncode == 0, alive.stderr
    assert alive.stdout.strip() == "/healthz: ok"
    assert ready.returncode == 0 and ready.stdout.strip() == "/readyz: ready", ready
    assert nothing.returncode == 1
    assert nothing.stderr.startswith("Error: http://127.0.0.1:")
    assert len(nothing.stderr.strip().splitlines()) == 1


def test_native_tls_is_checked_with_the_configured_certificate(tmp_path: Path) -> None:
    """With TOKENSVC_TLS_CERT_FILE the check speaks https and trusts exactly that certificate,
    though it names a host other than 127.0.0.1: exit 0. Plain http against the TLS port, or
    another certificate (someone else answering), exit 1."""
    cert, key = self_signed(tmp_path, "tokensvc.example.com")
    other, _ = self_signed(tmp_path, "impostor.example.com")

    with served(tmp_path, TOKENSVC_TLS_CERT_FILE=str(cert), TOKENSVC_TLS_KEY_FILE=str(key)) as env:
        tls = check(env)
        plain = check({k: v for k, v in env.items() if not k.startswith("TOKENSVC_TLS_")})
        impostor = check({**env, "TOKENSVC_TLS_CERT_FILE": str(other)})

    assert tls.returncode == 0, tls.stderr
    assert tls.stdout.strip() == "/healthz: ok"
    assert plain.returncode == 1, plain
    assert impostor.returncode == 1, impostor
    assert "CERTIFICATE_VERIFY_FAILED" in impostor.stderr


def test_empty_variables_count_as_unset(tmp_path: Path) -> None:
    """As `tokensvc serve` reads them: an empty TOKENSVC_PORT or TOKENSVC_HOST is the default
    (127.0.0.1:8080), not a bad value (docs audit: it was `must be a port number, got ''`)."""
    env = {**_clean_env(tmp_path), "TOKENSVC_PORT": "", "TOKENSVC_HOST": ""}

    result = check(env, "--timeout", "1")

    assert "must be a port number" not in result.stderr, result.stderr
    # Whether something answers on 8080 here is not this test's business; where it asked is.
    assert result.returncode == 0 or result.stderr.startswith("Error: http://127.0.0.1:8080/"), (
        result.stderr
    )
