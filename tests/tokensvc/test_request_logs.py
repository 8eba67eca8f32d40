"""One structured JSON line per request, with a request id that is accepted, generated and echoed."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tests.security.edges_support import captured_logs
from tokensvc.web.app import create_app


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Everything logged during the test, as tokensvc's JSON lines, at DEBUG; restored after."""
    with captured_logs() as buffer:
        yield buffer


def lines(buffer: io.StringIO, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON objects logged so far, optionally only those with this `event`."""
    parsed = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    return [p for p in parsed if event is None or p.get("event") == event]


@pytest.fixture
async def http(aiohttp_client: Any, sqlite_url: str, data_dir: Path, clock: FakeClock) -> Any:
    config = make_config(database_url=sqlite_url, data_dir=data_dir)
    return await aiohttp_client(create_app(config, clock=clock))


async def test_each_request_is_one_line_with_the_agreed_fields(
    http: Any, json_logs: io.StringIO
) -> None:
    """A request is logged once: method, path without its query, route, status, duration, IP, id."""

    resp = await http.get("/healthz?probe=1&token=secret-in-query")

    (line,) = lines(json_logs, "http_request")
    assert line["method"] == "GET"
    assert line["path"] == "/healthz"
    assert line["route"] == "/healthz"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["client_ip"] == "127.0.0.1"
    assert line["request_id"] == resp.headers["X-Request-ID"]
    assert line["logger"] == "tokensvc.access" and line["level"] == "info"
    assert "secret-in-query" not in json_logs.getvalue()


async def test_a_plain_incoming_request_id_is_kept_and_echoed(
    http: Any, json_logs: io.StringIO
) -> None:
    """A caller's X-Request-ID of safe characters is used in the log and echoed back."""

    resp = await http.get("/healthz", headers={"X-Request-ID": "edge-42.abc"})

    assert resp.headers["X-Request-ID"] == "edge-42.abc"
    assert lines(json_logs, "http_request")[0]["request_id"] == "edge-42.abc"


@pytest.mark.parametrize("given", ["x" * 200, "has space", 'quote"s', "<script>", ""])
async def test_an_unsafe_request_id_is_replaced(
    http: Any, json_logs: io.StringIO, given: str
) -> None:
    """An overlong or odd X-Request-ID never reaches the log; a fresh 32-hex id is used instead."""

    resp = await http.get("/healthz", headers={"X-Request-ID": given})

    echoed = resp.headers["X-Request-ID"]
    assert echoed != given and len(echoed) == 32 and int(echoed, 16) >= 0
    assert lines(json_logs, "http_request")[0]["request_id"] == echoed


async def test_errors_are_logged_with_their_status_and_route(
    http: Any, json_logs: io.StringIO
) -> None:
    """A 404 names no route template ("unmatched"); a 401 on verify names the verify route."""

    await http.get("/no/such/thing")
    await http.post("/v1/verify", json={"token": "tsv1_nope"})

    missing, refused = lines(json_logs, "http_request")
    assert (missing["status"], missing["route"]) == (404, "unmatched")
    assert (refused["status"], refused["route"]) == (401, "/v1/verify")


async def test_security_events_carry_the_request_id(http: Any, json_logs: io.StringIO) -> None:
    """The OWASP event logged inside a request (a failed login) names that request's id."""

    resp = await http.post(
        "/v1/login",
        headers={**basic_auth("admin", ADMIN_PASSWORD + "x"), "X-Request-ID": "login-1"},
    )

    (event,) = lines(json_logs, "authn_login_fail")
    assert resp.status == 401
    assert event["request_id"] == "login-1"
    assert event["user"] == "admin"
