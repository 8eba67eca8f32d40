"""Red-team attacks on forward-auth's context headers: a client choosing the request context its
proxy asks /v1/auth about.

A proxy passes the client's own headers on to the auth request (nginx's `auth_request` and
Traefik's ForwardAuth both do, unless told otherwise), so any context header the proxy does not
set itself is the client's choice. These tests send what such a proxy sends: its own headers plus
the ones a hostile client added.
"""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict

from tests.security.attack import call
from tests.tokensvc.test_nginx import nginx_binary, nginx_port, nginx_root, run_nginx

__all__ = ["nginx_binary", "nginx_port", "nginx_root", "run_nginx"]  # fixtures, for pytest

READ_PUBLIC = {"subject": "reader", "operations": ["read"], "resources": ["/public/*"]}


async def _read_only_public(client: Any, root: str) -> str:
    status, minted = await call(client, "POST", "/v1/tokens", root, json=READ_PUBLIC)
    assert status == 201, minted
    return str(minted["token"])


async def _auth(client: Any, token: str, *pairs: tuple[str, str]) -> int:
    headers = CIMultiDict([("Authorization", f"Bearer {token}"), *pairs])
    resp = await client.get("/v1/auth", headers=headers)
    await resp.read()
    return int(resp.status)


async def test_a_client_cannot_override_traefiks_method_and_uri(shaped: Any, root: str) -> None:
    """Behind Traefik (which sets X-Forwarded-Method/-Uri itself and passes the client's other
    headers on), a client adding X-Original-Method: GET and X-Original-URI: /public/… to a
    DELETE /admin/users does not get its read-only /public/* token allowed."""
    token = await _read_only_public(shaped, root)
    traefik = (("X-Forwarded-Method", "DELETE"), ("X-Forwarded-Uri", "/admin/users"))
    spoofed = (("X-Original-Method", "GET"), ("X-Original-URI", "/public/page"))

    honest = await _auth(shaped, token, *traefik)
    attack = await _auth(shaped, token, *spoofed, *traefik)
    uri_only = await _auth(
        shaped, token, ("X-Original-URI", "/public/page"), ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Uri", "/admin/users"),
    )  # fmt: skip
    agreeing = await _auth(
        shaped, token, ("X-Original-URI", "/public/page"), ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Uri", "/public/page"),
    )  # fmt: skip

    assert honest == 403
    assert attack == 403
    assert uri_only == 403
    assert agreeing == 200


async def test_a_uri_with_a_raw_byte_that_is_not_utf8_is_a_403_not_an_error(
    shaped: Any, root: str
) -> None:
    """Red team (helper-45): nginx passes $request_uri as sent, raw bytes included; aiohttp hands
    a non-UTF-8 byte of a header over as a surrogate, and decoding the path raised
    UnicodeEncodeError: a 500 with a traceback in the log. It is a URI that names no resource."""
    import asyncio

    token = await _read_only_public(shaped, root)
    reader, writer = await asyncio.open_connection("127.0.0.1", shaped.server.port)
    try:
        writer.write(
            b"GET /v1/auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
            + b"\r\nX-Original-URI: /public/\xff\r\nConnection: close\r\n\r\n"
        )  # fmt: skip
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()

    assert response.split(b" ", 2)[1] == b"403", response[:300]


async def test_a_context_header_sent_twice_is_not_the_clients_choice(
    shaped: Any, root: str
) -> None:
    """A proxy that appends its X-Original-URI, X-Original-Method or X-Auth-Operation after the
    client's own (rather than replacing it) leaves two lines: the client's line does not win."""
    token = await _read_only_public(shaped, root)

    two_uris = await _auth(
        shaped, token, ("X-Original-URI", "/public/page"), ("X-Original-URI", "/admin"),
        ("X-Original-Method", "GET"),
    )  # fmt: skip
    two_methods = await _auth(
        shaped, token, ("X-Original-Method", "GET"), ("X-Original-Method", "POST"),
        ("X-Original-URI", "/public/page"),
    )  # fmt: skip
    two_operations = await _auth(
        shaped, token, ("X-Auth-Operation", "read"), ("X-Auth-Operation", "write"),
        ("X-Original-URI", "/public/page"),
    )  # fmt: skip

    assert (two_uris, two_methods, two_operations) == (403, 403, 403)


async def test_through_nginx_a_client_cannot_choose_the_operation(
    aiohttp_client: Any, pg_config: Any, clock: Any, run_nginx: Any, nginx_port: int
) -> None:
    """Through a real nginx configured as docs/forward-auth.md says (context headers the proxy
    does not set are cleared), a client's own `X-Auth-Operation: read` on a POST, or an
    `X-Auth-Audience` naming its token's audience, does not get a read-only token allowed."""
    import aiohttp

    from tests.conftest import ADMIN_PASSWORD, basic_auth
    from tokensvc.web.app import create_app

    tokensvc = await aiohttp_client(create_app(pg_config, clock=clock))
    login = await tokensvc.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    root = (await login.json())["token"]
    status, minted = await call(
        tokensvc, "POST", "/v1/tokens", root, json={"subject": "r", "operations": ["read"]}
    )
    assert status == 201, minted
    read_only = minted["token"]
    status, other_site = await call(
        tokensvc, "POST", "/v1/tokens", root, json={"subject": "x", "audience": ["billing"]}
    )
    assert status == 201, other_site
    run_nginx(tokensvc.port)
    url = f"http://127.0.0.1:{nginx_port}/protected/index.html"

    async with aiohttp.ClientSession() as session:
        spoofed_operation = await session.post(
            url, headers={"Authorization": f"Bearer {read_only}", "X-Auth-Operation": "read"}
        )
        spoofed_audience = await session.get(
            url,
            headers={
                "Authorization": f"Bearer {other_site['token']}",
                "X-Auth-Audience": "billing",
            },
        )
        statuses = (spoofed_operation.status, spoofed_audience.status)
        spoofed_operation.release()
        spoofed_audience.release()

    assert statuses == (403, 403)


async def _raw_get(port: int, target: str, token: str) -> tuple[int, bytes]:
    """Status and body of a GET with `target` sent as is (an HTTP client would normalise it)."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_through_nginx_a_path_token_cannot_reach_another_route_of_the_backend(
    aiohttp_client: Any,
    aiohttp_server: Any,
    pg_config: Any,
    clock: Any,
    run_nginx: Any,
    nginx_port: int,
) -> None:
    """nginx passes the URI on as the client sent it, and the backend routes it: aiohttp matches
    `/app/admin/x%2F..%2F..%2Fpublic%2Fy` to /app/admin/{name}, while decoding it first and
    resolving the dots names /app/public/y. A token for /app/public/* must not reach the admin
    route that way (nor through `..` and `//`, which backends resolve differently)."""
    from aiohttp import web

    from tests.conftest import ADMIN_PASSWORD, basic_auth
    from tokensvc.web.app import create_app

    async def admin(request: web.Request) -> web.Response:
        return web.Response(text="ADMIN")

    async def public(request: web.Request) -> web.Response:
        return web.Response(text="PUBLIC")

    backend_app = web.Application()
    backend_app.router.add_get("/app/admin/{name}", admin)
    backend_app.router.add_get("/app/public/{name}", public)
    backend = await aiohttp_server(backend_app)
    tokensvc = await aiohttp_client(create_app(pg_config, clock=clock))
    login = await tokensvc.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    root = (await login.json())["token"]
    status, minted = await call(
        tokensvc,
        "POST",
        "/v1/tokens",
        root,
        json={"subject": "reader", "operations": ["read"], "resources": ["/app/public/*"]},
    )
    assert status == 201, minted
    token = minted["token"]
    run_nginx(tokensvc.port, backend.port)

    assert await _raw_get(nginx_port, "/app/public/y", token) == (200, b"PUBLIC")
    assert (await _raw_get(nginx_port, "/app/admin/x", token))[0] == 403
    for target in (
        "/app/admin/x%2F..%2F..%2Fpublic%2Fy",
        "/app/admin/..%2Fpublic%2Fy",
        "/app/admin/%2E%2E%2Fpublic%2Fy",
        "/app/admin/x/..%2F..%2Fpublic%2Fy",
        "/app/public/x#/../../admin/y",  # nginx passes `#` on; Go and uvicorn (h11) route it
    ):
        status, body = await _raw_get(nginx_port, target, token)
        assert body != b"ADMIN" and status in (400, 403, 404), (target, status, body)
