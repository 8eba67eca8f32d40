"""GET /v1/auth: forward-auth answers from the proxy's headers, 200/401/403 and never a 500.

Tests through HTTP run against the real app factory on PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tokensvc.errors import Forbidden
from tokensvc.web.app import create_app
from tokensvc.web.handlers import forwardauth
from tokensvc.web.handlers.forwardauth import operation_for, resource_of

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]


def routed(config: Config, clock: FakeClock) -> web.Application:
    """The real app with /v1/auth, whether or not create_app registers it yet."""
    app = create_app(config, clock=clock)
    if not any(r.canonical == "/v1/auth" for r in app.router.resources()):
        forwardauth.setup(app)
    return app


@pytest.fixture
async def client(aiohttp_client: Any, app_config: Config, clock: FakeClock) -> Client:
    return await aiohttp_client(routed(app_config, clock))  # type: ignore[no-any-return]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint(client: Client, admin_token: str, **body: Any) -> str:
    """Mint through POST /v1/tokens with the admin's token; the token."""
    resp = await client.post("/v1/tokens", json=body, headers=bearer(admin_token))
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["token"])


async def auth(client: Client, token: str | None, **headers: str) -> int:
    """GET /v1/auth with `token` and the proxy's headers (underscores become dashes); the status."""
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    resp = await client.get("/v1/auth", headers=sent)
    return resp.status


# ---- the pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "operation"),
    [
        ("GET", "read"),
        ("head", "read"),
        ("OPTIONS", "read"),
        ("POST", "write"),
        ("PUT", "write"),
        ("DELETE", "write"),
        ("PATCH", "write"),
        ("BREW", "write"),
    ],
)
def test_method_maps_to_read_or_write(method: str, operation: str) -> None:
    """GET, HEAD and OPTIONS are `read`; every other method, known or not, is `write`."""
    result = operation_for(method)

    assert result == operation


@pytest.mark.parametrize(
    ("uri", "resource"),
    [
        ("/", "/"),
        ("/a/b?x=1#frag", "/a/b"),  # after `?`: the query, whatever it holds
        ("/a/b/", "/a/b/"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a/...", "/a/..."),
        ("/caf%C3%A9", "/café"),
        ("/docs/%41?q=/../", "/docs/A"),
        ("http://example.com/x/y?q", "/x/y"),
    ],
)
def test_resource_is_the_decoded_path(uri: str, resource: str) -> None:
    """The resource is the URI's path, without query or fragment, percent-decoded."""
    result = resource_of(uri)

    assert result == resource


@pytest.mark.parametrize(
    "uri",
    [
        "relative",
        "/%ff%fe",
        "/a%00b",
        "/" + "a" * 3000,
        # Paths a proxy and its backend could route differently:
        "//a///b",
        "/public/../admin",
        "/public/%2e%2E/admin",
        "/public/%2F..%2Fadmin",
        "/admin/x%2f..%2f..%2fpublic%2fy",
        "/../../etc",
        "/a/./b/.",
        "/a/..",
        "/a%5cb",
        "/a\\..\\admin",
        "/public/..;/admin",
        "/public/.;x/admin",
        "/public/..%3b/admin",
        "/app/public/x#/../../admin/secret",  # Go and uvicorn (h11) keep `#` in the path
        "http://x/app/public/x#/%2e%2e/admin",
        "/a#b",
        "http://example.com/x/../y",
    ],
)
def test_unusable_or_ambiguous_uri_denies(uri: str) -> None:
    """A URI that cannot be a path, or whose route could differ from the resource it would
    name, is denied (403), never an error."""
    with pytest.raises(Forbidden):
        resource_of(uri)


# ---- through HTTP -------------------------------------------------------------------------------------


async def test_no_token_is_401(client: Client) -> None:
    """Without Authorization the answer is 401 with WWW-Authenticate."""
    resp = await client.get("/v1/auth", headers={"X-Original-URI": "/x"})

    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_invalid_token_is_401(client: Client) -> None:
    """A garbage token is 401."""
    status = await auth(client, "garbage", X_Original_Method="GET", X_Original_URI="/x")

    assert status == 401


async def test_valid_token_is_200_with_identity_headers(client: Client, admin_token: str) -> None:
    """A valid token gets 200 with X-Auth-Subject and X-Auth-Token-Id for the upstream."""
    resp = await client.get(
        "/v1/auth",
        headers={
            "Authorization": f"Macaroon {admin_token}",
            "X-Original-Method": "POST",
            "X-Original-URI": "/anything?x=1",
        },
    )

    assert resp.status == 200
    assert resp.headers["X-Auth-Subject"] == "admin"
    assert len(resp.headers["X-Auth-Token-Id"]) >= 32
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X_Original_Method": "GET"}, 200),
        ({"X_Original_Method": "HEAD"}, 200),
        ({"X_Original_Method": "POST"}, 403),
        ({"X_Forwarded_Method": "GET"}, 200),
        ({"X_Forwarded_Method": "DELETE"}, 403),
        ({}, 200),  # no method header: this request's own GET
        ({"X_Original_Method": "POST", "X_Auth_Operation": "read"}, 200),
        ({"X_Original_Method": "GET", "X_Auth_Operation": "admin"}, 403),
    ],
)
async def test_read_only_token_by_method(
    client: Client, admin_token: str, headers: dict[str, str], expected: int
) -> None:
    """A token allowing only `read` passes reads and is denied writes, from either proxy's headers."""
    token = await mint(client, admin_token, operations=["read"])

    status = await auth(client, token, **headers)

    assert status == expected


async def test_operation_override(client: Client, admin_token: str) -> None:
    """X-Auth-Operation set by the proxy replaces the method mapping."""
    token = await mint(client, admin_token, operations=["deploy"])

    allowed = await auth(client, token, X_Original_Method="POST", X_Auth_Operation="deploy")
    denied = await auth(client, token, X_Original_Method="POST")

    assert (allowed, denied) == (200, 403)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X_Original_URI": "/public/page?x=1"}, 200),
        ({"X_Forwarded_Uri": "/public/a/b"}, 200),
        ({"X_Original_URI": "/admin"}, 403),
        ({"X_Original_URI": "/public/../admin"}, 403),
        ({"X_Original_URI": "/public/%2e%2e/admin"}, 403),
        ({}, 403),  # the token is limited to resources; the request names none
    ],
)
async def test_resource_limited_token(
    client: Client, admin_token: str, headers: dict[str, str], expected: int
) -> None:
    """A token limited to `/public/*` passes only paths that really are under /public/."""
    token = await mint(client, admin_token, resources=["/public/*"])

    status = await auth(client, token, **headers)

    assert status == expected


async def test_audience_from_proxy_header(client: Client, admin_token: str) -> None:
    """A token for audience `shop` passes only when the proxy says it is protecting `shop`."""
    token = await mint(client, admin_token, audience="shop")

    right = await auth(client, token, X_Auth_Audience="shop")
    wrong = await auth(client, token, X_Auth_Audience="bank")
    missing = await auth(client, token)

    assert (right, wrong, missing) == (200, 403, 403)


async def test_nginx_subrequest_methods_are_routed(client: Client, admin_token: str) -> None:
    """nginx subrequests keep the client's method, so /v1/auth answers POST and PUT too."""
    token = await mint(client, admin_token, operations=["write"])

    resp = await client.post("/v1/auth", headers=bearer(token) | {"X-Original-Method": "PUT"})

    assert resp.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Original-URI": "/ünï\u2028cödé"},
        {"X-Original-URI": "/%ff%fe"},
        {"X-Original-URI": "no-slash"},
        {"X-Original-URI": "/" + "a" * 5000},
        {"X-Original-URI": "%"},
        {"X-Original-Method": "G E T ☃" * 10},
        {"X-Auth-Operation": "x" * 1000},
        {"X-Auth-Audience": "a\tb"},
        {"X-Forwarded-For": "not-an-ip, ::::, 999.1.1.1"},
        {"Authorization": "Bearer"},
        {"Authorization": "Macaroon ☃☃"},
        {"Authorization": "Basic " + "=" * 100},
    ],
)
async def test_garbage_headers_are_4xx(
    client: Client, admin_token: str, headers: dict[str, str]
) -> None:
    """Garbage in any header the endpoint reads is a 4xx, never a 500."""
    sent = bearer(admin_token) | headers

    resp = await client.get("/v1/auth", headers=sent)

    assert 400 <= resp.status < 500 or resp.status == 200
    assert resp.status != 500


@pytest.mark.parametrize(
    "header",
    [
        b"X-Original-URI: /a\x01\x7f\xff\xfe",
        b"X-Original-Method: \xff\x00",
        b"X-Auth-Operation: \x80\x81",
        b"Authorization: Bearer \xff\xfe",
    ],
)
async def test_raw_control_bytes_are_4xx(client: Client, admin_token: str, header: bytes) -> None:
    """Raw control and non-UTF-8 bytes, which no well-behaved client sends, get a 4xx."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    request = (
        b"GET /v1/auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + (
            b""
            if header.startswith(b"Authorization")
            else f"Authorization: Bearer {admin_token}\r\n".encode()
        )
        + header
        + b"\r\n\r\n"
    )

    writer.write(request)
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()

    status = int(status_line.split()[1])
    assert 400 <= status < 500 or status == 200


async def test_client_ip_only_through_trusted_proxy(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """X-Forwarded-For counts for a CIDR-limited token only when the peer is a trusted proxy."""
    trusting = await aiohttp_client(
        routed(
            make_config(database_url=pg_url, data_dir=data_dir, trusted_proxies=("127.0.0.1/32",)),
            clock,
        )
    )
    login = await trusting.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    token = await mint(trusting, (await login.json())["token"], cidrs=["203.0.113.0/24"])

    inside = await auth(trusting, token, X_Forwarded_For="203.0.113.7")
    outside = await auth(trusting, token, X_Forwarded_For="198.51.100.1")
    spoofed = await auth(trusting, token, X_Forwarded_For="203.0.113.7, 198.51.100.1")

    assert (inside, outside, spoofed) == (200, 403, 403)


async def test_forwarded_for_ignored_without_trusted_proxy(
    client: Client, admin_token: str
) -> None:
    """Without trusted proxies, a client cannot claim an address with X-Forwarded-For."""
    token = await mint(client, admin_token, cidrs=["203.0.113.0/24"])

    status = await auth(client, token, X_Forwarded_For="203.0.113.7")

    assert status == 403
