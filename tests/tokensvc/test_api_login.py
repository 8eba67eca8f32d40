"""POST /v1/login over HTTP: Basic and JSON credentials, narrowing, revocation, generic failures.

Most tests run against the real app factory on PostgreSQL and on SQLite (the `client` fixture,
in-process lockout); the timing and rehash tests build their own app with real argon2 parameters.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import random
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import argon2
import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config, mask_challenge
from tokensvc.accounts.admission import CheckPriority
from tokensvc.accounts.passwords import OWASP, PasswordHasher, profile_by_name
from tokensvc.errors import Unauthenticated, Unavailable
from tokensvc.services.login import PASSWORD_STEP_FAILURE, LoginRequest, LoginService
from tokensvc.tokens.minting import MintRequest
from tokensvc.web import appkeys
from tokensvc.web.app import create_app

ALICE_PASSWORD = "her long lantern passphrase"

# ---- helpers ---------------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_user(
    client: Any, admin_token: str, name: str, password: str, roles: list[str] | None = None
) -> dict[str, Any]:
    """Create a user through POST /v1/users; the response body."""
    resp = await client.post(
        "/v1/users",
        json={"name": name, "password": password, "roles": roles or []},
        headers=bearer(admin_token),
    )
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def login(client: Any, name: str, password: str, **body: Any) -> tuple[int, dict[str, Any]]:
    """POST /v1/login with HTTP Basic (and an optional JSON body); status and JSON body."""
    resp = await client.post("/v1/login", headers=basic_auth(name, password), json=body or None)
    return resp.status, dict(await resp.json())


async def verify(client: Any, token: str, **context: str) -> tuple[int, dict[str, Any]]:
    """POST /v1/verify; status and JSON body."""
    resp = await client.post("/v1/verify", json={"token": token, "context": context})
    return resp.status, dict(await resp.json())


def rfc3339(clock: FakeClock, **delta: float) -> str:
    return (clock.now + timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- getting a token -------------------------------------------------------------------------------


async def test_basic_and_json_login_give_a_token_for_the_user(client, admin_token, clock) -> None:  # type: ignore[no-untyped-def]
    """Basic and JSON credentials each give a token that /v1/verify accepts with subject = the user."""
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)

    basic = await client.post("/v1/login", headers=basic_auth("alice", ALICE_PASSWORD))
    as_json = await client.post("/v1/login", json={"username": "alice", "password": ALICE_PASSWORD})

    for resp in (basic, as_json):
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert {"token", "token_id", "expires_at"} <= set(body)
        assert body["token"].startswith("tsv1_")
        assert body["admin"] is False
        assert body["expires_at"] == rfc3339(clock, hours=8)  # TOKENSVC_LOGIN_DEFAULT_TTL
        status, verified = await verify(client, body["token"])
        assert status == 200, verified
        assert verified["subject"] == "alice"
        assert verified["token_id"] == body["token_id"]


async def test_login_name_is_case_insensitive(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """`Alice` logs in as the stored user `alice`, and the token's subject is the canonical name."""
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)

    status, body = await login(client, "Alice", ALICE_PASSWORD)

    assert status == 200, body
    assert body["subject"] == "alice"
    assert (await verify(client, body["token"]))[1]["subject"] == "alice"


async def test_narrowing_in_the_body_is_reflected_in_the_token(client, admin_token, clock) -> None:  # type: ignore[no-untyped-def]
    """ttl, operations and audience asked for at login bind the token: allowed inside, 403 outside, 401 after expiry."""
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)

    status, body = await login(
        client, "alice", ALICE_PASSWORD, ttl="10m", operations=["read"], audience=["files"]
    )

    assert status == 200, body
    assert body["expires_at"] == rfc3339(clock, minutes=10)
    token = body["token"]
    assert (await verify(client, token, operation="read", audience="files"))[0] == 200
    assert (await verify(client, token, operation="write", audience="files"))[0] == 403
    assert (await verify(client, token, operation="read", audience="mail"))[0] == 403
    assert (await verify(client, token))[0] == 403  # names neither operation nor audience
    clock.advance(minutes=10, seconds=1)
    assert (await verify(client, token, operation="read", audience="files"))[0] == 401


async def test_resources_and_cidrs_in_the_body_are_reflected(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """resources and cidrs asked for at login bind the token: a listed prefix and network pass, others are 403."""
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)

    status, body = await login(
        client, "alice", ALICE_PASSWORD, resources=["/docs/*"], cidrs=["10.0.0.0/8"]
    )

    assert status == 200, body
    token = body["token"]
    assert (await verify(client, token, resource="/docs/1", client_ip="10.1.2.3"))[0] == 200
    assert (await verify(client, token, resource="/mail/1", client_ip="10.1.2.3"))[0] == 403
    assert (await verify(client, token, resource="/docs/1", client_ip="192.0.2.1"))[0] == 403


async def test_admin_can_narrow_their_login_token(client) -> None:  # type: ignore[no-untyped-def]
    """An admin logging in with operations=["keys:read"] gets a token that lists keys but cannot mint."""
    status, body = await login(client, "admin", ADMIN_PASSWORD, operations=["keys:read"])

    keys = await client.get("/v1/keys", headers=bearer(body["token"]))
    minting = await client.post("/v1/tokens", json={"subject": "x"}, headers=bearer(body["token"]))

    assert status == 200, body
    assert keys.status == 200, await keys.text()
    assert minting.status == 403, await minting.text()


async def test_a_user_cannot_ask_for_an_admin_token(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """A plain user sending `"admin": true` in the login body gets a 400, not an admin-capable token."""
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)

    status, body = await login(client, "alice", ALICE_PASSWORD, admin=True)

    assert status == 400, body
    assert "token" not in body


async def test_ttl_as_seconds_is_accepted(client, admin_token, clock) -> None:  # type: ignore[no-untyped-def]
    """A ttl given as whole seconds in the JSON login body sets the expiry."""
    status, body = await login(client, "admin", ADMIN_PASSWORD, ttl=90)

    assert status == 200, body
    assert body["expires_at"] == rfc3339(clock, seconds=90)


async def test_ttl_outside_the_allowed_range_is_400(client) -> None:  # type: ignore[no-untyped-def]
    """A ttl over TOKENSVC_LOGIN_MAX_TTL (23 h), not positive, or not a duration is a 400 JSON error, no token."""
    bad_ttls: list[Any] = ["24h", 23 * 3600 + 1, 0, "0s", -5, "forever", True, 1.5]

    answers = {}
    for ttl in bad_ttls:
        resp = await client.post(
            "/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD), json={"ttl": ttl}
        )
        body = await resp.json()
        answers[repr(ttl)] = (resp.status, body.get("error", {}).get("code"))

    assert answers == {repr(ttl): (400, "bad_request") for ttl in bad_ttls}


async def test_max_ttl_itself_is_allowed(client, clock) -> None:  # type: ignore[no-untyped-def]
    """Exactly the maximum login TTL (23 h) is accepted."""
    status, body = await login(client, "admin", ADMIN_PASSWORD, ttl="23h")

    assert status == 200, body
    assert body["expires_at"] == rfc3339(clock, hours=23)


async def test_only_admins_get_an_admin_capable_token(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """An admin's login token can call GET /v1/keys (200); a plain user's login token cannot (403)."""
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)
    await create_user(
        client, admin_token, "root2", "a long copper root passphrase", roles=["admin"]
    )
    _, alice = await login(client, "alice", ALICE_PASSWORD)
    _, root2 = await login(client, "root2", "a long copper root passphrase")

    as_alice = await client.get("/v1/keys", headers=bearer(alice["token"]))
    as_root2 = await client.get("/v1/keys", headers=bearer(root2["token"]))
    as_admin = await client.get("/v1/keys", headers=bearer(admin_token))

    assert alice["admin"] is False
    assert root2["admin"] is True
    assert as_alice.status == 403, await as_alice.text()
    assert as_root2.status == 200, await as_root2.text()
    assert as_admin.status == 200, await as_admin.text()


# ---- failures --------------------------------------------------------------------------------------


async def test_generic_401_is_byte_identical_for_every_failure(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """Unknown user, wrong password and disabled user get the same status, headers and body bytes
    (but for the challenge, random each time, of one length)."""
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)
    await create_user(client, admin_token, "dave", "a long orchid passphrase")
    await client.patch("/v1/users/dave", json={"disabled": True}, headers=bearer(admin_token))

    unknown = await client.post("/v1/login", headers=basic_auth("nobody", ALICE_PASSWORD))
    wrong = await client.post("/v1/login", headers=basic_auth("alice", "not the password"))
    disabled = await client.post(
        "/v1/login", headers=basic_auth("dave", "a long orchid passphrase")
    )
    json_wrong = await client.post(
        "/v1/login", json={"username": "alice", "password": "not the password"}
    )

    bodies = [mask_challenge(await r.read()) for r in (unknown, wrong, disabled, json_wrong)]
    assert [r.status for r in (unknown, wrong, disabled, json_wrong)] == [401] * 4
    assert len(set(bodies)) == 1, bodies
    assert (await wrong.json())["error"]["code"] == "unauthenticated"
    for header in ("Content-Type", "WWW-Authenticate"):
        assert len({r.headers.get(header) for r in (unknown, wrong, disabled, json_wrong)}) == 1
    assert "Retry-After" not in wrong.headers


async def test_disabled_user_cannot_log_in_until_enabled(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """A disabled user's right password is a generic 401; once re-enabled the same password works."""
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)
    await client.patch("/v1/users/alice", json={"disabled": True}, headers=bearer(admin_token))

    disabled_status, disabled_body = await login(client, "alice", ALICE_PASSWORD)
    await client.patch("/v1/users/alice", json={"disabled": False}, headers=bearer(admin_token))
    enabled_status, _ = await login(client, "alice", ALICE_PASSWORD)

    assert disabled_status == 401
    assert disabled_body["error"]["message"] == PASSWORD_STEP_FAILURE
    assert enabled_status == 200


async def test_password_change_revokes_earlier_tokens(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """After PATCH /v1/users/{name} sets a new password, tokens issued before are 401; the new password logs in."""
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)
    _, before = await login(client, "alice", ALICE_PASSWORD)
    assert (await verify(client, before["token"]))[0] == 200

    patched = await client.patch(
        "/v1/users/alice", json={"password": "a brand new password"}, headers=bearer(admin_token)
    )
    old_token_status, _ = await verify(client, before["token"])
    old_password_status, _ = await login(client, "alice", ALICE_PASSWORD)
    new_status, fresh = await login(client, "alice", "a brand new password")

    assert patched.status == 200, await patched.text()
    assert old_token_status == 401
    assert old_password_status == 401
    assert new_status == 200, fresh
    assert (await verify(client, fresh["token"]))[1]["subject"] == "alice"


async def test_disabling_revokes_earlier_tokens_for_good(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """Disabling a user kills their tokens (401), which stay dead after re-enabling; a fresh login then works."""
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)
    _, before = await login(client, "alice", ALICE_PASSWORD)

    await client.patch("/v1/users/alice", json={"disabled": True}, headers=bearer(admin_token))
    while_disabled, _ = await verify(client, before["token"])
    await client.patch("/v1/users/alice", json={"disabled": False}, headers=bearer(admin_token))
    after_enabling, _ = await verify(client, before["token"])
    status, fresh = await login(client, "alice", ALICE_PASSWORD)

    assert while_disabled == 401
    assert after_enabling == 401
    assert status == 200, fresh
    assert (await verify(client, fresh["token"]))[0] == 200


async def test_disabled_admin_token_loses_admin_rights(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """A second admin disabled by the first can no longer call admin endpoints with the token they held."""
    await create_user(
        client, admin_token, "root2", "a long copper root passphrase", roles=["admin"]
    )
    _, root2 = await login(client, "root2", "a long copper root passphrase")

    await client.patch("/v1/users/root2", json={"disabled": True}, headers=bearer(admin_token))
    resp = await client.get("/v1/keys", headers=bearer(root2["token"]))

    assert resp.status in (401, 403), await resp.text()


async def test_malformed_basic_header_is_401_json(client) -> None:  # type: ignore[no-untyped-def]
    """A Basic header that is not base64 of UTF-8 `user:password` is a 401 JSON error, never a 500."""
    headers = [
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic",
    ]

    answers = {}
    for header in headers:
        resp = await client.post("/v1/login", headers={"Authorization": header})
        body = await resp.json() if resp.content_type == "application/json" else None
        answers[header] = (resp.status, body and body["error"]["code"])

    assert answers == dict.fromkeys(headers, (401, "unauthenticated"))


async def test_no_credentials_is_401(client) -> None:  # type: ignore[no-untyped-def]
    """No Authorization and no username/password in the body is a 401 JSON error."""
    empty = await client.post("/v1/login")
    half = await client.post("/v1/login", json={"username": "admin"})

    assert empty.status == 401, await empty.text()
    assert half.status == 401, await half.text()
    assert (await half.json())["error"]["code"] == "unauthenticated"


async def test_credentials_in_header_and_body_is_400(client) -> None:  # type: ignore[no-untyped-def]
    """Basic credentials together with a username or password in the body are a 400, even if both are right."""
    both = await client.post(
        "/v1/login",
        headers=basic_auth("admin", ADMIN_PASSWORD),
        json={"username": "admin", "password": ADMIN_PASSWORD},
    )
    password_only = await client.post(
        "/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD), json={"password": "x"}
    )

    assert both.status == 400, await both.text()
    assert password_only.status == 400, await password_only.text()
    assert (await both.json())["error"]["code"] == "bad_request"


async def test_bad_json_body_is_4xx_json(client) -> None:  # type: ignore[no-untyped-def]
    """A login body that is not a JSON object of known string fields is a 400 or 401 JSON error."""
    bodies = [b"not json", b"[1, 2]", b'{"username": "admin", "password": 5}', b'{"extra": 1}']

    answers = {}
    for body in bodies:
        resp = await client.post(
            "/v1/login", data=body, headers={"Content-Type": "application/json"}
        )
        answers[body] = (resp.status, resp.content_type, "error" in await resp.json())

    for body, (status, content_type, has_error) in answers.items():
        assert status in (400, 401), (body, status)
        assert (content_type, has_error) == ("application/json", True), body


# ---- enumeration timing ----------------------------------------------------------------------------


TIMING_ROUNDS = 60
TIMING_WARMUP = 5


@pytest.mark.serial  # wall-clock bound: run alone
async def test_unknown_user_and_wrong_password_take_the_same_time(
    aiohttp_client, pg_url: str, data_dir: Path, redis_url: str, redis_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    """With OWASP argon2 and Redis lockout, median login times for an unknown user and a wrong password differ by < 25 %."""
    config = make_config(
        database_url=pg_url,
        data_dir=data_dir,
        password_profile="OWASP",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        trusted_proxies=("127.0.0.1/32",),
    )
    client = await aiohttp_client(create_app(config))
    admin = await client.post(
        "/v1/login", headers={**basic_auth("admin", ADMIN_PASSWORD), "X-Forwarded-For": "10.9.9.9"}
    )
    admin_token = (await admin.json())["token"]
    await create_user(client, admin_token, "alice", ALICE_PASSWORD)
    lockout = client.app[appkeys.LOCKOUT]
    samples: dict[str, list[float]] = {"unknown": [], "wrong": []}
    plan = [kind for _ in range(TIMING_WARMUP + TIMING_ROUNDS) for kind in ("unknown", "wrong")]
    rng = random.Random(1234)
    for i in range(0, len(plan), 2):  # each round in random order, so drift hits both sides alike
        pair = plan[i : i + 2]
        rng.shuffle(pair)
        plan[i : i + 2] = pair

    for n, kind in enumerate(plan):
        name = "ghost" if kind == "unknown" else "alice"
        headers = {
            **basic_auth(name, "wrong password"),
            "X-Forwarded-For": f"10.{n // 250}.{n % 250}.1",
        }
        started = time.perf_counter()
        resp = await client.post("/v1/login", headers=headers)
        await resp.read()
        elapsed = time.perf_counter() - started
        assert resp.status == 401, await resp.text()
        await lockout.clear(name)  # untimed: keep the identity counter below its threshold
        if n >= 2 * TIMING_WARMUP:
            samples[kind].append(elapsed)

    unknown = statistics.median(samples["unknown"])
    wrong = statistics.median(samples["wrong"])
    difference = abs(unknown - wrong) / max(unknown, wrong)
    print(
        f"\nlogin timing over {TIMING_ROUNDS} attempts each (OWASP argon2id): "
        f"median unknown user {unknown * 1000:.2f} ms, wrong password {wrong * 1000:.2f} ms, "
        f"difference {difference:.1%}"
    )
    assert len(samples["unknown"]) == len(samples["wrong"]) == TIMING_ROUNDS
    assert difference < 0.25


# ---- rehash on login -------------------------------------------------------------------------------


WEAKER = dataclasses.replace(OWASP, memory_cost=4096, time_cost=1)


@pytest.mark.parametrize("pepper", [None, b"a pepper of at least sixteen bytes"])
async def test_weaker_hash_is_upgraded_at_the_next_successful_login(
    aiohttp_client, pg_url: str, data_dir: Path, clock: FakeClock, pepper: bytes | None
) -> None:  # type: ignore[no-untyped-def]
    """A hash with weaker argon2 parameters is replaced by one with the app's profile at login; tokens keep working."""
    client = await aiohttp_client(
        create_app(
            make_config(
                database_url=pg_url,
                data_dir=data_dir,
                password_profile="OWASP",
                pepper=pepper,
                # The upgrade, not shedding, is under test: on a loaded host the first check's
                # rest (untrusted share) can outlast the default 2 s wait and defer the rehash.
                queue_timeout="60s",
            ),
            clock=clock,
        )
    )
    prepared = ALICE_PASSWORD.encode()
    if pepper is not None:
        prepared = hmac.new(pepper, prepared, hashlib.sha256).digest()
    weak_hash = argon2.PasswordHasher.from_parameters(WEAKER).hash(prepared)
    users = client.app[appkeys.USERS]
    await users.create("alice", password_hash=weak_hash)
    earlier = await client.app[appkeys.MINTER].mint(
        MintRequest(subject="alice", ttl=timedelta(hours=1))
    )

    status, body = await login(client, "alice", ALICE_PASSWORD)

    assert status == 200, body
    stored = (await users.get("alice")).password_hash  # type: ignore[union-attr]
    assert stored != weak_hash
    params = argon2.extract_parameters(stored)
    profile = profile_by_name("OWASP")
    assert (params.memory_cost, params.time_cost, params.parallelism) == (
        profile.memory_cost,
        profile.time_cost,
        profile.parallelism,
    )
    assert f"m={profile.memory_cost},t={profile.time_cost},p={profile.parallelism}" in stored
    assert (await verify(client, body["token"]))[0] == 200
    assert (await verify(client, earlier.token))[0] == 200  # a rehash is not a password change
    again, _ = await login(client, "alice", ALICE_PASSWORD)
    assert again == 200
    assert (await users.get("alice")).password_hash == stored  # type: ignore[union-attr]


async def test_a_right_password_is_not_refused_when_the_rehash_finds_the_hasher_busy(
    aiohttp_client, pg_url: str, data_dir: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """The upgrade of a weak hash waits for a slot like any check; when none comes in time the
    login still succeeds on its right password (it was a 503 after the lockout was cleared) and
    the old hash stays for a later login."""
    client = await aiohttp_client(
        create_app(
            make_config(
                database_url=pg_url,
                data_dir=data_dir,
                password_profile="OWASP",
                # One argon2 thread whose slot rests 99x a check's time after an untrusted one,
                # and a rehash that waits 50 ms at most: the slot cannot come back in time.
                hash_concurrency=1,
                hash_untrusted_share=1,
                queue_timeout=timedelta(milliseconds=50),
            ),
            clock=clock,
        )
    )
    weak_hash = argon2.PasswordHasher.from_parameters(WEAKER).hash(ALICE_PASSWORD)
    users = client.app[appkeys.USERS]
    await users.create("alice", password_hash=weak_hash)

    with caplog.at_level("WARNING", logger="tokensvc.services.login"):
        status, body = await login(client, "alice", ALICE_PASSWORD)

    assert status == 200, body
    assert (await verify(client, body["token"]))[0] == 200
    assert (await users.get("alice")).password_hash == weak_hash  # type: ignore[union-attr]
    assert "rehash of alice deferred" in caplog.text


async def test_failed_login_does_not_rehash(
    aiohttp_client, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:  # type: ignore[no-untyped-def]
    """A wrong password against a weak hash leaves the stored hash untouched."""
    client = await aiohttp_client(
        create_app(
            make_config(database_url=pg_url, data_dir=data_dir, password_profile="OWASP"),
            clock=clock,
        )
    )
    weak_hash = argon2.PasswordHasher.from_parameters(WEAKER).hash(ALICE_PASSWORD)
    users = client.app[appkeys.USERS]
    await users.create("alice", password_hash=weak_hash)

    status, _ = await login(client, "alice", "not her lantern passphrase")

    assert status == 401
    assert (await users.get("alice")).password_hash == weak_hash  # type: ignore[union-attr]


class Counted:
    """A real store whose method look-ups are recorded: what a login touched, and in what order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.inner, name)


async def test_a_login_the_hasher_has_no_room_for_is_shed_before_lockout_and_database(
    aiohttp_client, sqlite_url: str, data_dir: Path, clock: FakeClock
) -> None:  # type: ignore[no-untyped-def]
    """With every argon2 worker busy and the wait queue full of trusted checks, a login is refused
    with 503 before the lockout store or the user table is consulted (not even a trusted login
    could get in); with room again, it takes the usual path."""
    client = await aiohttp_client(
        create_app(make_config(database_url=sqlite_url, data_dir=data_dir), clock=clock)
    )
    app = client.app
    hasher = PasswordHasher(profile=OWASP, max_concurrency=1, max_waiting=1)
    users, lockout = Counted(app[appkeys.USERS]), Counted(app[appkeys.LOCKOUT])
    service = LoginService(
        users=users,
        generations=app[appkeys.GENERATIONS],
        hasher=hasher,
        lockout=lockout,
        minter=app[appkeys.MINTER],
        clock=clock,
        default_ttl=timedelta(hours=1),
        max_ttl=timedelta(hours=2),
        second_factors=app[appkeys.FACTORS],
        otp_lockout=app[appkeys.OTP_LOCKOUT],
    )
    stored = await hasher.hash(ALICE_PASSWORD)
    busy = [
        asyncio.create_task(hasher.verify(stored, ALICE_PASSWORD, priority=CheckPriority.TRUSTED))
        for _ in range(2)
    ]
    await asyncio.sleep(0)  # one running, one queued: the queue is full

    try:
        with pytest.raises(Unavailable) as refused:
            await service.login(LoginRequest("alice", ALICE_PASSWORD, "192.0.2.7"))
        shed_users, shed_lockout = list(users.calls), list(lockout.calls)
        assert all(r.ok for r in await asyncio.gather(*busy))
        with pytest.raises(Unauthenticated):
            await service.login(LoginRequest("alice", "not her lantern passphrase", "192.0.2.7"))
    finally:
        hasher.close()

    assert refused.value.retry_after == 1
    assert (shed_users, shed_lockout) == ([], [])
    assert "get" in users.calls
    assert lockout.calls[0] == "begin_attempt"
