"""The real `tokensvc serve`, started with one bad setting for every variable the README lists:
one line on stderr naming the variable, what it accepts and what it got, exit status 2."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.tokensvc.test_cli_login import TOKENSVC, _clean_env

README = Path(__file__).resolve().parents[2] / "README.md"
FORKS = Path(__file__).with_name("serve_forks.py")
# Run as the installed executable itself; every other case in a fork (see `outcomes`).
REAL_PROCESS = frozenset({"PROMETHEUS_MULTIPROC_DIR", "TOKENSVC_DATABASE_URL"})
SECRET = "hunter2"  # in every secret's bad value: it must never reach stderr

# A bad value for every variable of the README's configuration table (the test below fails when
# the table gains a variable that has no case here). "{missing}" is a path that does not exist,
# "{file}" an existing file that is not a directory.
BAD_VALUES = {
    "TOKENSVC_HOST": "exa mple",
    "TOKENSVC_PORT": "http",
    "TOKENSVC_VERIFY_PORT": "on",
    "TOKENSVC_KEK_PREVIOUS": f"{SECRET}-not-base64!",
    "TOKENSVC_KEK_PREVIOUS_FILE": "{missing}",
    "TOKENSVC_DATA_DIR": "{file}",
    "TOKENSVC_DATABASE_URL": f"mysql://app:{SECRET}@db/app",
    "TOKENSVC_DATABASE_URL_FILE": "{missing}",
    "TOKENSVC_REDIS_URL": f"http://:{SECRET}@cache:6379",
    "TOKENSVC_REDIS_URL_FILE": "{missing}",
    "TOKENSVC_KEK": f"{SECRET}-not-base64!",
    "TOKENSVC_KEK_FILE": "{missing}",
    "TOKENSVC_ADMIN_PASSWORD": SECRET,  # 7 characters: too short
    "TOKENSVC_ADMIN_PASSWORD_FILE": "{missing}",
    "TOKENSVC_PEPPER": SECRET,  # 7 bytes: too short
    "TOKENSVC_PEPPER_FILE": "{missing}",
    "TOKENSVC_MFA_REQUIRED_ROLES": "Admin!",
    "TOKENSVC_HASH_CONCURRENCY": "0",
    "TOKENSVC_HASH_TRUSTED_RESERVE": "-1",
    "TOKENSVC_HASH_UNTRUSTED_SHARE": "0",
    "TOKENSVC_PASSWORD_MIN_LENGTH": "7",
    "TOKENSVC_PASSWORD_MIN_LENGTH_MFA": "65",
    "TOKENSVC_PASSWORD_PROFILE": "strong",
    "TOKENSVC_KEY_LIFETIME": "soon",
    "TOKENSVC_KEY_GENERATE_INTERVAL": "-1h",
    "TOKENSVC_KEY_MAINTENANCE_INTERVAL": "1 minute",
    "TOKENSVC_DEFAULT_TOKEN_TTL": "0",
    "TOKENSVC_LOGIN_DEFAULT_TTL": "8 hours",
    "TOKENSVC_LOGIN_MAX_TTL": "1y",
    "TOKENSVC_LOCATION": "two words",
    "TOKENSVC_MAX_TOKEN_BYTES": "16k",
    "TOKENSVC_MAX_CAVEATS": "-5",
    "TOKENSVC_MAX_DISCHARGES": "many",
    "TOKENSVC_MAX_BODY_BYTES": "1e6",
    "TOKENSVC_MAX_CONCURRENT": "0",
    "TOKENSVC_MAX_QUEUE": "lots",
    "TOKENSVC_LOGIN_MAX_CONCURRENT": "0",
    "TOKENSVC_LOGIN_MAX_QUEUE": "3.5",
    "TOKENSVC_LOGIN_SHED_DELAY_MS": "0.5s",
    "TOKENSVC_QUEUE_TIMEOUT": "2 s",
    "TOKENSVC_TRUSTED_PROXIES": "10.0.0.0/33",
    "TOKENSVC_AUTO_MIGRATE": "ture",
    "TOKENSVC_REDIS_PREFIX": "has space",
    "TOKENSVC_VERIFY_CACHE_ENTRIES": "-1",
    "TOKENSVC_VERIFY_PROCESS": "enabled",
    "TOKENSVC_MAX_SERVICE_TOKEN_TTL": "forever",
    "TOKENSVC_REVOCATION_REFRESH_INTERVAL": "0s",
    "TOKENSVC_REVOCATION_STALE_AFTER": "0s",
    "TOKENSVC_USAGE_FLUSH_INTERVAL": "1min",
    "TOKENSVC_VERDICT_MAX_CACHE_TTL": "long",
    "TOKENSVC_REVOCATION_STREAM_HEARTBEAT": "0s",
    "TOKENSVC_REVOCATION_STREAM_MAX_SUBSCRIBERS": "0",
    "TOKENSVC_REVOCATION_STREAM_MAX_PER_SUBJECT": "-1",
    "TOKENSVC_REVOCATION_EVENT_RETENTION": "forever",
    "TOKENSVC_TOKEN_RETENTION": "a month",
    "TOKENSVC_AUDIT_RETENTION": "1h",
    "TOKENSVC_BAKERY_PREFIX": "bakery/",
    "TOKENSVC_DISCHARGE_TTL": "soon",
    "TOKENSVC_THIRD_PARTY_LOCATIONS": "ftp://idm.example",
    "TOKENSVC_THIRD_PARTY_KEYS": "https://idm.example not-base64!",
    "TOKENSVC_THIRD_PARTY_INFO_TTL": "soon",
    "TOKENSVC_LOG_LEVEL": "verbose",
    "TOKENSVC_TLS_CERT_FILE": "{missing}",
    "TOKENSVC_TLS_KEY_FILE": "{missing}",
    "TOKENSVC_ALLOW_INSECURE": "everything",
    "PROMETHEUS_MULTIPROC_DIR": "{missing}",
}
# What else a case needs so that its variable is the one at fault.
CONTEXT = {
    "TOKENSVC_TLS_CERT_FILE": {"TOKENSVC_TLS_KEY_FILE": "{file}"},
    "TOKENSVC_TLS_KEY_FILE": {"TOKENSVC_TLS_CERT_FILE": "{file}"},
}


def documented_variables() -> list[str]:
    """Every variable named in the first column of the README's configuration table."""
    text = README.read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    names: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        found = re.findall(r"`([A-Z][A-Z0-9_]+)`", first)
        names += found
        if "(`_FILE`)" in first:
            names += [name + "_FILE" for name in found]
    return names


@dataclass(frozen=True)
class Outcome:
    value: str
    status: int | None
    stderr: str


def _case(name: str, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The bad value of `name` and the environment `tokensvc serve` gets for it."""
    home = tmp_path / name
    home.mkdir(parents=True)
    (home / "file").write_text("not what was asked for\n")
    paths = {"{missing}": str(home / "missing" / "x"), "{file}": str(home / "file")}
    env = _clean_env(home)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # A free port: if a bad value slipped through, the server would start, not take 8080.
    env.update(TOKENSVC_DATA_DIR=str(home / "data"), TOKENSVC_PORT=str(free_port()))
    value = paths.get(BAD_VALUES[name], BAD_VALUES[name])
    for other, setting in CONTEXT.get(name, {}).items():
        env[other] = paths.get(setting, setting)
    env[name] = value
    return value, env


def _serve(name: str, tmp_path: Path) -> Outcome:
    """The installed `tokensvc serve`, in a process of its own."""
    value, env = _case(name, tmp_path)
    try:
        done = subprocess.run(
            [TOKENSVC, "serve"], env=env, check=False, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return Outcome(value, None, stderr)
    return Outcome(value, done.returncode, done.stderr)


def _serve_forked(names: list[str], tmp_path: Path) -> dict[str, Outcome]:
    """`tokensvc serve` for each name, each a fork of one process that imported the command line
    once (tests/tokensvc/serve_forks.py): the same entry point and environment as the installed
    command, without paying Python's start-up 70 times."""
    cases = {name: _case(name, tmp_path) for name in names}
    done = subprocess.run(
        [sys.executable, str(FORKS)],
        input=json.dumps([{"env": env, "argv": ["serve"]} for _, env in cases.values()]),
        env=_clean_env(tmp_path),
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = json.loads(done.stdout)
    return {
        name: Outcome(value, result["status"], result["stderr"])
        for (name, (value, _)), result in zip(cases.items(), results, strict=True)
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """`tokensvc serve` once per documented variable with its bad value. The installed executable
    itself for the cases in REAL_PROCESS (PROMETHEUS_MULTIPROC_DIR is checked when the command
    line is imported, before any fork could change it), forks of one process for the rest."""
    root = tmp_path_factory.mktemp("config-cli")
    names = sorted(set(documented_variables()) & set(BAD_VALUES))
    found = _serve_forked([name for name in names if name not in REAL_PROCESS], root)
    found.update({name: _serve(name, root) for name in names if name in REAL_PROCESS})
    return found


def test_a_forked_serve_answers_as_the_executable_does(tmp_path: Path) -> None:
    """The forks stand in for the executable: for the same bad settings, the same answers."""
    names = ["TOKENSVC_KEK", "TOKENSVC_PORT", "TOKENSVC_TRUSTED_PROXIES"]
    forked = _serve_forked(names, tmp_path / "forked")

    for name in names:
        real = _serve(name, tmp_path / "real")
        assert (forked[name].status, forked[name].stderr) == (real.status, real.stderr)
        assert real.status == 2


def test_every_documented_variable_has_a_bad_value_case() -> None:
    """The README's table and the cases below name the same variables, so none goes unchecked."""
    documented = documented_variables()

    assert len(documented) > 40
    assert set(documented) == set(BAD_VALUES)


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_a_bad_value_is_one_line_naming_the_variable(
    name: str, outcomes: dict[str, Outcome]
) -> None:
    """A bad value stops `tokensvc serve` with status 2 and one stderr line: the variable, what it
    accepts, what it got (a secret's value never shown), no traceback."""
    outcome = outcomes[name]

    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert outcome.status == 2, outcome.stderr
    assert len(lines) == 1, outcome.stderr
    assert name in lines[0]
    assert "Traceback" not in outcome.stderr
    assert SECRET not in outcome.stderr
    if SECRET not in outcome.value and "not both" not in lines[0]:
        assert outcome.value in lines[0] or repr(outcome.value) in lines[0]
    assert "expected" in lines[0] or "must" in lines[0]


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    """A taken port is one line saying which port and what to do, no traceback."""
    env = _clean_env(tmp_path)
    env["TOKENSVC_DATA_DIR"] = str(tmp_path / "data")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [TOKENSVC, "serve", "--port", str(port)],
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )

    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1
    assert len(lines) == 1, done.stderr
    assert f"port {port}" in lines[0] and "in use" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_public_host_from_the_command_line_is_checked_too(tmp_path: Path) -> None:
    """`serve --host 0.0.0.0` without TLS is refused like TOKENSVC_HOST=0.0.0.0, naming --host."""
    env = _clean_env(tmp_path)
    env["TOKENSVC_DATA_DIR"] = str(tmp_path / "data")

    done = subprocess.run(
        [TOKENSVC, "serve", "--host", "0.0.0.0", "--port", str(free_port())],  # noqa: S104
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "--host=0.0.0.0" in done.stderr and "plain-http" in done.stderr
