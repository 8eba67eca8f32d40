"""The command line starts light: a command that talks to the service over HTTP loads neither the
stores nor the server (SQLAlchemy, redis, aiohttp, argon2...), which were 2 of the 2.5 CPU
seconds of every `tokensvc` call; `--local` commands and `serve` load them when they run."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "redis",
    "aiohttp",
    "argon2",
    "keystore",
    "prometheus_client",
    "segno",
    "structlog",
    "tokensvc.services",
    "tokensvc.web",
    "tokensvc.composition",
)

PROBE = f"""
import sys
from click.testing import CliRunner
import tokensvc.cli
# Parsing a command's options must not load them either (only running it may).
result = CliRunner().invoke(tokensvc.cli.main, ["token", "mint", "--help"])
assert result.exit_code == 0, result.output
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(",".join(loaded) or "none")
"""


def test_importing_the_cli_loads_no_store_and_no_server() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False, timeout=60
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "none"


def test_a_keystore_error_is_still_one_line() -> None:
    """fail_on_errors no longer imports keystore, but still turns its errors into one line."""
    import click
    import pytest

    from keystore import KeystoreError
    from tokensvc.cli.errors import fail_on_errors

    @fail_on_errors
    def broken() -> None:
        raise KeystoreError("the KEK does not open this key")

    with pytest.raises(click.ClickException, match="keystore: the KEK does not open this key"):
        broken()

    @fail_on_errors
    def other() -> None:
        raise LookupError("not ours")

    with pytest.raises(LookupError):
        other()
