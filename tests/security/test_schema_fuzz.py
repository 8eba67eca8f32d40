"""openapi.yaml against the running service: schemathesis over every operation, every check.

The service is served as `tokensvc serve` serves it (the fast /v1/verify path included) on a
loopback port, in the embedded mode (SQLite, in-process lockout) and as in production
(PostgreSQL, Redis lockout). `schemathesis run` (the CLI, as a CI job would call it) tests
every operation of the spec the service serves at GET /openapi.yaml, in all four phases: the
spec's examples, coverage (boundary values, each constraint broken in turn, undeclared
methods), fuzzing, and stateful sequences along the spec's (and inferred) links. Every check
schemathesis has is on (schemathesis.toml): no 5xx; status code, content type, headers and body
as documented; valid data accepted, invalid data rejected; auth enforced (ignored_auth also
sends each secured request without and with a wrong token); an undeclared method answered 405
with an `Allow` naming exactly the documented ones; created resources there, deleted ones gone.
Any finding fails the test, and so CI (`./dev test`).

Credentials: an admin of the run's own (`fuzz-admin`) holding a service token, so that deleting
or revoking what the run finds in GET responses (the bootstrap `admin`, rotating root keys) never
ends its access; schemathesis_hooks.py redirects the few requests that would (its `before_call`),
and the test checks at the end that the token still works. HTTP Basic, where an operation
offers it, is that admin's password; operations that declare no security run without any.

Bounded: TOKENSVC_SCHEMATHESIS_EXAMPLES (default 10) is the most examples per operation and
phase, about a minute per deployment here, a few on a loaded 2-core machine. A longer run
raises it (100: some 5 minutes each) and picks another seed with TOKENSVC_SCHEMATHESIS_SEED (the
default is fixed, so that a CI failure reproduces):

    TOKENSVC_SCHEMATHESIS_EXAMPLES=100 TOKENSVC_SCHEMATHESIS_SEED=7 \\
        ./dev test tests/security/test_schema_fuzz.py -s
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

import pytest
import requests
import yaml
from aiohttp import web

from keystore import RotationPolicy
from tests.conftest import ADMIN_PASSWORD, make_config
from tokensvc.bakery.config import BakeryConfig, ThirdPartyKey
from tokensvc.operations.config import Config
from tokensvc.tokens.minting import MintedToken, MintRequest
from tokensvc.web.app import create_app
from tokensvc.web.verifyport import start_verify_listener, stop_verify_listener

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXAMPLES = int(os.environ.get("TOKENSVC_SCHEMATHESIS_EXAMPLES", "10"))
SEED = int(os.environ.get("TOKENSVC_SCHEMATHESIS_SEED", "20261206"))
FUZZ_ADMIN = "fuzz-admin"
# The one third-party discharger the service allows, with a configured key (nothing is fetched).
DISCHARGER = "https://discharger.example"
OPENAPI_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class ThreadedServer:
    """`app` served on a loopback port from an event loop in a thread, as `tokensvc serve` serves
    it (its verify listener on a second port), while the test's own thread waits on schemathesis."""

    def __init__(self, app: web.Application) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._listener: Any = None
        self.url = ""
        self.verify_url = ""

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)

    def __enter__(self) -> Self:
        self._thread.start()
        self._call(self._runner.setup())
        self._call(web.TCPSite(self._runner, "127.0.0.1", 0).start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._listener = self._call(start_verify_listener(self._runner.app, "127.0.0.1", 0))
        self.verify_url = f"http://127.0.0.1:{self._listener[0].sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._listener is not None:
            self._call(stop_verify_listener(*self._listener))
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def fuzz_config(data_dir: Path, **overrides: object) -> Config:
    """The test configuration with one allow-listed discharger; embedded unless overridden."""
    bakery = BakeryConfig(
        third_party_locations=(DISCHARGER,),
        third_party_keys=(ThirdPartyKey(DISCHARGER, public_key=secrets.token_bytes(32)),),
    )
    database_url = overrides.pop("database_url", None)  # None: the embedded mode
    return make_config(
        database_url=database_url,  # type: ignore[arg-type]
        data_dir=data_dir,
        bakery=bakery,
        **overrides,
    )


@pytest.fixture(params=["embedded", "postgres+redis"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, Config]]:
    """The service on a loopback port, embedded or as in production: its URL and configuration."""
    if request.param == "embedded":
        config = fuzz_config(tmp_path / "data")
        assert config.embedded and config.redis_url is None
    else:
        config = fuzz_config(
            tmp_path / "data",
            database_url=request.getfixturevalue("pg_url"),
            redis_url=request.getfixturevalue("redis_url"),
            redis_prefix=request.getfixturevalue("redis_prefix"),
        )
        assert not config.embedded
    with ThreadedServer(create_app(config)) as server:
        yield server.url, server.verify_url, config


def fuzz_identity(url: str, config: Config) -> dict[str, str]:
    """Create the run's admin through the API as the bootstrap admin, and its service token."""
    login = requests.post(url + "/v1/login", auth=("admin", ADMIN_PASSWORD), timeout=60)
    assert login.status_code == 200, login.text
    bootstrap = {"Authorization": "Bearer " + login.json()["token"]}
    password = secrets.token_urlsafe(24)
    created = requests.post(
        url + "/v1/users",
        json={"name": FUZZ_ADMIN, "password": password, "roles": ["admin"]},
        headers=bootstrap,
        timeout=60,
    )
    assert created.status_code == 201, created.text
    # A service token (its root key is its own, so no POST /v1/keys/{id}/revoke ends it) minted
    # by a local operator: a token minted through the API would die with its parent, a login
    # token on a rotating key that the fuzzer may revoke (revocation follows lineage).
    minted = asyncio.run(_local_service_token(config))
    return {
        "TOKENSVC_FUZZ_ADMIN": FUZZ_ADMIN,
        "TOKENSVC_FUZZ_PASSWORD": password,
        "TOKENSVC_FUZZ_BEARER": minted.token,
        "TOKENSVC_FUZZ_TOKEN_ID": minted.token_id,
    }


async def _local_service_token(config: Config) -> MintedToken:
    from tokensvc.composition import runtime
    from tokensvc.services.principals import LocalOperator

    async with runtime(config, serving=False) as built:
        request = MintRequest(FUZZ_ADMIN, timedelta(hours=6), admin=True, service=True)
        minted: MintedToken = await built.services.tokens.mint(LocalOperator("fuzz"), request)
        return minted


def hooks_environment(config: Config, call_log: Path) -> dict[str, str]:
    """What schemathesis_hooks.py reads besides the identity: the limits it keeps ttl within."""
    rotating = RotationPolicy(
        lifetime=config.key_lifetime, generate_interval=config.key_generate_interval
    ).max_token_ttl
    return {
        "TOKENSVC_FUZZ_CALL_LOG": str(call_log),
        "TOKENSVC_FUZZ_MAX_TTL": str(int(min(rotating, config.login_max_ttl).total_seconds())),
        "TOKENSVC_FUZZ_MAX_SERVICE_TTL": str(int(config.max_service_token_ttl.total_seconds())),
        "TOKENSVC_FUZZ_DISCHARGER": DISCHARGER,
        "SCHEMATHESIS_HOOKS": "tests.security.schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def documented_operations() -> set[str]:
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    return {
        f"{method.upper()} {path}"
        for path, item in spec["paths"].items()
        for method in item
        if method in OPENAPI_METHODS
    }


def test_every_operation_conforms_to_openapi(
    service: tuple[str, str, Config], tmp_path: Path
) -> None:
    """Every operation, fuzzed with every schemathesis check, answers as openapi.yaml says."""
    url, _, config = service
    identity = fuzz_identity(url, config)
    call_log = tmp_path / "calls.jsonl"
    env = {**os.environ, **identity, **hooks_environment(config, call_log)}
    command = [
        *(sys.executable, "-m", "schemathesis.cli"),
        *("--config-file", str(HERE / "schemathesis.toml")),
        # The file, not GET /openapi.yaml: schemathesis does not test where it read the spec from.
        *("run", str(ROOT / "openapi.yaml"), "--url", url),
        *("--max-examples", str(EXAMPLES), "--seed", str(SEED), "--no-color"),
    ]

    run = subprocess.run(
        command,
        check=False,  # its exit status is asserted below, after its report is printed
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900 + 60 * EXAMPLES,
    )
    still_admin = requests.get(
        url + "/v1/keys",
        headers={"Authorization": "Bearer " + identity["TOKENSVC_FUZZ_BEARER"]},
        timeout=60,
    )

    report = run.stdout[-30000:] + run.stderr[-5000:]
    print(report)  # shown with -s, and by pytest with the failure
    assert run.returncode == 0, report
    statuses: dict[str, Counter[int]] = {}
    for line in call_log.read_text().splitlines():
        call = json.loads(line)
        statuses.setdefault(call["operation"], Counter())[call["status"]] += 1
    for operation, counter in sorted(statuses.items()):
        print(f"  {operation}: {dict(sorted(counter.items()))}")
    # Every operation ran, and got past authentication at least once: the run's admin lived.
    assert documented_operations() - set(statuses) == set()
    assert {op for op, counter in statuses.items() if set(counter) <= {401}} == set()
    assert not any(status >= 500 for counter in statuses.values() for status in counter)
    assert still_admin.status_code == 200, still_admin.text


def test_the_verify_listener_conforms_to_openapi(
    service: tuple[str, str, Config], tmp_path: Path
) -> None:
    """POST /v1/verify on the verify listener, fuzzed with every schemathesis check, answers as
    openapi.yaml says: the listener parses and answers by itself, so it is fuzzed by itself."""
    url, verify_url, config = service
    identity = fuzz_identity(url, config)
    call_log = tmp_path / "calls.jsonl"
    env = {**os.environ, **identity, **hooks_environment(config, call_log)}
    command = [
        *(sys.executable, "-m", "schemathesis.cli"),
        *("--config-file", str(HERE / "schemathesis.toml")),
        *("run", str(ROOT / "openapi.yaml"), "--url", verify_url),
        *("--include-path-regex", "^/v1/verify$", "--phases", "examples,coverage,fuzzing"),
        *("--max-examples", str(EXAMPLES * 10), "--seed", str(SEED), "--no-color"),
    ]

    run = subprocess.run(
        command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )

    report = run.stdout[-30000:] + run.stderr[-5000:]
    print(report)
    assert run.returncode == 0, report
    calls = [json.loads(line) for line in call_log.read_text().splitlines()]
    statuses = Counter(call["status"] for call in calls)
    print(f"  POST /v1/verify on the listener: {dict(sorted(statuses.items()))}")
    # Bodies of every shape reached the verifier (401: a token was read and refused) and none
    # was a server error; what schemathesis checked of each answer is in its exit status.
    assert statuses[401] > 0 and statuses[400] > 0
    assert not any(status >= 500 for status in statuses)
