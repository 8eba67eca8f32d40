"""The CI step of issue 20: tokensvc-client installs into a fresh virtual environment with its own
light dependencies only, and decides there with the server's `caveats` package."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run in the fresh venv, from an empty directory and with -I, so nothing of the checkout leaks in.
PROBE = """
import importlib.util, time
import caveats, tokensvc_client, tokensvc_client.asgi, tokensvc_client.web
from caveats import Context, Operations, Subject, decide, encode, Policy

heavy = [m for m in ("tokensvc", "keystore", "sqlalchemy", "asyncpg", "argon2", "redis", "aiosqlite")
         if importlib.util.find_spec(m) is not None]
assert not heavy, heavy
assert "site-packages" in caveats.__file__, caveats.__file__
policy = Policy([encode(Subject("alice")), encode(Operations(("read",)))])
assert decide(policy, Context(time.time(), "read")) is None
print("denied:", decide(policy, Context(time.time(), "write")).reason)
"""


def test_client_installs_alone_in_a_fresh_venv(tmp_path: Path) -> None:
    """pip installs ./client with aiohttp and orjson only; the wheel carries caveats and decides."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"

    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(ROOT / "client")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    probe = subprocess.run(
        [python, "-I", "-c", PROBE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()

    assert probe.returncode == 0, probe.stderr
    assert "denied: operation" in probe.stdout
    for heavy in ("sqlalchemy", "asyncpg", "argon2-cffi", "redis", "alembic", "tokensvc=="):
        assert heavy not in listed, listed
    assert "tokensvc-client==" in listed or "tokensvc_client==" in listed


SIDE_BY_SIDE = """
import caveats, tokensvc_client
import tokensvc.tokens.verification as verification
from caveats import decide
assert "site-packages" in caveats.__file__, caveats.__file__
# One caveats package for both: the server's Verifier and the client decide with one function.
assert verification.decide is decide
print("one caveats:", caveats.__file__)
"""


def test_server_and_client_install_side_by_side(tmp_path: Path) -> None:
    """The server and the client in one venv (both wheels carry caveats/) share one caveats package."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"

    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            str(ROOT / "requirements-lock.txt"),
            str(ROOT),
            str(ROOT / "client"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    probe = subprocess.run(
        [python, "-I", "-c", SIDE_BY_SIDE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert probe.returncode == 0, probe.stderr
    assert "one caveats:" in probe.stdout
