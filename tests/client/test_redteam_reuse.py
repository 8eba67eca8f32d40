"""Red team: remembered allows (TokensvcClient.allowed) through the aiohttp middleware and guard.

The client holds TOKEN's verdict with a stand-in live stream (tests.client.test_client_reuse),
so every request after the first is decided from the cache and may be remembered. Each test is
an attack; a pass means the defence held, a failure is a finding.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from caveats import Audience, Expiry, Generation, Operations, Resources, Subject, encode
from tests.client.test_client_reuse import TOKEN, client_with
from tokensvc_client.web import TokensvcGuard, tokensvc_middleware

READ_DOCS = [
    encode(Subject("alice")),
    encode(Operations(("read",))),
    encode(Resources(("/docs/*",))),
    encode(Audience(("files",))),
]


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def app_for(aiohttp_client: Any, client: Any, **options: Any) -> Any:
    app = web.Application(middlewares=[tokensvc_middleware(client, **options)])
    app.router.add_route("*", "/{tail:.*}", ok)
    return await aiohttp_client(app)


async def raw_get(http: Any, path: str, headers: dict[str, str]) -> int:
    """GET `path` exactly as written (no client-side normalisation); the status."""
    reader, writer = await asyncio.open_connection(http.host, http.port)
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def warm(http: Any, path: str, headers: Any) -> None:
    """Twice: the second request is decided from the cache and remembered."""
    for _ in range(3):
        assert (await http.get(path, headers=headers)).status == 200


# ---- key confusion -----------------------------------------------------------------------------


async def test_two_middlewares_with_different_audiences_sharing_a_client(
    aiohttp_client: Any,
) -> None:
    """An allow remembered by the `files` app must not serve the `orders` app (same request)."""
    client = client_with(READ_DOCS)
    files = await app_for(aiohttp_client, client, audience="files")
    orders = await app_for(aiohttp_client, client, audience="orders")
    await warm(files, "/docs/1", bearer())

    assert (await orders.get("/docs/1", headers=bearer())).status == 403


async def test_mfa_guard_route_does_not_reuse_a_plain_routes_allow(aiohttp_client: Any) -> None:
    """One guard, two routes on the same path (GET plain, and an MFA-only copy mounted elsewhere
    on the same raw path through a sub-app): a password-only token is refused on the MFA one."""
    client = client_with(READ_DOCS)
    guard = TokensvcGuard(client, audience="files")
    plain = web.Application()
    plain.router.add_get("/docs/1", guard.protect(ok))
    mfa = web.Application()
    mfa.router.add_get("/docs/1", guard.require(mfa=True)(ok))
    a, b = await aiohttp_client(plain), await aiohttp_client(mfa)
    await warm(a, "/docs/1", bearer())

    assert (await b.get("/docs/1", headers=bearer())).status == 403


async def test_method_and_encoded_path_variants_are_checked_afresh(aiohttp_client: Any) -> None:
    client = client_with(READ_DOCS)
    http = await app_for(aiohttp_client, client, audience="files")
    await warm(http, "/docs/1", bearer())

    assert (await http.post("/docs/1", headers=bearer())).status == 403
    for path in (
        "/docs/%2e%2e/admin",
        "/docs/%2E%2E/admin",
        "/docs/..%2fadmin",
        "//docs/../admin",
        "/docs/1/../../admin",
        "/docs/1?x=/../../admin",
    ):
        for _ in range(3):  # would a remembered allow for it differ from the full check?
            status = await raw_get(http, path, bearer())
        # the full check's answer for the same path (no remembered allow: fresh client)
        fresh = await app_for(aiohttp_client, client_with(READ_DOCS), audience="files")
        assert status == await raw_get(fresh, path, bearer()), path
        assert status == 403 or path.startswith("/docs/1?"), (path, status)


async def test_duplicate_authorization_headers_decide_on_the_same_one(aiohttp_client: Any) -> None:
    """[good, bad] remembered; [bad, good] must not ride on it, and [good] alone is its own key."""
    client = client_with(READ_DOCS)
    http = await app_for(aiohttp_client, client, audience="files")
    good_bad = CIMultiDict([("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer x")])
    bad_good = CIMultiDict([("Authorization", "Bearer x"), ("Authorization", f"Bearer {TOKEN}")])
    first = [(await http.get("/docs/1", headers=good_bad)).status for _ in range(3)]
    # whatever the answer for [good, bad], [bad, good] gets the full check's answer
    fresh = await app_for(aiohttp_client, client_with(READ_DOCS), audience="files")
    expected = (await fresh.get("/docs/1", headers=bad_good)).status

    assert first[0] == first[2]
    assert (await http.get("/docs/1", headers=bad_good)).status == expected


async def test_expiry_and_stream_events_end_reuse_through_the_middleware(
    aiohttp_client: Any,
) -> None:
    client = client_with([*READ_DOCS, encode(Expiry(1010))])
    http = await app_for(aiohttp_client, client, audience="files")
    await warm(http, "/docs/1", bearer())
    client._clock.now = 1010.0
    assert (await http.get("/docs/1", headers=bearer())).status == 401

    client = client_with([*READ_DOCS, encode(Generation(0))])
    http = await app_for(aiohttp_client, client, audience="files")
    await warm(http, "/docs/1", bearer())
    client.state.raise_generation("alice", 1)  # revoke-all for alice
    assert (await http.get("/docs/1", headers=bearer())).status == 401


# ---- memory -------------------------------------------------------------------------------------


def _retained(client: Any) -> int:
    """Bytes the remembered allows' keys hold in strings (header values, path)."""
    return sum(
        sys.getsizeof(part) for key in client._allowed for part in key if isinstance(part, str)
    )


@pytest.mark.parametrize("pad", [8000, 2000])
async def test_remembered_set_memory_bound_counts_what_the_keys_hold(
    aiohttp_client: Any, pad: int
) -> None:
    """One valid token, requests padded where the check does not look: spaces inside
    `Authorization` (token_from strips them), commas in `X-Macaroon-Discharges` (no discharge),
    a query string (resource_of drops it). Every request is a new key; found: `_remember`
    counted verdict.size + 512 (~2 KB) for keys holding ~18 KB, so the bound (`max_bytes // 4`)
    was exceeded many times over. Now the key's strings are counted, and keys over 8 KB are
    not remembered at all (pad 8000: nothing kept; pad 2000: kept, within the bound)."""
    client = client_with(READ_DOCS)
    client._max_allowed_bytes = 1_000_000
    http = await app_for(aiohttp_client, client, audience="files")
    for i in range(200):
        headers = {
            "Authorization": "Bearer" + " " * (pad - i) + TOKEN,
            "X-Macaroon-Discharges": "," * pad,
        }
        path = f"/docs/1?{i}=" + "a" * (pad // 4)
        for _ in range(2):  # the first request of each key is a hit already (cached verdict)
            assert (await http.get(path, headers=headers)).status == 200

    assert (len(client._allowed) > 0) is (pad < 4000)
    assert _retained(client) <= client._allowed_bytes
    assert _retained(client) <= client._max_allowed_bytes, (
        f"{len(client._allowed)} remembered allows hold {_retained(client)} bytes of key strings; "
        f"accounted {client._allowed_bytes}, bound {client._max_allowed_bytes}"
    )


async def test_remembered_set_entries_stay_bounded(aiohttp_client: Any) -> None:
    client = client_with(READ_DOCS)
    client._max_allowed_entries = 50
    http = await app_for(aiohttp_client, client, audience="files")
    for i in range(200):
        assert (await http.get(f"/docs/{i}", headers=bearer())).status == 200
    assert len(client._allowed) <= 50
