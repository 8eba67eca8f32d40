"""Failed-login lockout over HTTP, against real Redis: thresholds, races, DoS resistance, fail-closed.

The Redis-backed app trusts 127.0.0.1 as a proxy, so each request names its client IP with
X-Forwarded-For. Lockout time is the app's FakeClock: `clock.advance` sits out a lock without sleeping.
Default LockoutPolicy: 5 failures per identity + IP, 10 per identity, 50 per IP; waits of 1 s doubling.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config, mask_challenge
from tests.ports import free_port
from tokensvc.tokens.minting import MintRequest
from tokensvc.web import appkeys
from tokensvc.web.app import create_app

ALICE_PASSWORD = "her long lantern passphrase"
WRONG = "not her lantern passphrase"

# ---- helpers ---------------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Attempt:
    """What one login attempt answered."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Attempt({self.status}, {self.body[:120]!r})"


async def attempt(client: Any, name: str, password: str, ip: str | None = None) -> Attempt:
    """POST /v1/login with Basic credentials, from `ip` (via X-Forwarded-For) when given."""
    headers = basic_auth(name, password)
    if ip is not None:
        headers["X-Forwarded-For"] = ip
    resp = await client.post("/v1/login", headers=headers)
    return Attempt(resp.status, resp.headers, await resp.read())


async def burst(client: Any, attempts: list[tuple[str, str, str]]) -> list[Attempt]:
    """Send every (name, password, ip) login at once, on a session with no connection limit.

    The test client's own pool holds 100 connections, which would quietly serialise a larger burst;
    here the server really has every attempt in flight together.
    """
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(name: str, password: str, ip: str) -> Attempt:
            headers = {**basic_auth(name, password), "X-Forwarded-For": ip}
            async with session.post(client.make_url("/v1/login"), headers=headers) as resp:
                return Attempt(resp.status, resp.headers, await resp.read())

        return list(await asyncio.gather(*(one(*a) for a in attempts)))


async def lockout_status(client: Any, admin_token: str, name: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/users/{name}/lockout", headers=bearer(admin_token))
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def create_user(client: Any, admin_token: str, name: str, password: str) -> None:
    resp = await client.post(
        "/v1/users", json={"name": name, "password": password}, headers=bearer(admin_token)
    )
    assert resp.status == 201, await resp.text()


async def admin_login(client: Any) -> str:
    resp = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


def assert_locked(result: Attempt, retry_after: int | None = None) -> None:
    """A 429 JSON error with a whole-seconds Retry-After (equal to `retry_after` when given)."""
    assert result.status == 429, result
    assert result.headers["Content-Type"].startswith("application/json")
    assert b'"locked_out"' in result.body
    assert int(result.headers["Retry-After"]) >= 1
    if retry_after is not None:
        assert int(result.headers["Retry-After"]) == retry_after


@pytest.fixture
async def rclient(aiohttp_client, pg_url, data_dir, redis_url, redis_prefix, clock):  # type: ignore[no-untyped-def]
    """A test client for the app on PostgreSQL with its lockout in real Redis, trusting 127.0.0.1 as a proxy."""
    config = make_config(
        database_url=pg_url,
        data_dir=data_dir,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        trusted_proxies=("127.0.0.1/32",),
    )
    return await aiohttp_client(create_app(config, clock=clock))


@pytest.fixture
async def radmin(rclient) -> str:  # type: ignore[no-untyped-def]
    """The bootstrap admin's token on the Redis-backed app; alice exists."""
    token = await admin_login(rclient)
    await create_user(rclient, token, "alice", ALICE_PASSWORD)
    return token


# ---- thresholds and waits --------------------------------------------------------------------------


async def test_right_password_is_refused_past_the_threshold_until_the_wait_passes(
    rclient, radmin, clock: FakeClock
) -> None:  # type: ignore[no-untyped-def]
    """After 5 failures from one IP the right password gets 429 + Retry-After; it works once the (doubling) wait passes."""
    ip = "198.51.100.7"
    failures = [await attempt(rclient, "alice", WRONG, ip) for _ in range(5)]

    first_lock = await attempt(rclient, "alice", ALICE_PASSWORD, ip)
    clock.advance(seconds=0.5)
    half_way = await attempt(rclient, "alice", ALICE_PASSWORD, ip)
    clock.advance(seconds=0.5)
    sixth_failure = await attempt(rclient, "alice", WRONG, ip)
    second_lock = await attempt(rclient, "alice", ALICE_PASSWORD, ip)
    clock.advance(seconds=1)
    still_locked = await attempt(rclient, "alice", ALICE_PASSWORD, ip)
    clock.advance(seconds=1)
    after_wait = await attempt(rclient, "alice", ALICE_PASSWORD, ip)

    assert [f.status for f in failures] == [401] * 5
    assert_locked(first_lock, retry_after=1)
    assert_locked(half_way, retry_after=1)
    assert sixth_failure.status == 401  # the first lock is over: counted, now 6 failures
    assert_locked(second_lock, retry_after=2)  # the wait doubles
    assert_locked(still_locked, retry_after=1)
    assert after_wait.status == 200, after_wait


async def test_locked_attempts_are_not_counted(rclient, radmin, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """Attempts refused with 429 neither add failures nor lengthen the wait."""
    ip = "198.51.100.8"
    for _ in range(5):
        await attempt(rclient, "alice", WRONG, ip)

    refused = [await attempt(rclient, "alice", WRONG, ip) for _ in range(20)]
    status = await lockout_status(rclient, radmin, "alice")
    clock.advance(seconds=1)
    after_wait = await attempt(rclient, "alice", ALICE_PASSWORD, ip)

    assert {r.status for r in refused} == {429}
    assert status["failures"] == 5
    assert status["locked"] is True
    assert after_wait.status == 200, after_wait


async def test_threshold_semantics_are_the_same_in_process(
    client, admin_token, clock: FakeClock
) -> None:  # type: ignore[no-untyped-def]
    """The embedded in-process store also refuses the right password after 5 failures, until the wait passes."""
    resp = await client.post(
        "/v1/users", json={"name": "alice", "password": ALICE_PASSWORD}, headers=bearer(admin_token)
    )
    assert resp.status == 201

    failures = [await attempt(client, "alice", WRONG) for _ in range(5)]
    locked = await attempt(client, "alice", ALICE_PASSWORD)
    status = await lockout_status(client, admin_token, "alice")
    clock.advance(seconds=1)
    after_wait = await attempt(client, "alice", ALICE_PASSWORD)

    assert [f.status for f in failures] == [401] * 5
    assert_locked(locked, retry_after=1)
    assert status["locked"] is True
    assert after_wait.status == 200, after_wait


async def test_waits_double_up_to_the_cap(rclient, radmin, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """Each failure after a lock doubles the wait (1 s, 2 s, 4 s, ...) until the 15-minute cap."""
    ip = "198.51.100.9"
    for _ in range(5):
        await attempt(rclient, "alice", WRONG, ip)

    waits = []
    for _ in range(12):
        locked = await attempt(rclient, "alice", ALICE_PASSWORD, ip)
        assert locked.status == 429, locked
        waits.append(int(locked.headers["Retry-After"]))
        clock.advance(seconds=waits[-1])
        assert (await attempt(rclient, "alice", WRONG, ip)).status == 401

    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]


async def test_identities_are_counted_case_insensitively(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """Failures as `ALICE` and ` Alice` count against `alice`: the lock cannot be dodged by respelling the name."""
    ip = "198.51.100.10"
    for name in ("ALICE", "Alice", "aLiCe", "alice", "ALICE"):
        assert (await attempt(rclient, name, WRONG, ip)).status == 401

    locked = await attempt(rclient, "alice", ALICE_PASSWORD, ip)

    assert_locked(locked)


async def test_ipv6_clients_are_counted_per_64(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """Failures from five addresses of one IPv6 /64 lock the whole /64 for the identity, not other prefixes."""
    for n in range(1, 6):
        assert (await attempt(rclient, "alice", WRONG, f"2001:db8:0:1::{n}")).status == 401

    same_64 = await attempt(rclient, "alice", ALICE_PASSWORD, "2001:db8:0:1:ffff::99")
    other_64 = await attempt(rclient, "alice", ALICE_PASSWORD, "2001:db8:0:2::1")

    assert_locked(same_64)
    assert other_64.status == 200, other_64


async def test_spoofed_forwarded_for_hops_do_not_rotate_the_client_ip(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """Behind a trusted proxy, only the rightmost untrusted hop counts: prepending fake hops gives no fresh IP."""
    real = "198.51.100.11"
    for n in range(5):
        assert (await attempt(rclient, "alice", WRONG, f"10.99.0.{n}, {real}")).status == 401

    locked = await attempt(rclient, "alice", ALICE_PASSWORD, f"10.99.1.1, {real}")

    assert_locked(locked)


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """Without trusted proxies, X-Forwarded-For is ignored: five failures from the socket's IP lock it whatever the header says."""
    resp = await client.post(
        "/v1/users", json={"name": "alice", "password": ALICE_PASSWORD}, headers=bearer(admin_token)
    )
    assert resp.status == 201
    for n in range(5):
        assert (await attempt(client, "alice", WRONG, f"203.0.113.{n}")).status == 401

    locked = await attempt(client, "alice", ALICE_PASSWORD, "203.0.113.250")

    assert_locked(locked, retry_after=1)


async def test_trust_in_a_known_ip_ends_after_the_trusted_window(
    rclient, radmin, clock: FakeClock
) -> None:  # type: ignore[no-untyped-def]
    """An IP alice succeeded from 31 days ago (window: 30) is no longer exempt from her identity-wide lock."""
    home = "198.51.100.12"
    assert (await attempt(rclient, "alice", ALICE_PASSWORD, home)).status == 200
    clock.advance(days=31)
    for n in range(10):
        assert (await attempt(rclient, "alice", WRONG, f"203.0.113.{n}")).status == 401

    from_home = await attempt(rclient, "alice", ALICE_PASSWORD, home)

    assert_locked(from_home)


# ---- concurrency -----------------------------------------------------------------------------------


async def test_concurrent_attempts_on_a_locked_identity_are_all_refused(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """200 concurrent logins (right and wrong passwords mixed, from fresh IPs) on a locked identity: none is accepted."""
    for n in range(10):  # the identity-wide threshold, from IPs alice never used
        assert (await attempt(rclient, "alice", WRONG, f"203.0.113.{n}")).status == 401

    results = await burst(
        rclient,
        [
            ("alice", ALICE_PASSWORD if n % 2 else WRONG, f"10.7.{n // 200}.{n % 200}")
            for n in range(200)
        ],
    )

    statuses = Counter(r.status for r in results)
    assert statuses[200] == 0, statuses
    assert statuses == {429: 200}


async def test_concurrent_attempts_at_the_threshold_cannot_slip_through(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """200 concurrent wrong passwords racing an identity one failure short of its lock: exactly one is counted, 199 are 429."""
    for n in range(9):
        assert (await attempt(rclient, "alice", WRONG, f"203.0.113.{n}")).status == 401

    results = await burst(
        rclient, [("alice", WRONG, f"10.8.{n // 200}.{n % 200}") for n in range(200)]
    )

    statuses = Counter(r.status for r in results)
    assert statuses == {401: 1, 429: 199}, statuses
    assert (await lockout_status(rclient, radmin, "alice"))["failures"] == 10


async def test_concurrent_failures_below_the_threshold_are_counted_exactly(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """9 concurrent wrong passwords from 9 IPs are counted as exactly 9 identity failures and 9 per-IP ones."""
    n = 9

    results = await burst(rclient, [("alice", WRONG, f"192.0.2.{i}") for i in range(n)])
    status = await lockout_status(rclient, radmin, "alice")

    assert [r.status for r in results] == [401] * n
    assert status["failures"] == n
    assert status["locked"] is False
    pairs = [c for c in status["counters"] if c["scope"] == "identity_ip"]
    assert sorted(c["failures"] for c in pairs) == [1] * n


async def test_concurrent_failures_past_the_threshold_are_counted_exactly(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """40 concurrent wrong passwords from 40 IPs: every 401 is one counted failure, every other answer a 429."""
    n = 40

    results = await burst(rclient, [("alice", WRONG, f"192.0.2.{i}") for i in range(n)])
    status = await lockout_status(rclient, radmin, "alice")

    statuses = Counter(r.status for r in results)
    assert statuses[401] + statuses[429] == n, statuses
    assert status["failures"] == statuses[401] == 10  # the identity threshold
    assert status["locked"] is True


async def test_concurrent_failures_from_one_ip_are_counted_exactly(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """4 concurrent wrong passwords from one IP leave exactly 4 failures on the identity + IP counter."""
    results = await burst(rclient, [("alice", WRONG, "192.0.2.77")] * 4)
    status = await lockout_status(rclient, radmin, "alice")

    assert [r.status for r in results] == [401] * 4
    assert status["failures"] == 4
    assert [c["failures"] for c in status["counters"] if c["scope"] == "identity_ip"] == [4]


# ---- lockout as denial of service ------------------------------------------------------------------


async def test_attackers_do_not_lock_the_owner_out_of_an_ip_they_used(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """After 100 failures from 25 attacker IPs, a fresh IP gets 429 but alice still logs in from her known IP."""
    home = "198.51.100.20"
    assert (await attempt(rclient, "alice", ALICE_PASSWORD, home)).status == 200

    # 4 per IP: under the identity + IP threshold (5) and far under the per-IP one (50), so only
    # the identity-wide counter can bind.
    attack = await burst(rclient, [("alice", WRONG, f"203.0.113.{n % 25}") for n in range(100)])
    from_fresh_ip = await attempt(rclient, "alice", ALICE_PASSWORD, "192.0.2.200")
    from_home = await attempt(rclient, "alice", ALICE_PASSWORD, home)
    from_home_again = await attempt(rclient, "alice", ALICE_PASSWORD, home)
    status = await lockout_status(rclient, radmin, "alice")

    assert Counter(r.status for r in attack) == {401: 10, 429: 90}
    assert_locked(from_fresh_ip)
    assert from_home.status == 200, from_home
    assert from_home_again.status == 200, from_home_again
    assert status["trusted_ips"] == 1


async def test_an_attacker_ip_is_throttled_for_every_identity(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """50 failures from one IP across many names lock that IP: even a real user's right password from it is 429."""
    attacker = "203.0.113.66"
    for n in range(50):  # 50 distinct names: no identity counter gets near its threshold
        assert (await attempt(rclient, f"user{n}", WRONG, attacker)).status == 401

    from_attacker = await attempt(rclient, "alice", ALICE_PASSWORD, attacker)
    from_elsewhere = await attempt(rclient, "alice", ALICE_PASSWORD, "198.51.100.21")

    assert_locked(from_attacker)
    assert from_elsewhere.status == 200, from_elsewhere


# ---- enumeration through lockout -------------------------------------------------------------------


async def test_unknown_identities_are_locked_out_alike(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """An unknown name is counted like alice: 429 after 5 failures, with the same status, Retry-After and body."""
    outcomes = {}
    for name in ("alice", "ghost"):
        ip = f"198.51.100.{30 if name == 'alice' else 31}"
        failures = [await attempt(rclient, name, WRONG, ip) for _ in range(5)]
        locked = await attempt(rclient, name, WRONG, ip)
        outcomes[name] = (failures, locked)

    alice_failures, alice_locked = outcomes["alice"]
    ghost_failures, ghost_locked = outcomes["ghost"]
    # The same bodies but for each MFA challenge: random, of one length (a decoy either way).
    assert [mask_challenge(f.body) for f in alice_failures] == [
        mask_challenge(f.body) for f in ghost_failures
    ]
    assert_locked(alice_locked, retry_after=1)
    assert_locked(ghost_locked, retry_after=1)
    assert alice_locked.body == ghost_locked.body
    ghost_status = await lockout_status(rclient, radmin, "ghost")
    assert ghost_status["failures"] == 5
    assert ghost_status["locked"] is True


# ---- admin inspect and clear -----------------------------------------------------------------------


async def test_admin_can_inspect_and_clear_a_lockout(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """GET /v1/users/{name}/lockout shows the lock; DELETE clears it and the right password then works."""
    ip = "198.51.100.40"
    for _ in range(5):
        await attempt(rclient, "alice", WRONG, ip)
    assert_locked(await attempt(rclient, "alice", ALICE_PASSWORD, ip))

    before = await lockout_status(rclient, radmin, "alice")
    cleared = await rclient.delete("/v1/users/alice/lockout", headers=bearer(radmin))
    after = await lockout_status(rclient, radmin, "alice")
    login = await attempt(rclient, "alice", ALICE_PASSWORD, ip)

    assert before["locked"] is True
    assert before["failures"] == 5
    # The lock is the identity + IP counter's; top-level failures/locked_until are identity-wide.
    assert [c["locked_until"] is not None for c in before["counters"]] == [False, True]
    assert "198.51.100.40" not in str(before)  # no IP addresses in the admin view
    assert cleared.status == 204, await cleared.text()
    assert after["locked"] is False
    assert after["failures"] == 0
    assert login.status == 200, login


async def test_lockout_endpoints_need_an_admin(rclient, radmin) -> None:  # type: ignore[no-untyped-def]
    """A plain user's token gets 403 and no token 401 on GET and DELETE /v1/users/{name}/lockout."""
    alice = await attempt(rclient, "alice", ALICE_PASSWORD, "198.51.100.41")
    alice_token = orjson.loads(alice.body)["token"]

    got = await rclient.get("/v1/users/alice/lockout", headers=bearer(alice_token))
    deleted = await rclient.delete("/v1/users/alice/lockout", headers=bearer(alice_token))
    anonymous = await rclient.delete("/v1/users/alice/lockout")

    assert got.status == 403, await got.text()
    assert deleted.status == 403, await deleted.text()
    assert anonymous.status == 401, await anonymous.text()


@pytest.mark.serial  # wall-clock bound: run alone
async def test_overloaded_hasher_answers_503_and_does_not_count(
    aiohttp_client, pg_url: str, data_dir: Path, redis_url: str, redis_prefix: str, clock: FakeClock
) -> None:  # type: ignore[no-untyped-def]
    """A login storm beyond the hasher's queue gets 503 + Retry-After for the excess, which is not counted as failures."""
    config = make_config(
        database_url=pg_url,
        data_dir=data_dir,
        password_profile="OWASP",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        trusted_proxies=("127.0.0.1/32",),
    )
    client = await aiohttp_client(create_app(config, clock=clock))
    admin_token = await admin_login(client)
    minted = await client.app[appkeys.MINTER].mint(MintRequest(subject="x", ttl=timedelta(hours=1)))
    names = [f"storm{n}" for n in range(200)]

    async def storm_login(session: aiohttp.ClientSession, n: int) -> Attempt:
        headers = {**basic_auth(names[n], WRONG), "X-Forwarded-For": f"10.66.{n // 200}.{n % 200}"}
        async with session.post(client.make_url("/v1/login"), headers=headers) as resp:
            return Attempt(resp.status, resp.headers, await resp.read())

    async def verify_probes() -> list[tuple[int, float]]:
        # Through the test client's own connection pool, so no probe queues behind the storm's.
        probes = []
        for _ in range(10):
            await asyncio.sleep(0.05)
            started = time.monotonic()
            resp = await client.post("/v1/verify", json={"token": minted.token})
            probes.append((resp.status, time.monotonic() - started))
        return probes

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        *results, probes = await asyncio.gather(
            *(storm_login(session, n) for n in range(len(names))), verify_probes()
        )
    storm_seconds = time.monotonic() - started
    counted = [(await lockout_status(client, admin_token, name))["failures"] for name in names]

    statuses = Counter(r.status for r in results)
    verify_ms = sorted(seconds * 1000 for _, seconds in probes)
    print(
        f"\nstorm of {len(names)} OWASP logins: {dict(statuses)} in {storm_seconds:.2f} s; "
        f"/v1/verify during it: median {statistics.median(verify_ms):.1f} ms, "
        f"max {verify_ms[-1]:.1f} ms"
    )
    assert set(statuses) <= {401, 503}, statuses
    assert statuses[503] > 0, "the storm never overflowed the hasher queue"
    for result, failures in zip(results, counted, strict=True):
        assert failures == (1 if result.status == 401 else 0), (result, failures)
        if result.status == 503:
            assert int(result.headers["Retry-After"]) >= 1
    assert [status for status, _ in probes] == [200] * len(probes)
    assert statistics.median(verify_ms) < storm_seconds * 1000 / 10


# ---- Redis unreachable or stopped ------------------------------------------------------------------


@pytest.mark.serial  # wall-clock bound: run alone
async def test_unreachable_redis_fails_login_closed_but_verify_serves(
    aiohttp_client, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:  # type: ignore[no-untyped-def]
    """With Redis unreachable, login (right or wrong password) is a quick 503 JSON with Retry-After; /v1/verify still answers 200; /readyz stays 200 and names Redis as degraded."""
    config = make_config(database_url=pg_url, data_dir=data_dir, redis_url="redis://127.0.0.1:1/0")
    client = await aiohttp_client(create_app(config, clock=clock))
    minter = client.app[appkeys.MINTER]
    minted = await minter.mint(MintRequest(subject="x", ttl=timedelta(hours=1)))
    admin = await minter.mint(MintRequest(subject="admin", ttl=timedelta(hours=1), admin=True))

    started = time.monotonic()
    right = await attempt(client, "admin", ADMIN_PASSWORD)
    elapsed = time.monotonic() - started
    wrong = await attempt(client, "admin", "wrong password")
    verified = await client.post("/v1/verify", json={"token": minted.token})
    ready = await client.get("/readyz")
    status = await client.get("/v1/users/admin/lockout", headers=bearer(admin.token))
    users = await client.get("/v1/users", headers=bearer(admin.token))

    for result in (right, wrong):
        assert result.status == 503, result
        assert result.headers["Content-Type"].startswith("application/json")
        assert int(result.headers["Retry-After"]) >= 1
        assert b'"unavailable"' in result.body
        assert b"token" not in result.body.replace(b"tokensvc", b"")
    assert elapsed < 3.0
    assert verified.status == 200, await verified.text()
    assert (await verified.json())["subject"] == "x"
    assert ready.status == 200  # this process still verifies: no reason to take it out
    assert (await ready.json())["status"] == "degraded"
    assert (await ready.json())["checks"] == {"database": "ok", "redis": "unavailable"}
    assert status.status == 503, await status.text()  # the admin view fails closed too
    assert "Retry-After" in status.headers
    assert users.status == 200, await users.text()  # admin calls that need no Redis still work


@contextlib.contextmanager
def private_redis(port: int, directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway redis-server of our own on `port` (never the shared one), stopped afterwards."""
    server = shutil.which("redis-server")
    assert server, "redis-server is needed to stop and restart a Redis"
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert proc.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.serial  # wall-clock bound: run alone
async def test_stopped_redis_fails_login_closed_and_recovers(
    aiohttp_client, pg_url: str, data_dir: Path, tmp_path: Path, clock: FakeClock
) -> None:  # type: ignore[no-untyped-def]
    """Redis stopped under a running app: login 503 + Retry-After while a token from before still verifies; back up, login works again."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    config = make_config(database_url=pg_url, data_dir=data_dir, redis_url=url)
    client = await aiohttp_client(create_app(config, clock=clock))
    with private_redis(port, tmp_path) as redis_server:
        before = await attempt(client, "admin", ADMIN_PASSWORD)
        assert before.status == 200, before

        token = orjson.loads(before.body)["token"]
        redis_server.terminate()
        redis_server.wait(timeout=5)

        started = time.monotonic()
        while_down = await attempt(client, "admin", ADMIN_PASSWORD)
        elapsed = time.monotonic() - started
        verified = await client.post("/v1/verify", json={"token": token})
        ready = await client.get("/readyz")

    with private_redis(port, tmp_path):
        back_up = await attempt(client, "admin", ADMIN_PASSWORD)

    assert while_down.status == 503, while_down
    assert int(while_down.headers["Retry-After"]) >= 1
    assert b'"unavailable"' in while_down.body
    assert elapsed < 3.0
    assert verified.status == 200, await verified.text()
    assert ready.status == 200 and (await ready.json())["status"] == "degraded"
    assert back_up.status == 200, back_up


async def test_readyz_reports_redis_when_reachable(rclient) -> None:  # type: ignore[no-untyped-def]
    """With Redis reachable, /readyz is 200 and lists both the database and Redis as ok."""
    resp = await rclient.get("/readyz")

    assert resp.status == 200, await resp.text()
    assert (await resp.json())["checks"] == {"database": "ok", "redis": "ok"}


# ---- what Redis holds ------------------------------------------------------------------------------


async def test_redis_names_identities_and_addresses_only_by_keyed_hashes(
    rclient: Any, redis_url: str, redis_prefix: str
) -> None:
    """Whoever can read Redis cannot test a guessed username or address against its keys: the
    hashes are keyed with a key derived from the deployment key (sealed under the KEK), which
    Redis never sees."""
    import redis.asyncio as aioredis

    from tokensvc.accounts.lockout.store import hash_identity, hash_ip
    from tokensvc.composition import LOCKOUT_HASH_PURPOSE

    name, ip = "mallory-guessable", "203.0.113.77"
    for _ in range(3):
        assert (await attempt(rclient, name, WRONG, ip)).status == 401

    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() async for k in client.scan_iter(match=redis_prefix + "*")]
    finally:
        await client.aclose()
    text = " ".join(keys)
    assert keys
    key = rclient.app[appkeys.RUNTIME].deployment_key.derive(LOCKOUT_HASH_PURPOSE)
    assert hash_identity(name, key=key) in text and hash_ip(ip, key=key) in text
    for guessable in (name, ip, hash_identity(name), hash_ip(ip)):
        assert guessable not in text
