"""B4: the client address behind a trusted proxy cannot be chosen by the client.

The rule (shared/DESIGN.md, tokensvc.web.auth.client_address): the peer address, unless the peer
is a trusted proxy; then every X-Forwarded-For line joined as one list, walked from the right,
the first untrusted hop wins. HAProxy's `option forwardfor` appends its own line after the
client's, so a service that read only the first line let the client choose its address: lockout
evaded, a CIDR caveat bypassed, the owner locked out of the address they use.

The test client connects from 127.0.0.1, which these apps trust as the proxy (with a second,
inner network of proxies, 192.168.0.0/16, and an IPv6 one). Lockout tests run on SQLite with the
in-process lockout and on PostgreSQL with Redis.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import FakeClock, basic_auth
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
from tests.served import ServedTestServer
from tokensvc.web.auth import client_address

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]

TRUSTED = ("127.0.0.1/32", "192.168.0.0/16", "2001:db8:ffff::/48")
REAL = "198.51.100.9"  # the address the proxy saw the client connect from


def forwarded(*lines: str) -> list[tuple[str, str]]:
    """One X-Forwarded-For header line per argument, in order, as a proxy chain sends them."""
    return [("X-Forwarded-For", line) for line in lines]


async def login(client: Client, name: str, password: str, *lines: str) -> int:
    """POST /v1/login with Basic credentials and these X-Forwarded-For lines; the status."""
    headers = [*basic_auth(name, password).items(), *forwarded(*lines)]
    resp = await client.post("/v1/login", headers=headers)
    await resp.read()
    return resp.status


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Config:
    """Each store in turn (a plain fixture: it sets up the async database fixtures it needs)."""
    return store_config(request, request.param)


@pytest.fixture
async def proxied(store: Config, aiohttp_client: Any, clock: FakeClock) -> tuple[Client, str]:
    """The app behind trusted proxies, on each store; alice exists. The client and an admin token."""
    config = store.model_copy(update={"trusted_proxies": TRUSTED})
    client = await serve(aiohttp_client, config, clock)
    admin_token = await admin_login(client)
    await create_alice(client, admin_token)
    return client, admin_token


@pytest.fixture
async def direct(store: Config, aiohttp_client: Any, clock: FakeClock) -> Client:
    """The app with no trusted proxy, on each store; alice exists."""
    client = await serve(aiohttp_client, store, clock)
    await create_alice(client, await admin_login(client))
    return client


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    with captured_logs() as buffer:
        yield buffer


# ---- lockout -----------------------------------------------------------------------------------


async def test_a_forged_first_line_does_not_evade_the_lockout(proxied: tuple[Client, str]) -> None:
    """A client that writes a fresh first X-Forwarded-For line per guess, its proxy appending the
    real address as a second line, is counted at its real address: locked after 5 failures."""
    client, _ = proxied

    guesses = [await login(client, "alice", WRONG, f"203.0.113.{n}", REAL) for n in range(8)]
    right_password = await login(client, "alice", ALICE_PASSWORD, "192.0.2.1", REAL)

    assert guesses == [401] * 5 + [429] * 3
    assert right_password == 429


@pytest.mark.parametrize(
    "lines",
    [
        # the client's own list, comma-separated, then the proxy's line
        ("203.0.113.{n}, 10.1.1.{n}", REAL),
        # the proxy extends the client's last line instead of appending one
        ("203.0.113.{n}", "192.0.2.{n}, " + REAL),
        # two proxies: the outer one (192.168.1.1, trusted) appends REAL, the inner one (the
        # peer) appends the outer one's address
        ("203.0.113.{n}", REAL, "192.168.1.1"),
        # empty lines and empty list elements around the forged ones
        ("", "203.0.113.{n},,", REAL),
    ],
)
async def test_every_mix_of_lines_and_lists_is_one_list(
    proxied: tuple[Client, str], lines: tuple[str, ...]
) -> None:
    """However the hops are split between header lines and comma-separated lists, the client's
    forged hops lie left of the real one and change nothing: the sixth guess is refused."""
    client, _ = proxied

    guesses = [
        await login(client, "alice", WRONG, *(line.format(n=n) for line in lines)) for n in range(6)
    ]

    assert guesses == [401] * 5 + [429]


async def test_the_owner_is_not_locked_out_of_the_address_they_use(
    proxied: tuple[Client, str],
) -> None:
    """An attacker who names alice's home address in a forged first line locks only itself:
    alice still logs in from home, the attacker's own address is locked."""
    client, admin_token = proxied
    home, attacker = "198.51.100.20", "203.0.113.66"
    assert await login(client, "alice", ALICE_PASSWORD, home) == 200

    attack = [await login(client, "alice", WRONG, home, attacker) for _ in range(8)]
    from_home = await login(client, "alice", ALICE_PASSWORD, home)
    attacker_with_right_password = await login(client, "alice", ALICE_PASSWORD, attacker)
    status = await client.get("/v1/users/alice/lockout", headers=bearer(admin_token))

    assert attack == [401] * 5 + [429] * 3
    assert from_home == 200
    assert attacker_with_right_password == 429
    assert status.status == 200 and (await status.json())["trusted_ips"] == 1


async def test_forwarded_lines_from_an_untrusted_peer_are_ignored(direct: Client) -> None:
    """Without a trusted proxy, X-Forwarded-For lines, however many, are ignored: five failures
    from the socket's address lock it, whatever addresses the header names."""
    guesses = [
        await login(direct, "alice", WRONG, f"203.0.113.{n}", f"198.51.100.{n}") for n in range(5)
    ]

    locked = await login(direct, "alice", ALICE_PASSWORD, "192.0.2.77", "192.0.2.78")

    assert guesses == [401] * 5
    assert locked == 429


async def test_ipv4_mapped_and_bracketed_spellings_are_one_client(
    proxied: tuple[Client, str],
) -> None:
    """`198.51.100.9`, `::ffff:198.51.100.9`, `198.51.100.9:4711` and `[::ffff:198.51.100.9]:80`
    are one client: respelling the address gives no fresh lockout counter."""
    client, _ = proxied
    spellings = [REAL, f"::ffff:{REAL}", f"{REAL}:4711", f"[::ffff:{REAL}]:80", f"::FFFF:{REAL}"]

    guesses = [await login(client, "alice", WRONG, "203.0.113.1", s) for s in spellings]
    locked = await login(client, "alice", ALICE_PASSWORD, REAL)

    assert guesses == [401] * 5
    assert locked == 429


# ---- CIDR caveats ------------------------------------------------------------------------------


async def test_a_forged_first_line_does_not_satisfy_a_cidr_caveat(
    proxied: tuple[Client, str],
) -> None:
    """A token limited to 10.0.0.0/8, used from 198.51.100.9 with a forged `10.1.2.3` first
    line, is denied at forward-auth; from a 10.x client behind the same proxy it is allowed."""
    client, admin_token = proxied
    token = await mint(client, admin_token, subject="alice", ttl="1h", cidrs=["10.0.0.0/8"])
    headers = [*bearer(token).items(), ("X-Original-Method", "GET"), ("X-Original-URI", "/x")]

    forged = await client.get("/v1/auth", headers=[*headers, *forwarded("10.1.2.3", REAL)])
    inside = await client.get("/v1/auth", headers=[*headers, *forwarded(REAL, "10.1.2.3")])

    assert forged.status == 403
    assert inside.status == 200


async def test_a_forged_first_line_does_not_open_the_admin_api(
    proxied: tuple[Client, str],
) -> None:
    """An admin token limited to 10.0.0.0/8 is refused on the admin API from 198.51.100.9, forged
    first line or not, and accepted from an address inside its range."""
    client, admin_token = proxied
    narrow = await mint(client, admin_token, ttl="1h", admin=True, cidrs=["10.0.0.0/8"])

    forged = await client.get(
        "/v1/users", headers=[*bearer(narrow).items(), *forwarded("10.1.2.3", REAL)]
    )
    plain = await client.get("/v1/users", headers=[*bearer(narrow).items(), *forwarded(REAL)])
    inside = await client.get(
        "/v1/users", headers=[*bearer(narrow).items(), *forwarded("10.1.2.3")]
    )

    assert forged.status == 403
    assert plain.status == 403
    assert inside.status == 200


# ---- both verify paths and the access line -----------------------------------------------------


async def exchange(client: Client, request: bytes) -> int:
    """Send one raw HTTP request to the verify listener; the status of the answer."""
    server = client.server
    assert isinstance(server, ServedTestServer)
    reader, writer = await asyncio.open_connection(server.host, server.verify_port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return int(head.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


def verify_request(*lines: str) -> bytes:
    """A POST /v1/verify of a bogus token with these X-Forwarded-For lines."""
    body = b'{"token": "tsv1_nope"}'
    fields = "".join(f"X-Forwarded-For: {line}\r\n" for line in lines)
    head = (
        "POST /v1/verify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{fields}\r\n"
    )
    return head.encode() + body


async def test_the_verify_listener_and_the_pipeline_log_the_same_client(
    proxied: tuple[Client, str], logs: io.StringIO
) -> None:
    """Verifies on the listener with one X-Forwarded-For line, with several, and a request on
    the app all log one client: the rightmost untrusted hop, never the forged first one."""
    client, _ = proxied

    one = await exchange(client, verify_request(f"10.9.9.9, {REAL}"))
    several = await exchange(client, verify_request("10.9.9.9", REAL))
    three = await exchange(client, verify_request("10.9.9.9", REAL, "192.168.7.7"))
    other = await client.get("/healthz", headers=forwarded("10.9.9.9", REAL))

    assert (one, several, three, other.status) == (401, 401, 401, 200)
    access = log_lines(logs, "http_request")
    assert [line["client_ip"] for line in access[-4:]] == [REAL] * 4


async def test_a_hop_that_is_not_an_address_is_never_the_client(
    proxied: tuple[Client, str], logs: io.StringIO
) -> None:
    """Garbage in X-Forwarded-For never becomes the client address: right of the real hop it
    leaves the trusted proxy as the client, left of it it is simply not reached."""
    client, _ = proxied

    await client.get("/healthz", headers=forwarded(REAL, "not-an-address"))
    await client.get("/healthz", headers=forwarded("not-an-address", REAL))
    await client.get("/healthz", headers=forwarded("x" * 4000, "unknown, " + REAL))

    addresses = [line["client_ip"] for line in log_lines(logs, "http_request")[-3:]]
    assert addresses == ["127.0.0.1", REAL, REAL]


# ---- the rule itself ---------------------------------------------------------------------------

NETWORKS = tuple(ipaddress.ip_network(n) for n in TRUSTED)


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        # an untrusted peer is the client, whatever it sends
        ("203.0.113.5", "10.0.0.1", "203.0.113.5"),
        ("2001:db8:1::5", "10.0.0.1", "2001:db8:1::5"),
        # a trusted peer: the rightmost untrusted hop
        ("127.0.0.1", "10.0.0.1, 203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", "203.0.113.5, 192.168.1.1, 192.168.1.2", "203.0.113.5"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", " , ,", "127.0.0.1"),
        # every hop trusted: the leftmost one is where the request came from
        ("127.0.0.1", "192.168.1.1, 192.168.1.2", "192.168.1.1"),
        # IPv6 hops, trusted and not, bracketed, with ports; one canonical spelling
        ("127.0.0.1", "2001:db8:1::5, 2001:db8:ffff::1", "2001:db8:1::5"),
        ("127.0.0.1", "[2001:DB8:1:0:0::5]:4711", "2001:db8:1::5"),
        ("127.0.0.1", "[2001:db8:1::5]", "2001:db8:1::5"),
        ("::ffff:127.0.0.1", "203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", "::ffff:203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", "203.0.113.5:8080", "203.0.113.5"),
        # garbage ends the walk at the last address walked
        ("127.0.0.1", "203.0.113.5, garbage", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.5, garbage, 192.168.1.1", "192.168.1.1"),
        ("127.0.0.1", "garbage, 203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", "[2001:db8::1", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.5:http", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.5\x00", "127.0.0.1"),
        # a peer that is no address (a Unix socket) is not trusted
        ("", "203.0.113.5", ""),
    ],
)
def test_the_rightmost_untrusted_hop_is_the_client(peer: str, header: str, client: str) -> None:
    """client_address follows the design's rule for each shape of header: peer unless trusted,
    then the first untrusted hop from the right, in canonical form, garbage never."""
    result = client_address(peer, header, NETWORKS)

    assert result == client


def test_no_trusted_proxy_means_the_peer_as_it_is() -> None:
    """Without trusted proxies the header is not even parsed: the peer comes back unchanged."""
    result = client_address("::ffff:203.0.113.5", "10.0.0.1", ())

    assert result == "::ffff:203.0.113.5"
