"""Minor findings of the same review: what a client sends must not leak into logs or answers,
and no route answers TRACE.

- X-Request-ID is echoed and logged only when it is short, plain and does not look like a
  secret (tokensvc.web.pipeline.request_id_for); else the request gets an id of ours.
- Login events name an identity by a keyed hash (`user_hash`) and by name only once it is an
  existing user (tokensvc.services.login): a password typed as the user name is never logged.
- TRACE, TRACK and CONNECT are 405 JSON with Allow everywhere, /v1/auth (any method) included.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import FakeClock, basic_auth, make_config, mask_challenge
from tests.security.edges_support import (
    ALICE_PASSWORD,
    STORES,
    WRONG,
    admin_login,
    bearer,
    captured_logs,
    create_alice,
    log_lines,
    mint,
    serve,
    store_config,
)
from tokensvc.operations.redisconn import redis_client_from_url

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]

OUR_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    with captured_logs() as buffer:
        yield buffer


@pytest.fixture
async def client(aiohttp_client: Any, sqlite_url: str, data_dir: Path, clock: FakeClock) -> Client:
    """The app as `tokensvc serve` runs it, the fast /v1/verify path in front."""
    return await serve(
        aiohttp_client, make_config(database_url=sqlite_url, data_dir=data_dir), clock
    )


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Config:
    """Each store in turn (a plain fixture: it sets up the async database fixtures it needs)."""
    return store_config(request, request.param)


@pytest.fixture
async def stored(store: Config, aiohttp_client: Any, clock: FakeClock) -> Client:
    """The app on each store (SQLite + in-process lockout, PostgreSQL + Redis); alice exists."""
    client = await serve(aiohttp_client, store, clock)
    await create_alice(client, await admin_login(client))
    return client


# ---- X-Request-ID ------------------------------------------------------------------------------


async def request_with_id(client: Client, route: str, request_id: str) -> str:
    """Call `route` (the fast verify path, or aiohttp's) with this X-Request-ID; the echoed id."""
    headers = {"X-Request-ID": request_id}
    if route == "/v1/verify":
        resp = await client.post(route, json={"token": "tsv1_nope"}, headers=headers)
    else:
        resp = await client.get(route, headers=headers)
    await resp.read()
    return resp.headers["X-Request-ID"]


@pytest.mark.parametrize("route", ["/v1/verify", "/healthz"])
async def test_a_token_in_x_request_id_is_neither_echoed_nor_logged(
    client: Client, logs: io.StringIO, route: str
) -> None:
    """An X-Request-ID holding a token, a prefix of one (with or without `tsv1_`) or a base64
    run is replaced by an id of ours: no part of it is echoed or reaches any log line."""
    token = await admin_login(client)
    body = token.removeprefix("tsv1_")
    secrets_sent = [
        token[:120],  # the reviewed case: 120 characters fitted the old rule
        token[:64],
        token[:40],
        body[:60],
        body[:33],
        "req-" + "aB3dE5gH7jK9mN1pQ2",  # mixed-case base64-looking run of 18
        "x" * 33 + "-1",  # a letter-digit run longer than 32
    ]

    echoed = [await request_with_id(client, route, sent) for sent in secrets_sent]

    assert all(OUR_ID.fullmatch(e) for e in echoed), echoed
    written = logs.getvalue()
    assert token[:16] not in written
    for sent in secrets_sent:
        assert sent not in written


@pytest.mark.parametrize("route", ["/v1/verify", "/healthz"])
async def test_plain_request_ids_are_still_echoed_and_logged(
    client: Client, logs: io.StringIO, route: str
) -> None:
    """Ids that proxies and tracers really send (UUIDs, hex, W3C traceparent, ULIDs, short
    names) are echoed and logged as sent."""
    plain = [
        "edge-42.abc",
        "5f1c3a9e-8b7d-4e2f-9a61-0c3b2d4e5f60",
        "0af7651916cd43dd8448eb211c80319c",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "req_8KpT2mQ",
        "LoginFlow:step-2",
    ]

    echoed = [await request_with_id(client, route, sent) for sent in plain]

    assert echoed == plain
    logged = [line["request_id"] for line in log_lines(logs, "http_request")]
    assert logged[-len(plain) :] == plain


# ---- user names in login events ----------------------------------------------------------------


async def login(client: Client, name: str, password: str) -> tuple[int, bytes]:
    resp = await client.post("/v1/login", headers=basic_auth(name, password))
    return resp.status, await resp.read()


async def test_a_password_typed_as_user_name_is_not_logged(
    stored: Client, logs: io.StringIO
) -> None:
    """A failed login for a name that is no user logs a keyed hash of it, never the name: a
    password typed into the user name field stays out of the log, lock events included."""
    typed = "Tr0ub4dor&3 my password"

    answers = [await login(stored, typed, "whatever") for _ in range(6)]

    assert [status for status, _ in answers] == [401] * 5 + [429]
    assert typed not in logs.getvalue()
    assert typed.lower() not in logs.getvalue().lower()
    failures = log_lines(logs, "authn_login_fail")
    (lock,) = log_lines(logs, "authn_login_lock")
    assert len(failures) == 5
    assert {f["user"] for f in failures} == {None}
    hashes = {f["user_hash"] for f in failures} | {lock["user_hash"]}
    assert len(hashes) == 1 and re.fullmatch(r"[0-9a-f]{16}", hashes.pop())
    assert "user" not in lock


async def test_an_existing_user_is_named_and_hashed_alike_however_typed(
    stored: Client, logs: io.StringIO
) -> None:
    """A failed login for an existing user names the user as stored, and carries the same hash
    as the attempts at unknown spellings of it would: `ALICE` and `alice` correlate."""
    await login(stored, "ALICE", WRONG)
    await login(stored, "alice", WRONG)
    await login(stored, "nobody", WRONG)
    await login(stored, "alice", ALICE_PASSWORD)

    fail_alice_upper, fail_alice, fail_nobody = log_lines(logs, "authn_login_fail")
    (success,) = log_lines(logs, "authn_login_success")
    assert fail_alice["user"] == "alice" and fail_alice_upper["user"] == "alice"
    assert fail_alice["user_hash"] == fail_alice_upper["user_hash"] == success["user_hash"]
    assert fail_nobody["user"] is None and fail_nobody["user_hash"] != fail_alice["user_hash"]
    assert "nobody" not in logs.getvalue()


async def test_the_answer_does_not_tell_whether_the_name_exists(stored: Client) -> None:
    """Logging a name only for existing users changes nothing a client sees: an unknown name
    and a wrong password for alice get the same status, headers that matter and body."""
    unknown = await stored.post("/v1/login", headers=basic_auth("nobody", WRONG))
    known = await stored.post("/v1/login", headers=basic_auth("alice", WRONG))

    assert (unknown.status, mask_challenge(await unknown.read())) == (
        known.status,
        mask_challenge(await known.read()),
    )
    assert unknown.headers.get("WWW-Authenticate") == known.headers.get("WWW-Authenticate")


@pytest.fixture
def redis_store(request: pytest.FixtureRequest) -> Config:
    """PostgreSQL with the lockout in Redis (a plain fixture, like `store`)."""
    return store_config(request, "postgres+redis")


async def test_replicas_hash_an_identity_alike_and_apart_from_the_lockout_keys(
    redis_store: Config, aiohttp_client: Any, clock: FakeClock, logs: io.StringIO
) -> None:
    """Two replicas (one database, one KEK, one Redis) log the same hash for a name however it
    is spelled, so their events correlate; no Redis key of the lockout holds it, so a log line
    cannot be matched to the lockout's counters."""
    first = await serve(aiohttp_client, redis_store, clock)
    second = await serve(aiohttp_client, redis_store, clock)

    await login(first, "nobody", WRONG)
    await login(second, "NoBody", WRONG)

    one, two = (f["user_hash"] for f in log_lines(logs, "authn_login_fail"))
    assert one == two
    redis = redis_client_from_url(redis_store.redis_url or "")
    try:
        keys = [key async for key in redis.scan_iter(match=f"*{redis_store.redis_prefix}*")]
        values = [await redis.hgetall(key) for key in keys if await redis.type(key) == b"hash"]
    finally:
        await redis.aclose()
    assert keys  # the lockout did count the two failures there
    assert not any(one.encode() in key for key in keys)
    assert not any(one.encode() in field for value in values for field in value)


# ---- TRACE and other methods no route serves ---------------------------------------------------


async def raw_status(client: Client, request: bytes) -> tuple[int, bytes]:
    """One raw request on a fresh connection: the status and the head of the answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return int(head.split()[1]), head
    finally:
        writer.close()
        await writer.wait_closed()


def allow(resp: Any) -> set[str]:
    """The methods an answer's Allow header names."""
    return {method.strip() for method in resp.headers["Allow"].split(",")}


async def test_trace_on_forward_auth_is_405_even_with_a_good_token(client: Client) -> None:
    """TRACE on /v1/auth (a route for every method) is a 405 JSON error with Allow, even with a
    token and headers that a GET is answered 200 to; the proxies' methods still get answers."""
    token = await admin_login(client)
    headers = {**bearer(token), "X-Original-URI": "/x", "X-Original-Method": "GET"}

    refused = await client.request("TRACE", "/v1/auth", headers=headers)
    get = await client.get("/v1/auth", headers=headers)
    webdav = await client.request("PROPFIND", "/v1/auth", headers=headers)

    assert refused.status == 405
    assert refused.headers["Content-Type"] == "application/json"
    assert (await refused.json())["error"]["code"] == "method_not_allowed"
    assert allow(refused) >= {"GET", "HEAD", "POST"} and "TRACE" not in allow(refused)
    assert "X-Auth-Subject" not in refused.headers
    assert (get.status, webdav.status) == (200, 200)


@pytest.mark.parametrize("method", ["TRACK", "CONNECT"])
async def test_track_and_connect_on_forward_auth_are_refused(client: Client, method: str) -> None:
    """TRACK and CONNECT to /v1/auth, with a good token, are refused with a 4xx before any
    handler (aiohttp's parser, its router): never a 200, never the subject."""
    token = await admin_login(client)

    status, head = await raw_status(
        client,
        f"{method} /v1/auth HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
        "X-Original-URI: /x\r\n\r\n".encode(),
    )

    assert 400 <= status < 500
    assert b"X-Auth-Subject" not in head


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/verify", {"POST"}),
        ("/v1/login", {"POST"}),
        ("/healthz", {"GET", "HEAD"}),
        ("/v1/users/alice", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("/bakery/discharge", {"POST"}),
    ],
)
async def test_trace_elsewhere_is_405_with_the_routes_methods(
    client: Client, path: str, allowed: set[str]
) -> None:
    """TRACE on any other route is a 405 JSON error whose Allow names that route's methods;
    on the verify listener's route too (a TRACE is never a verify)."""
    resp = await client.request("TRACE", path, headers={"X-Trace-Me": "secret"})

    assert resp.status == 405
    assert allow(resp) == allowed
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    assert b"secret" not in await resp.read()


async def test_a_narrowed_token_gets_no_more_from_trace(client: Client) -> None:
    """A read-only token that /v1/auth allows for GET is refused for TRACE as for anything a
    route does not serve: 405, not 200 and not 403 with the subject."""
    admin_token = await admin_login(client)
    token = await mint(client, admin_token, ttl="1h", operations=["read"])

    resp = await client.request(
        "TRACE", "/v1/auth", headers={**bearer(token), "X-Original-URI": "/x"}
    )

    assert resp.status == 405


@pytest.mark.parametrize(
    "leftover",
    [
        b'{"password":\t"Tab-Secret-4242"}',
        b'{"p\\u0061ssword":"Esc-Secret-4242"}',
        b'{"username":"UserField-Secret-4242"}',
    ],
    ids=["tab", "escaped-key", "username"],
)
async def test_bytes_that_do_not_parse_are_not_logged(
    client: Client, logs: io.StringIO, leftover: bytes
) -> None:
    """A misframed login (a body longer than its Content-Length) makes the parser choke on the
    leftover bytes, which may hold a password: the log says a request could not be parsed, never
    what it held, and carries no traceback."""
    misframed = b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" + leftover

    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(misframed)
        await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
        await writer.wait_closed()

    assert b"4242" not in logs.getvalue().encode()
    assert "Traceback" not in logs.getvalue()
