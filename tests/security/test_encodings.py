"""B7: request bodies in any Content-Encoding, and clients that leave mid-body, never make a 5xx.

The rule (tokensvc.web.jsonio.read_body, the one reader of request bodies): no coding, `gzip`
(or `x-gzip`) or `deflate`, one at most, is decoded; any other coding, or a stack of them, is a
415 whose Accept-Encoding names the accepted ones; a body that does not decode is a 400; one that
decodes past the body limit a 413. A client that closes the connection before its body is all
sent is logged and counted as 499, never as a 500 or an error line.

Every endpoint that reads a body is tried, on the app as `tokensvc serve` runs it (the fast
/v1/verify path in front) and on aiohttp's path alone. The bakery discharger answers in its own
error shape (`{"Code", "Message"}`), and the self-burn revoke endpoint answers 204 to any body it
could read, whatever it held; both keep those habits here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import io
import itertools
import time
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from prometheus_client import REGISTRY

from tests.conftest import ADMIN_PASSWORD, FakeClock, make_config
from tests.security.edges_support import admin_login, bearer, captured_logs, log_lines, serve
from tests.served import ServedTestServer
from tokensvc.operations import metrics

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp import web
    from aiohttp.test_utils import TestClient

    Client = TestClient[web.Request, web.Application]

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
_names = itertools.count()


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A route that reads a request body, and a body it accepts."""

    method: str
    path: str
    content_type: str
    body: Callable[[], bytes]  # called per request: some bodies must differ (new user names)
    admin: bool = False  # sent with the bootstrap admin's token
    shape: str = "tokensvc"  # the error body: tokensvc's {"error": …}, or the bakery's {"Code": …}
    any_body: int | None = None  # the status it answers to any body it could read, if it does
    template: str | None = None  # the route's template in logs and metrics, if not `path`

    @property
    def route(self) -> str:
        return self.template or self.path


def _json(data: dict[str, Any]) -> Callable[[], bytes]:
    return lambda: orjson.dumps(data)


ENDPOINTS = {
    "verify": Endpoint("POST", "/v1/verify", JSON, _json({"token": "tsv1_nope"})),
    "login": Endpoint(
        "POST", "/v1/login", JSON, _json({"username": "admin", "password": ADMIN_PASSWORD})
    ),
    "mint": Endpoint("POST", "/v1/tokens", JSON, _json({"ttl": "1h"}), admin=True),
    "revoke": Endpoint("POST", "/v1/tokens/revoke", JSON, _json({"token": "x"}), any_body=204),
    "create user": Endpoint(
        "POST",
        "/v1/users",
        JSON,
        lambda: orjson.dumps({"name": f"user{next(_names)}", "password": "a long password here"}),
        admin=True,
    ),
    # Re-enabling an enabled user changes nothing (no new generation: the admin token lives on).
    "patch user": Endpoint(
        "PATCH",
        "/v1/users/admin",
        JSON,
        _json({"disabled": False}),
        admin=True,
        template="/v1/users/{name}",
    ),
    "introspect": Endpoint("POST", "/v1/introspect", FORM, lambda: b"token=tsv1_nope", admin=True),
    "discharge": Endpoint("POST", "/bakery/discharge", FORM, lambda: b"id64=AAAA", shape="bakery"),
}


def gzip_of(data: bytes) -> bytes:
    return gzip.compress(data)


def zlib_of(data: bytes) -> bytes:
    return zlib.compress(data)


def raw_deflate_of(data: bytes) -> bytes:
    encoder = zlib.compressobj(wbits=-15)
    return encoder.compress(data) + encoder.flush()


@pytest.fixture(params=["verify listener", "app"])
async def client(
    request: pytest.FixtureRequest,
    aiohttp_client: Any,
    sqlite_url: str,
    data_dir: Path,
    clock: FakeClock,
) -> Client:
    """The app as `tokensvc serve` runs it: its verifies sent to the verify listener, or to the
    app's own /v1/verify."""
    config = make_config(database_url=sqlite_url, data_dir=data_dir)
    return await serve(aiohttp_client, config, clock, verify_listener=request.param != "app")


@pytest.fixture
async def admin_token(client: Client) -> str:
    return await admin_login(client)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    with captured_logs() as buffer:
        yield buffer


async def send(
    client: Client,
    endpoint: Endpoint,
    admin_token: str,
    body: bytes,
    *encodings: str,
) -> tuple[int, dict[str, str], bytes]:
    """`body` to `endpoint` with one Content-Encoding line per `encodings`; status, headers, body."""
    headers = [("Content-Type", endpoint.content_type)]
    headers += [("Content-Encoding", encoding) for encoding in encodings]
    if endpoint.admin:
        headers += bearer(admin_token).items()
    resp = await client.request(endpoint.method, endpoint.path, data=body, headers=headers)
    return resp.status, dict(resp.headers), await resp.read()


def error_code(endpoint: Endpoint, body: bytes) -> str:
    """The error code of a JSON error answer, in the endpoint's shape."""
    data = orjson.loads(body)
    return str(data["Code"] if endpoint.shape == "bakery" else data["error"]["code"])


# ---- bodies that decode ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENDPOINTS)
async def test_a_body_in_an_accepted_encoding_is_answered_as_if_sent_plain(
    client: Client, admin_token: str, name: str
) -> None:
    """gzip, x-gzip, deflate (zlib-wrapped or raw) and `identity` bodies get the answer the
    plain body gets: the encoding is undone, never a 5xx."""
    endpoint = ENDPOINTS[name]
    variants: list[tuple[Callable[[bytes], bytes], tuple[str, ...]]] = [
        (gzip_of, ("gzip",)),
        (gzip_of, ("x-gzip",)),
        (gzip_of, ("GZip",)),
        (zlib_of, ("deflate",)),
        (raw_deflate_of, ("deflate",)),
        (lambda data: data, ("identity",)),
        (gzip_of, ("gzip, identity",)),
        (gzip_of, ("identity", "gzip")),
    ]

    plain, _, _ = await send(client, endpoint, admin_token, endpoint.body())
    answers = [
        (
            encodings,
            (await send(client, endpoint, admin_token, encode(endpoint.body()), *encodings))[0],
        )
        for encode, encodings in variants
    ]

    assert plain < 500
    assert answers == [(encodings, plain) for _, encodings in variants]


@pytest.mark.parametrize("name", ["verify", "login", "introspect"])
async def test_a_decompression_bomb_stops_at_the_body_limit(
    client: Client, admin_token: str, name: str
) -> None:
    """A gzip body within the 64 KiB limit that inflates to 32 MiB is a 413, decoded no further
    than the limit; one that inflates to just under the limit is read whole."""
    endpoint = ENDPOINTS[name]
    bomb = gzip_of(b" " * (32 * 1024 * 1024))
    limit = 65536  # make_config's max_body_bytes, the default
    padded = endpoint.body() + b" " * (limit - len(endpoint.body()))
    plain_padded = endpoint.body() + b" " * (limit - 1 - len(endpoint.body()))

    started = time.monotonic()
    status, _, body = await send(client, endpoint, admin_token, bomb, "gzip")
    elapsed = time.monotonic() - started
    over, _, _ = await send(client, endpoint, admin_token, gzip_of(padded + b" "), "gzip")
    under, _, _ = await send(client, endpoint, admin_token, gzip_of(plain_padded), "gzip")
    plain, _, _ = await send(client, endpoint, admin_token, plain_padded)

    assert len(bomb) < limit
    assert status == 413 and error_code(endpoint, body) == "payload_too_large"
    assert over == 413
    assert under == plain < 500
    assert elapsed < 30  # generous: only shows the 32 MiB were not all inflated and parsed


# ---- bodies that do not decode -----------------------------------------------------------------

BAD_BODIES: list[tuple[str, bytes]] = [
    ("gzip", b'{"not": "gzip"}'),  # the reviewed case: a 500 on every endpoint before
    ("gzip", gzip_of(b'{"token": "x"}')[:-6]),  # truncated
    ("gzip", gzip_of(b'{"token": "x"}') + b"trailing"),  # more after its end
    ("gzip", gzip_of(b"{}") + gzip_of(b"{}")),  # two members: not one stream
    ("x-gzip", b"\x1f\x8b\x08\x00garbage"),  # a gzip header, then garbage
    ("deflate", b"\x78\x9c garbage"),  # a zlib header, then garbage
    ("deflate", b"plain text, not deflate"),
    ("gzip", gzip_of(b"\xff\xfe not JSON nor a form")),  # decodes, then fails the endpoint's parse
]


@pytest.mark.parametrize("name", ENDPOINTS)
async def test_a_body_that_does_not_decode_is_a_400_json_error(
    client: Client, admin_token: str, name: str
) -> None:
    """A gzip or deflate body that is corrupt, truncated or followed by other bytes is a 400
    JSON error (the self-burn endpoint's 204 for anything it reads), never a 5xx."""
    endpoint = ENDPOINTS[name]

    answers = [
        await send(client, endpoint, admin_token, body, coding) for coding, body in BAD_BODIES
    ]

    expected = endpoint.any_body or 400
    assert [status for status, _, _ in answers] == [expected] * len(BAD_BODIES)
    if endpoint.any_body is None:
        for _, headers, body in answers[:-1]:
            assert headers["Content-Type"] == JSON
            assert error_code(endpoint, body) == "bad_request" or endpoint.shape == "bakery"


# ---- encodings that are not accepted -----------------------------------------------------------

UNACCEPTED: list[tuple[str, ...]] = [
    ("br",),
    ("zstd",),
    ("compress",),
    ("x-custom-coding",),
    ("gzip, gzip",),  # stacked in one line
    ("gzip", "deflate"),  # stacked over two lines
    ("deflate, gzip",),
    ("gzip;q=1",),
    ("\u00e9",),
]


@pytest.mark.parametrize("name", ENDPOINTS)
async def test_an_unknown_or_stacked_encoding_is_a_415_naming_the_accepted_ones(
    client: Client, admin_token: str, name: str
) -> None:
    """Content-Encodings other than one of gzip or deflate, stacks included, are a 415 JSON
    error with `Accept-Encoding: gzip, deflate`, whatever the body (even one that is valid)."""
    endpoint = ENDPOINTS[name]
    bodies = [endpoint.body(), gzip_of(endpoint.body()), b"\x00\xff garbage"]

    answers = [
        await send(client, endpoint, admin_token, body, *encodings)
        for encodings in UNACCEPTED
        for body in bodies
    ]

    assert [status for status, _, _ in answers] == [415] * len(answers)
    for _, headers, body in answers:
        assert headers["Accept-Encoding"] == "gzip, deflate"
        assert headers["Content-Type"] == JSON
        expected = "bad request" if endpoint.shape == "bakery" else "unsupported_media_type"
        assert error_code(endpoint, body) == expected


# ---- the verify listener ----------------------------------------------------------------------


def verify_request(body: bytes, *encodings: str) -> bytes:
    fields = "".join(f"Content-Encoding: {encoding}\r\n" for encoding in encodings)
    head = (
        "POST /v1/verify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{fields}\r\n"
    )
    return head.encode("latin-1") + body


async def statuses(client: Client, port: int, *requests: bytes) -> list[int]:
    """Send `requests` in order on one fresh connection to `port`; the status of each answer."""
    reader, writer = await asyncio.open_connection(client.server.host, port)
    found = []
    try:
        for request in requests:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await asyncio.wait_for(reader.readexactly(length), 10)
            found.append(int(head.split()[1]))
    finally:
        writer.close()
        await writer.wait_closed()
    return found


async def test_encoded_verifies_get_the_same_answers_from_the_listener_and_the_app(
    aiohttp_client: Any, sqlite_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """Encoded verifies get the app's answers from the verify listener too (both decide with
    tokensvc.web.jsonio): even a coding aiohttp does not know, with a body that would parse as
    it is, is a 415."""
    served = await serve(
        aiohttp_client, make_config(database_url=sqlite_url, data_dir=data_dir), clock
    )
    server = served.server
    assert isinstance(server, ServedTestServer)
    plain = b'{"token": "tsv1_nope"}'
    requests = [
        verify_request(plain, "x-custom"),
        verify_request(b'{"not": "gzip"}', "gzip"),
        verify_request(gzip_of(plain), "gzip"),
        verify_request(gzip_of(plain), "GZIP, identity"),
        verify_request(gzip_of(gzip_of(plain)), "gzip, gzip"),
        verify_request(plain, "identity"),
        verify_request(plain),
    ]

    on_listener = await statuses(served, server.verify_port, *requests)
    on_app = await statuses(served, server.port, *requests)

    assert on_listener == on_app == [415, 400, 401, 401, 415, 401, 401]


# ---- clients that leave mid-body ---------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    metrics.flush_requests()
    return REGISTRY.get_sample_value(name, labels) or 0.0


def requests_of(route: str, status_class: str) -> float:
    return sample(
        "tokensvc_http_request_duration_seconds_count", route=route, status_class=status_class
    )


async def wait_for_line(logs: io.StringIO, route: str, status: int) -> list[dict[str, Any]]:
    """The access lines of `route`, once one with `status` is among them (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        found = [line for line in log_lines(logs, "http_request") if line["route"] == route]
        if any(line["status"] == status for line in found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("coding", [None, "gzip"])
@pytest.mark.parametrize("name", ENDPOINTS)
async def test_a_client_that_leaves_mid_body_is_a_499_not_a_server_error(
    client: Client, admin_token: str, logs: io.StringIO, name: str, coding: str | None
) -> None:
    """A client that sends half its body and closes the connection is logged and counted as a
    499: no 5xx in the access line or the metrics, no error in the log."""
    endpoint = ENDPOINTS[name]
    body = endpoint.body() if coding is None else gzip_of(endpoint.body())
    fields = f"Content-Type: {endpoint.content_type}\r\nContent-Length: {len(body) + 1000}\r\n"
    if coding is not None:
        fields += f"Content-Encoding: {coding}\r\n"
    if endpoint.admin:
        fields += f"Authorization: Bearer {admin_token}\r\n"
    head = f"{endpoint.method} {endpoint.path} HTTP/1.1\r\nHost: test\r\n{fields}\r\n".encode()
    errors_before = requests_of(endpoint.route, "5xx")
    refused_before = requests_of(endpoint.route, "4xx")

    _reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + body)
    await writer.drain()
    await asyncio.sleep(0.5)  # the handler is waiting for the rest of the body by now
    writer.close()
    await writer.wait_closed()
    lines = await wait_for_line(logs, endpoint.route, 499)

    assert [line["status"] for line in lines] == [499]
    assert requests_of(endpoint.route, "5xx") == errors_before
    assert requests_of(endpoint.route, "4xx") == refused_before + 1
    assert [line for line in log_lines(logs) if line.get("level") in ("error", "critical")] == []
