"""openapi.yaml against the live service: schemathesis on every operation, bounded examples."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any, Self

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import ADMIN_PASSWORD
from tokensvc.operations.config import Config
from tokensvc.web.app import create_app

MAX_EXAMPLES = 25


class ThreadedServer:
    """`app` served on 127.0.0.1 from a private event loop in a thread (schemathesis is sync)."""

    def __init__(self, app: web.Application) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def __enter__(self) -> Self:
        self._thread.start()
        self._call(self._runner.setup())
        self._call(web.TCPSite(self._runner, "127.0.0.1", 0).start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def live_server(pg_config: Config) -> Iterator[str]:
    with ThreadedServer(create_app(pg_config)) as server:
        yield server.url


def test_every_operation_conforms_to_openapi(live_server: str) -> None:
    """Generated valid and invalid requests: no server error, every response as the spec says."""
    login = requests.post(live_server + "/v1/login", auth=("admin", ADMIN_PASSWORD), timeout=30)
    assert login.status_code == 200, login.text
    bearer = "Bearer " + login.json()["token"]
    basic = requests.auth._basic_auth_str("admin", ADMIN_PASSWORD)
    schema = schemathesis.openapi.from_path("openapi.yaml")
    session = requests.Session()
    statuses: dict[str, Counter[int]] = {}
    cases = 0
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]

    def run_cases(operation: Any, mode: GenerationMode, seen: Counter[int]) -> None:
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal cases
            if (case.path_parameters or {}).get("name", "").strip().lower() == "admin":
                return  # changing or deleting the admin would revoke the token used here
            cases += 1
            headers = dict(case.headers or {})
            # Authenticated as the admin, so the handlers behind the auth check are reached.
            headers["Authorization"] = basic if operation.path == "/v1/login" else bearer
            response = case.call(base_url=live_server, session=session, headers=headers)
            seen[response.status_code] += 1
            try:
                case.validate_response(
                    response, checks=[not_a_server_error, response_schema_conformance]
                )
            except Exception as exc:  # noqa: BLE001 - collected, reported together below
                failures.append(f"{case.method} {case.path} -> {response.status_code}: {exc}")

        try:
            run()
        except Unsatisfiable:
            # Nothing to make invalid (no parameters, no body): only positive cases exist.
            assert mode is GenerationMode.NEGATIVE

    for operation in operations:
        seen = statuses.setdefault(f"{operation.method.upper()} {operation.path}", Counter())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run_cases(operation, mode, seen)

    print(f"\nschemathesis: {len(operations)} operations, {cases} cases")
    for label, counter in statuses.items():
        print(f"  {label}: {dict(sorted(counter.items()))}")
    for failure in failures[:10]:
        print("FAILURE", failure[:3000])
    assert len(operations) >= 7
    assert failures == []
    assert not any(status >= 500 for counter in statuses.values() for status in counter)
