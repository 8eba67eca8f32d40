"""Security headers on every answer, HSTS only over native TLS, and JSON 413s for big bodies."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tokensvc.operations.config import Config, ConfigError
from tokensvc.web.app import create_app
from tokensvc.web.headers import HSTS, SECURITY_HEADERS
from tokensvc.web.tls import ssl_context


@pytest.fixture
def config(sqlite_url: str, data_dir: Path) -> Config:
    """The embedded (SQLite) configuration: these tests are about HTTP, not the database."""
    return make_config(database_url=sqlite_url, data_dir=data_dir, max_body_bytes=20_000)


@pytest.fixture
async def http(aiohttp_client: Any, config: Config, clock: FakeClock) -> Any:
    return await aiohttp_client(create_app(config, clock=clock))


def assert_security_headers(headers: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/healthz", {}, 200),
        ("GET", "/metrics", {}, 200),
        ("GET", "/openapi.yaml", {}, 200),
        ("POST", "/v1/verify", {"json": {"token": "tsv1_nope"}}, 401),
        ("POST", "/v1/verify", {"data": b"not json"}, 400),
        ("POST", "/v1/login", {"headers": basic_auth("admin", "wrong password")}, 401),
        ("GET", "/v1/keys", {}, 401),
        ("GET", "/no/such/path", {}, 404),
        ("PUT", "/v1/verify", {}, 405),
    ],
)
async def test_every_answer_carries_the_security_headers(
    http: Any, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    """Successes and every kind of error answer carry the five security headers and no HSTS."""

    resp = await http.request(method, path, **kwargs)

    assert resp.status == status
    assert_security_headers(resp.headers)
    assert "Strict-Transport-Security" not in resp.headers


@pytest.mark.parametrize("path", ["/zz%0azz", "/healthz%0a", "/%0d%0a"])
async def test_a_path_with_a_line_break_is_a_json_404_like_any_other(http: Any, path: str) -> None:
    """Red team (helper-34): the catch-all route's `.*` stopped at a decoded line break, so such
    a path got aiohttp's own plain-text 404, without the headers, the log line or the metrics."""
    from yarl import URL

    resp = await http.get(URL(path, encoded=True))

    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    assert_security_headers(resp.headers)


async def test_a_successful_login_is_not_cacheable(http: Any) -> None:
    """The answer that carries a fresh token says no-store."""

    resp = await http.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))

    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/v1/verify", "/v1/login"])
async def test_a_body_over_the_limit_is_a_json_413(http: Any, path: str) -> None:
    """A body larger than TOKENSVC_MAX_BODY_BYTES is refused with the JSON error and the headers."""
    body = b'{"token": "' + b"a" * 30_000 + b'"}'

    resp = await http.post(path, data=body, headers={"Content-Type": "application/json"})

    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
    assert_security_headers(resp.headers)


# ---- native TLS ------------------------------------------------------------------------------------


async def test_native_tls_serves_with_hsts(
    aiohttp_server: Any, config: Config, clock: FakeClock, certificate: tuple[Path, Path]
) -> None:
    """With cert and key files configured the service speaks TLS ≥ 1.2 and adds HSTS."""
    cert, key = certificate
    tls_config = config.model_copy(update={"tls_cert_file": str(cert), "tls_key_file": str(key)})
    server_context = ssl_context(tls_config)
    assert server_context is not None
    server = await aiohttp_server(
        create_app(tls_config, clock=clock), host="127.0.0.1", ssl=server_context
    )
    client_context = ssl.create_default_context(cafile=str(cert))

    async with (
        aiohttp.ClientSession() as session,
        session.get(server.make_url("/healthz"), ssl=client_context) as resp,
    ):
        status, headers = resp.status, resp.headers
    _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_context)
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    await writer.wait_closed()

    assert server.scheme == "https"
    assert status == 200
    assert headers["Strict-Transport-Security"] == HSTS
    assert_security_headers(headers)
    assert server_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert version in ("TLSv1.2", "TLSv1.3")


def test_no_tls_files_means_no_context(config: Config) -> None:
    """Without TOKENSVC_TLS_* the service serves plain HTTP (TLS terminated in front of it)."""

    context = ssl_context(config)

    assert context is None


def test_tls_needs_both_files(tmp_path: Path) -> None:
    """A certificate without its key (or the reverse) is a configuration error at start."""
    (tmp_path / "cert.pem").write_text("a certificate")
    env = {"TOKENSVC_TLS_CERT_FILE": str(tmp_path / "cert.pem"), "TOKENSVC_DATA_DIR": str(tmp_path)}

    with pytest.raises(ConfigError, match="TLS_KEY_FILE"):
        Config.from_env(env)


def test_unreadable_tls_files_are_a_config_error(config: Config, tmp_path: Path) -> None:
    """Missing certificate files fail at start with a ConfigError naming the variables."""
    broken = config.model_copy(
        update={
            "tls_cert_file": str(tmp_path / "none.pem"),
            "tls_key_file": str(tmp_path / "none.key"),
        }
    )

    with pytest.raises(ConfigError, match="TOKENSVC_TLS_CERT_FILE"):
        ssl_context(broken)


def test_json_answers_own_their_headers() -> None:
    """json_response hands aiohttp its one prebuilt header set, relying on web.Response to copy
    the headers it is given: if a new aiohttp stopped copying, the X-Request-ID the middleware
    adds would land in every later answer. This fails first."""
    from tokensvc.web import jsonio

    pristine = list(jsonio._JSON_HEADERS.items())
    first = jsonio.json_response({"a": 1})
    second = jsonio.json_response({"b": 2})
    assert first.headers is not second.headers
    assert first.headers is not jsonio._JSON_HEADERS
    first.headers["X-Request-ID"] = "one"
    assert "X-Request-ID" not in second.headers
    assert list(jsonio._JSON_HEADERS.items()) == pristine
    assert_security_headers(second.headers)
    assert second.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("PUT", "/v1/verify", {"POST"}), ("PATCH", "/v1/keys", {"GET", "HEAD"})],
)
async def test_a_wrong_method_answer_names_the_allowed_ones(
    http: Any, method: str, path: str, allowed: set[str]
) -> None:
    """405 carries Allow (RFC 9110 §15.5.6), beside the usual JSON error body."""

    resp = await http.request(method, path)

    assert resp.status == 405
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
