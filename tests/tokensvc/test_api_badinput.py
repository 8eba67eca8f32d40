"""Hostile and malformed input over HTTP: always a 4xx JSON answer in bounded time, never a 500.

The per-case tests run on PostgreSQL and SQLite (the `client` fixture); the hypothesis tests start
the app once per test themselves, since hypothesis and function-scoped fixtures don't mix.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pymacaroons
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tokensvc.operations.config import Config
from tokensvc.web.app import create_app

if TYPE_CHECKING:
    from aiohttp import web
    from pytest_aiohttp import AiohttpClient

    Client = TestClient[web.Request, web.Application]

#: Every request below must be answered within this many seconds.
BOUND_SECONDS = 2.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: Any) -> str:
    resp = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


async def minted(client: Any) -> str:
    """A genuine token for `alice`, minted through the API."""
    resp = await client.post(
        "/v1/tokens", json={"subject": "alice"}, headers=bearer(await login(client))
    )
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["token"])


def pymacaroon(token: str) -> pymacaroons.Macaroon:
    return pymacaroons.Macaroon.deserialize(token[5:].rpartition(".")[0])


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# ---- the hostile requests -----------------------------------------------------------------------------
#
# Each case builds (method, path, keyword arguments for the client) from a running client; the
# expected statuses are what a careful service answers, and every answer must be a JSON error.

Request = tuple[str, str, dict[str, Any]]
Case = Callable[[Any], Awaitable[Request]]


def verify_json(body: Any) -> Request:
    return "POST", "/v1/verify", {"json": body}


def verify_raw(data: bytes, content_type: str = "application/json") -> Request:
    return "POST", "/v1/verify", {"data": data, "headers": {"Content-Type": content_type}}


async def garbage(client: Any) -> Request:
    return verify_json({"token": "hello, world! this is not a token"})


async def truncated_base64(client: Any) -> Request:
    payload = (await minted(client))[5:].rpartition(".")[0]
    return verify_json({"token": payload[: len(payload) // 2 + 1]})


async def truncated_tsv1(client: Any) -> Request:
    token = await minted(client)
    return verify_json({"token": token[: len(token) // 2]})


async def bad_checksum(client: Any) -> Request:
    body, _, check = (await minted(client)).rpartition(".")
    return verify_json({"token": f"{body}.{'0' * 8 if check != '0' * 8 else '1' * 8}"})


async def unknown_version_bytes(client: Any) -> Request:
    return verify_json({"token": b64(b"\x05" + os.urandom(60))})


async def unknown_version_in_tsv1(client: Any) -> Request:
    import zlib

    body = "tsv1_" + b64(b"\x05" + os.urandom(60))
    return verify_json({"token": f"{body}.{zlib.crc32(body.encode()):08x}"})


async def token_over_the_size_limit(client: Any) -> Request:
    return verify_json({"token": "tsv1_" + "A" * 17000 + ".00000000"})


async def non_json_body(client: Any) -> Request:
    return verify_raw(b"token=tsv1_abc", "application/x-www-form-urlencoded")


async def broken_json(client: Any) -> Request:
    return verify_raw(b'{"token": "tsv1_')


async def empty_body(client: Any) -> Request:
    return verify_raw(b"")


async def json_array_body(client: Any) -> Request:
    return verify_json(["tsv1_abc"])


async def body_over_the_size_limit(client: Any) -> Request:
    return verify_raw(b'{"token": "' + b"A" * 70000 + b'"}')


async def token_not_a_string(client: Any) -> Request:
    return verify_json({"token": {"nested": ["x"]}})


async def discharges_not_a_list(client: Any) -> Request:
    return verify_json({"token": await minted(client), "discharges": "tsv1_abc"})


async def discharges_not_strings(client: Any) -> Request:
    return verify_json({"token": await minted(client), "discharges": [1, 2]})


async def too_many_discharges(client: Any) -> Request:
    token = await minted(client)
    m = pymacaroon(token)
    discharges = [
        m.prepare_for_request(
            pymacaroons.Macaroon(identifier=f"d{i}", key=os.urandom(32), version=2)
        ).serialize()
        for i in range(20)
    ]
    return verify_json({"token": token, "discharges": discharges})


async def context_not_an_object(client: Any) -> Request:
    return verify_json({"token": await minted(client), "context": ["read"]})


async def unknown_context_field(client: Any) -> Request:
    return verify_json({"token": await minted(client), "context": {"operation": "read", "x": "1"}})


async def unknown_top_level_field(client: Any) -> Request:
    return verify_json({"token": await minted(client), "tokens": []})


async def deeply_nested_discharges(client: Any) -> Request:
    """A third-party caveat discharged through a chain of 12 nested discharges, each bound to the token."""
    token = pymacaroon(await minted(client))
    keys = [os.urandom(32) for _ in range(12)]
    token.add_third_party_caveat("https://tp", keys[0], "d0")
    links = []
    for depth in range(12):
        link = pymacaroons.Macaroon(
            location="https://tp", identifier=f"d{depth}", key=keys[depth], version=2
        )
        if depth + 1 < len(keys):
            link.add_third_party_caveat("https://tp", keys[depth + 1], f"d{depth + 1}")
        links.append(token.prepare_for_request(link).serialize())
    return verify_json({"token": token.serialize(), "discharges": links})


async def self_referencing_discharge(client: Any) -> Request:
    """A discharge whose own third-party caveat names itself (pymacaroons' Verifier recurses forever)."""
    token = pymacaroon(await minted(client))
    key = os.urandom(32)
    token.add_third_party_caveat("https://tp", key, "loop")
    loop = pymacaroons.Macaroon(location="https://tp", identifier="loop", key=key, version=2)
    loop.add_third_party_caveat("https://tp", key, "loop")
    return verify_json(
        {"token": token.serialize(), "discharges": [token.prepare_for_request(loop).serialize()]}
    )


async def discharge_cycle(client: Any) -> Request:
    """Two discharges, each with a third-party caveat the other discharges."""
    token = pymacaroon(await minted(client))
    ka, kb = os.urandom(32), os.urandom(32)
    token.add_third_party_caveat("https://tp", ka, "a")
    a = pymacaroons.Macaroon(location="https://tp", identifier="a", key=ka, version=2)
    a.add_third_party_caveat("https://tp", kb, "b")
    b = pymacaroons.Macaroon(location="https://tp", identifier="b", key=kb, version=2)
    b.add_third_party_caveat("https://tp", ka, "a")
    bound = [token.prepare_for_request(d).serialize() for d in (a, b)]
    return verify_json({"token": token.serialize(), "discharges": bound})


async def ten_thousand_caveats(client: Any) -> Request:
    token = pymacaroon(await minted(client))
    for _ in range(10_000):
        token.add_first_party_caveat("allow a")
    return verify_json({"token": token.serialize()})


async def non_ascii_tsv1(client: Any) -> Request:
    return verify_json({"token": "tsv1_\u00e9t\u00e9.00000000"})


async def non_ascii_discharge(client: Any) -> Request:
    return verify_json({"token": await minted(client), "discharges": ["tsv1_\u00e9.00000000"]})


async def discharge_over_the_size_limit(client: Any) -> Request:
    return verify_json({"token": await minted(client), "discharges": ["A" * 17000]})


async def foreign_macaroon(client: Any) -> Request:
    """A well-formed macaroon that tokensvc never minted (pymacaroons, its own key and identifier)."""
    m = pymacaroons.Macaroon(
        location="elsewhere", identifier="someone-else", key=os.urandom(32), version=2
    )
    return verify_json({"token": m.serialize()})


async def unknown_key_id(client: Any) -> Request:
    """Our identifier format naming a root key that never existed."""
    ident = b"\x01\x00" + os.urandom(16) + b"0123456789abcdef"
    m = pymacaroons.Macaroon(location="tokensvc", identifier=ident, key=os.urandom(32), version=2)
    m.add_first_party_caveat('[2,"admin"]')
    return verify_json({"token": m.serialize()})


async def wrong_method(client: Any) -> Request:
    return "GET", "/v1/verify", {}


async def wrong_method_on_mint(client: Any) -> Request:
    return "PUT", "/v1/tokens", {"json": {}}


async def unknown_path(client: Any) -> Request:
    return "GET", "/v1/nothing-here", {}


async def bad_basic_credentials(client: Any) -> Request:
    return "POST", "/v1/login", {"headers": {"Authorization": "Basic %%%not-base64"}}


async def non_ascii_basic_credentials(client: Any) -> Request:
    return "POST", "/v1/login", {"headers": {"Authorization": "Basic \u00e9t\u00e9"}}


async def mint_with_non_ascii_bearer(client: Any) -> Request:
    return (
        "POST",
        "/v1/tokens",
        {"json": {"subject": "x"}, "headers": bearer("tsv1_\u00e9.00000000")},
    )


async def login_with_array_body(client: Any) -> Request:
    return "POST", "/v1/login", {"json": [1, 2, 3]}


async def mint_with_garbage_bearer(client: Any) -> Request:
    return (
        "POST",
        "/v1/tokens",
        {"json": {"subject": "x"}, "headers": bearer("tsv1_" + "!~" * 100 + ".deadbeef")},
    )


CASES: dict[str, tuple[Case, set[int]]] = {
    "garbage": (garbage, {400, 401}),
    "truncated base64": (truncated_base64, {400, 401}),
    "truncated tsv1": (truncated_tsv1, {400, 401}),
    "tsv1 with a bad checksum": (bad_checksum, {401}),
    "unknown version bytes": (unknown_version_bytes, {400, 401}),
    "unknown version bytes in tsv1": (unknown_version_in_tsv1, {400, 401}),
    "token over max_token_bytes": (token_over_the_size_limit, {413}),
    "non-JSON body": (non_json_body, {400, 415}),
    "broken JSON": (broken_json, {400}),
    "empty body": (empty_body, {400}),
    "JSON array body": (json_array_body, {400}),
    "body over max_body_bytes": (body_over_the_size_limit, {413}),
    "token not a string": (token_not_a_string, {400}),
    "discharges not a list": (discharges_not_a_list, {400}),
    "discharges not strings": (discharges_not_strings, {400}),
    "20 discharges": (too_many_discharges, {400}),
    "context not an object": (context_not_an_object, {400}),
    "unknown context field": (unknown_context_field, {400}),
    "unknown top-level field": (unknown_top_level_field, {400}),
    "deeply nested discharges": (deeply_nested_discharges, {401}),
    "self-referencing discharge": (self_referencing_discharge, {401}),
    "discharge cycle": (discharge_cycle, {401}),
    "10,000 caveats": (ten_thousand_caveats, {400, 401, 413}),
    "non-ASCII tsv1 token": (non_ascii_tsv1, {400, 401}),
    "non-ASCII discharge": (non_ascii_discharge, {400, 401}),
    "discharge over max_token_bytes": (discharge_over_the_size_limit, {413}),
    "foreign macaroon": (foreign_macaroon, {401}),
    "unknown key id": (unknown_key_id, {401}),
    "wrong method": (wrong_method, {405}),
    "wrong method on mint": (wrong_method_on_mint, {405}),
    "unknown path": (unknown_path, {404}),
    "malformed Basic credentials": (bad_basic_credentials, {400, 401}),
    "login with a JSON array": (login_with_array_body, {400}),
    "non-ASCII Basic credentials": (non_ascii_basic_credentials, {400, 401}),
    "mint with a non-ASCII bearer token": (mint_with_non_ascii_bearer, {400, 401}),
    "mint with a garbage bearer token": (mint_with_garbage_bearer, {400, 401}),
}


async def send(client: Any, request: Request) -> tuple[int, dict[str, Any], float, str]:
    """Send one request; status, JSON body, seconds taken, content type."""
    method, path, kwargs = request
    started = time.perf_counter()
    resp = await client.request(method, path, **kwargs)
    raw = await resp.read()
    elapsed = time.perf_counter() - started
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"not json": raw[:200].decode("utf-8", "replace")}
    return resp.status, body, elapsed, resp.content_type


def assert_error_shape(status: int, body: dict[str, Any], path: str) -> None:
    """`{"error": {"code", "message"}}`, plus `valid: false` and a reason for /v1/verify's 401/403."""
    assert isinstance(body, dict), body
    assert set(body.get("error", {})) == {"code", "message"}, body
    assert body["error"]["code"] and body["error"]["message"], body
    if path == "/v1/verify" and status in (401, 403):
        assert body["valid"] is False and body["reason"], body


async def outcome(client: Any, name: str) -> str:
    """`ok` when case `name` is answered as it must be, else what went wrong."""
    build, expected = CASES[name]
    request = await build(client)
    status, body, elapsed, content_type = await send(client, request)
    if status not in expected:
        return f"status {status}, expected one of {sorted(expected)}: {str(body)[:300]}"
    if content_type != "application/json":
        return f"content type {content_type}"
    try:
        assert_error_shape(status, body, request[1])
    except AssertionError:
        return f"not the JSON error shape: {str(body)[:300]}"
    if elapsed >= BOUND_SECONDS:
        return f"took {elapsed:.2f}s"
    return "ok"


GROUPS = {
    "malformed tokens": [
        "garbage",
        "truncated base64",
        "truncated tsv1",
        "tsv1 with a bad checksum",
        "unknown version bytes",
        "unknown version bytes in tsv1",
        "token over max_token_bytes",
        "10,000 caveats",
        "non-ASCII tsv1 token",
        "foreign macaroon",
        "unknown key id",
    ],
    "malformed bodies": [
        "non-JSON body",
        "broken JSON",
        "empty body",
        "JSON array body",
        "body over max_body_bytes",
        "token not a string",
        "discharges not a list",
        "discharges not strings",
        "context not an object",
        "unknown context field",
        "unknown top-level field",
    ],
    "hostile discharges": [
        "20 discharges",
        "deeply nested discharges",
        "self-referencing discharge",
        "discharge cycle",
        "non-ASCII discharge",
        "discharge over max_token_bytes",
    ],
    "routing and other endpoints": [
        "wrong method",
        "wrong method on mint",
        "unknown path",
        "malformed Basic credentials",
        "login with a JSON array",
        "mint with a garbage bearer token",
        "non-ASCII Basic credentials",
        "mint with a non-ASCII bearer token",
    ],
}
assert sorted(name for names in GROUPS.values() for name in names) == sorted(CASES)


@pytest.mark.parametrize("group", list(GROUPS))
async def test_bad_input_is_a_bounded_4xx_json_error(client: Client, group: str) -> None:
    """Each hostile request gets one of its expected 4xx statuses as a JSON error, quickly, never a 500."""
    names = GROUPS[group]

    got = {name: await outcome(client, name) for name in names}

    assert got == dict.fromkeys(names, "ok")


async def test_service_still_verifies_after_the_hostile_requests(client: Client) -> None:
    """After every hostile request in a row, a genuine token still verifies (nothing broke or locked up)."""
    token = await minted(client)
    for build, _ in CASES.values():
        await send(client, await build(client))

    resp = await client.post("/v1/verify", json={"token": token})

    assert resp.status == 200, await resp.text()


@pytest.mark.serial  # wall-clock bound: run alone
async def test_caveat_count_limit_refuses_10000_caveats_before_any_crypto(
    aiohttp_client: AiohttpClient, app_config: Config
) -> None:
    """With the size limits raised out of the way, a 10,000-caveat token is refused by the caveat limit, quickly."""
    roomy = app_config.model_copy(update={"max_token_bytes": 1 << 20, "max_body_bytes": 2 << 20})
    client = await aiohttp_client(create_app(roomy))
    token = pymacaroon(await minted(client))
    for _ in range(10_000):
        token.add_first_party_caveat("allow a")

    status, body, elapsed, _ = await send(client, verify_json({"token": token.serialize()}))

    assert status == 401, body
    assert "caveats" in body["reason"]
    assert elapsed < BOUND_SECONDS


@pytest.mark.serial  # wall-clock bound: run alone
async def test_configured_token_size_limit_is_enforced_before_decoding(
    aiohttp_client: AiohttpClient, app_config: Config
) -> None:
    """With max_token_bytes set to 512, a genuine token grown past 512 characters by caveats is a 413; under it, a 200."""
    small = app_config.model_copy(update={"max_token_bytes": 512})
    client = await aiohttp_client(create_app(small))
    token = await minted(client)
    grown = pymacaroon(token)
    while len(grown.serialize()) <= 512:
        grown.add_first_party_caveat("allow read write list")

    status, body, elapsed, _ = await send(client, verify_json({"token": grown.serialize()}))
    under, _, _, _ = await send(client, verify_json({"token": token}))

    assert len(token) < 512
    assert status == 413, body
    assert set(body["error"]) == {"code", "message"}
    assert elapsed < BOUND_SECONDS
    assert under == 200


# ---- property-based: random strings as the token --------------------------------------------------------


async def start(config: Config) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config)))
    await client.start_server()
    return client


def run_property(config: Config, strategy: st.SearchStrategy[str], max_examples: int) -> None:
    """Check with hypothesis that every token drawn from `strategy` gets 400, 401 or 413, in bounded time."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        client = runner.run(start(config))
        try:

            @settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(token=strategy)
            def check(token: str) -> None:
                status, body, elapsed, _ = runner.run(send(client, verify_json({"token": token})))
                assert status in {400, 401, 413}, (status, body)
                assert_error_shape(status, body, "/v1/verify")
                assert elapsed < BOUND_SECONDS

            check()
        finally:
            runner.run(client.close())


def tsv1_like() -> st.SearchStrategy[str]:
    """Strings that look like our tokens: the prefix, base64url, a dot and 8 hex digits."""
    return st.from_regex(r"\Atsv1_[A-Za-z0-9_-]{0,200}\.[0-9a-f]{8}\Z")


def after_the_prefix() -> st.SearchStrategy[str]:
    """`tsv1_` followed by any text, with or without something checksum-like at the end."""
    return st.builds(
        lambda body, check: f"tsv1_{body}{check}",
        st.text(max_size=200),
        st.sampled_from(["", ".", ".00000000", ".deadbeef"]),
    )


def base64_of_bytes() -> st.SearchStrategy[str]:
    """Base64 of random bytes, biased to start like a v2 (0x02) or v1 (hex digit) macaroon."""
    lead = st.sampled_from([b"\x02", b"\x02\x01", b"\x02\x02", b"0", b"a", b""])
    return st.tuples(lead, st.binary(max_size=300)).map(lambda t: b64(t[0] + t[1]))


def test_random_strings_as_the_token_are_refused(app_config: Config) -> None:
    """Arbitrary text as the token is a 400, 401 or 413 JSON error, never a 500."""
    run_property(app_config, st.text(max_size=300), max_examples=150)


def test_random_token_lookalikes_are_refused(app_config: Config) -> None:
    """`tsv1_`-shaped strings, `tsv1_` + any text, and base64 of macaroon-ish bytes: 400, 401 or 413, never a 500."""
    run_property(
        app_config, st.one_of(tsv1_like(), after_the_prefix(), base64_of_bytes()), max_examples=200
    )


async def raw_exchange(client: Client, request: bytes) -> tuple[bytes, bytes]:
    """Send `request` as raw bytes; the answer's head and body, which must come within 5 s."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            return head, await reader.readexactly(length)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "withheld",
    [
        b"Content-Length: 100\r\n\r\n{}",  # announces 100 bytes, sends 2
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",  # never sends the last chunk
    ],
)
async def test_a_withheld_body_is_a_408_in_bounded_time(
    client: Client, monkeypatch: pytest.MonkeyPatch, withheld: bytes
) -> None:
    """Red team: a request whose body never completes was never answered (45 s and counting),
    holding its request and its governor slot for as long as the client kept the connection.
    The body must arrive within BODY_TIMEOUT (30 s; 0.5 s here): then a JSON 408."""
    from tokensvc.web import jsonio

    monkeypatch.setattr(jsonio, "BODY_TIMEOUT", 0.5)
    head, body = await raw_exchange(client, b"POST /v1/login HTTP/1.1\r\nHost: x\r\n" + withheld)

    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body)["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("path", ["/v1/verify", "/v1/login"])
async def test_a_body_announced_over_the_limit_is_a_413_at_once(client: Client, path: str) -> None:
    """Red team (helper-67): a Content-Length of 10^12 and no body waited for the body timeout
    (a 408 after 30 s) on the service port, where the verify port answers 413 at once."""
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n"
    head, body = await raw_exchange(client, request.encode())  # within 5 s; the body's is 30 s

    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"]["code"] == "payload_too_large"
