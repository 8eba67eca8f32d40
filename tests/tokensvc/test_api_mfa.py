"""The second factor over HTTP: enrolment, MFA login, replay, lockout, policy, require_mfa.

Every test runs on the embedded shape (SQLite, in-process stores) and on the production shape
(PostgreSQL and Redis); the app is served as `tokensvc serve` serves it (the verify listener
answers POST /v1/verify). The FakeClock drives the TOTP steps, so codes are computed, not waited.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config, mask_challenge
from tokensvc.macaroons.attenuation import attenuate
from tokensvc.macaroons.identifier import FLAG_MFA
from tokensvc.macaroons.macaroon import Macaroon
from tokensvc.macaroons.tokenformat import decode_token, encode_token
from tokensvc.web import appkeys

ALICE = "her long lantern passphrase"
TRUSTED = ("127.0.0.1/32",)


@pytest.fixture(params=["sqlite", "postgres+redis"])
def mfa_config(request: pytest.FixtureRequest, data_dir: Path, sqlite_url: str) -> Any:
    """Both shapes; the test client is a trusted proxy, so X-Forwarded-For names the client."""
    if request.param == "sqlite":
        return make_config(database_url=sqlite_url, data_dir=data_dir, trusted_proxies=TRUSTED)
    return make_config(
        database_url=request.getfixturevalue("pg_url"),
        data_dir=data_dir,
        redis_url=request.getfixturevalue("redis_url"),
        redis_prefix=request.getfixturevalue("redis_prefix"),
        trusted_proxies=TRUSTED,
    )


async def serve(aiohttp_client: Any, config: Any, clock: FakeClock) -> Any:
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    return await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))


@pytest.fixture
async def mclient(aiohttp_client: Any, mfa_config: Any, clock: FakeClock) -> Any:
    return await serve(aiohttp_client, mfa_config, clock)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def frm(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


async def password_login(client: Any, name: str, password: str, ip: str = "192.0.2.1") -> Any:
    resp = await client.post("/v1/login", headers={**basic_auth(name, password), **frm(ip)})
    return resp.status, await resp.json()


async def answer(client: Any, challenge: str, otp: str, ip: str = "192.0.2.1") -> Any:
    resp = await client.post(
        "/v1/login", json={"challenge": challenge, "otp": otp}, headers=frm(ip)
    )
    return resp.status, await resp.json()


def code(secret: str, clock: FakeClock, *, steps: int = 0) -> str:
    return str(pyotp.TOTP(secret).at(clock.now.timestamp() + 30 * steps))


async def admin_token(client: Any) -> str:
    status, body = await password_login(client, "admin", ADMIN_PASSWORD, ip="192.0.2.250")
    assert status == 200, body
    return str(body["token"])


async def enrolled_user(
    client: Any, clock: FakeClock, name: str = "alice", roles: list[str] | None = None
) -> tuple[str, list[str]]:
    """Create `name`, enrol a TOTP factor with its own token; (base32 secret, recovery codes)."""
    root = await admin_token(client)
    made = await client.post(
        "/v1/users",
        json={"name": name, "password": ALICE, "roles": roles or []},
        headers=bearer(root),
    )
    assert made.status == 201, await made.text()
    status, body = await password_login(client, name, ALICE)
    assert status == 200, body
    token = body["token"]
    started = await client.post("/v1/mfa/enroll", json={"password": ALICE}, headers=bearer(token))
    assert started.status == 200, await started.text()
    secret = (await started.json())["secret"]
    activated = await client.post(
        "/v1/mfa/activate", json={"otp": code(secret, clock)}, headers=bearer(token)
    )
    assert activated.status == 200, await activated.text()
    clock.advance(seconds=30)  # the activation's step is spent: log in on the next one
    return secret, (await activated.json())["recovery_codes"]


async def verify(client: Any, token: str, **context: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/verify", json={"token": token, "context": context})
    return resp.status, dict(await resp.json())


# ---- enrolment and login ---------------------------------------------------------------------------


async def test_enrolled_user_logs_in_with_a_challenge_and_a_code(
    mclient: Any, clock: FakeClock
) -> None:
    """After enrolment a right password answers a challenge, not a token; the challenge and a
    current code answer a token that verify reports as minted with MFA."""
    secret, codes = await enrolled_user(mclient, clock)

    first_status, first = await password_login(mclient, "alice", ALICE)
    second_status, second = await answer(mclient, first["challenge"], code(secret, clock))
    verified_status, verified = await verify(mclient, second["token"], require_mfa=True)

    assert len(codes) == 10 and len(set(codes)) == 10
    assert first_status == 401 and first["mfa_required"] is True and "token" not in first
    assert second_status == 200, second
    assert second["mfa"] is True and second["subject"] == "alice"
    assert verified_status == 200 and verified["mfa"] is True


async def test_the_same_code_is_refused_a_second_time(mclient: Any, clock: FakeClock) -> None:
    """A TOTP code that logged in once is refused on a fresh challenge within its window; the
    next step's code works."""
    secret, _ = await enrolled_user(mclient, clock)
    otp = code(secret, clock)
    _, c1 = await password_login(mclient, "alice", ALICE)
    ok, _ = await answer(mclient, c1["challenge"], otp)

    _, c2 = await password_login(mclient, "alice", ALICE)
    replay, replay_body = await answer(mclient, c2["challenge"], otp)
    clock.advance(seconds=30)
    fresh, _ = await answer(mclient, c2["challenge"], code(secret, clock))

    assert ok == 200
    assert replay == 401 and "token" not in replay_body
    assert fresh == 200


async def test_a_challenge_yields_one_token(mclient: Any, clock: FakeClock) -> None:
    """A challenge that yielded a token does not yield another, even with a new valid code."""
    secret, _ = await enrolled_user(mclient, clock)
    _, c1 = await password_login(mclient, "alice", ALICE)
    first, _ = await answer(mclient, c1["challenge"], code(secret, clock))
    clock.advance(seconds=30)

    again, _ = await answer(mclient, c1["challenge"], code(secret, clock))

    assert (first, again) == (200, 401)


async def test_a_challenge_is_bound_to_its_client_address_and_expires(
    mclient: Any, clock: FakeClock
) -> None:
    """A challenge answered from another address, or after five minutes, yields no token."""
    secret, _ = await enrolled_user(mclient, clock)
    _, c1 = await password_login(mclient, "alice", ALICE, ip="192.0.2.1")

    elsewhere, _ = await answer(mclient, c1["challenge"], code(secret, clock), ip="198.51.100.7")
    clock.advance(minutes=6)
    late, _ = await answer(mclient, c1["challenge"], code(secret, clock), ip="192.0.2.1")

    assert (elsewhere, late) == (401, 401)


async def test_password_and_code_in_one_call(mclient: Any, clock: FakeClock) -> None:
    """Scripts send the password and the code together and get the token at once; a wrong code
    or a wrong password gets one 401 without a challenge."""
    secret, _ = await enrolled_user(mclient, clock)

    def body(password: str, otp: str) -> dict[str, str]:
        return {"username": "alice", "password": password, "otp": otp}

    wrong_code = await mclient.post(
        "/v1/login", json=body(ALICE, "000000"), headers=frm("192.0.2.1")
    )
    wrong_pw = await mclient.post(
        "/v1/login", json=body("not it at all", code(secret, clock)), headers=frm("192.0.2.1")
    )
    ok = await mclient.post(
        "/v1/login", json=body(ALICE, code(secret, clock)), headers=frm("192.0.2.1")
    )

    assert (wrong_code.status, wrong_pw.status, ok.status) == (401, 401, 200)
    assert await wrong_code.json() == await wrong_pw.json()
    assert (await ok.json())["mfa"] is True


async def test_a_recovery_code_works_once(mclient: Any, clock: FakeClock) -> None:
    """A recovery code stands in for a TOTP code once; the second use is refused and the
    remaining count goes down by one."""
    _, codes = await enrolled_user(mclient, clock)
    _, c1 = await password_login(mclient, "alice", ALICE)
    used, token_body = await answer(mclient, c1["challenge"], codes[3].upper())

    _, c2 = await password_login(mclient, "alice", ALICE)
    again, _ = await answer(mclient, c2["challenge"], codes[3])
    status = await mclient.get("/v1/mfa", headers=bearer(token_body["token"]))

    assert (used, again) == (200, 401)
    assert (await status.json())["recovery_codes_remaining"] == 9


# ---- what the password step tells an attacker ------------------------------------------------------


async def test_unknown_wrong_and_enrolled_look_alike_before_the_second_step(
    mclient: Any, clock: FakeClock
) -> None:
    """Unknown user, wrong password and an enrolled user's right password: the same status and
    body (the challenge aside, random, of one length), and no token in any."""
    await enrolled_user(mclient, clock)

    answers = []
    for name, password in (("nobody", ALICE), ("alice", "wrong password!"), ("alice", ALICE)):
        resp = await mclient.post(
            "/v1/login", headers={**basic_auth(name, password), **frm("192.0.2.9")}
        )
        answers.append((resp.status, mask_challenge(await resp.read())))

    assert len(set(answers)) == 1, answers
    assert answers[0][0] == 401


async def test_a_decoy_challenge_never_yields_a_token(mclient: Any, clock: FakeClock) -> None:
    """The challenge a wrong password gets refuses the owner's right code and recovery code."""
    secret, codes = await enrolled_user(mclient, clock)
    _, decoy = await password_login(mclient, "alice", "wrong password!")

    totp, _ = await answer(mclient, decoy["challenge"], code(secret, clock))
    recovery, _ = await answer(mclient, decoy["challenge"], codes[0])

    assert (totp, recovery) == (401, 401)


# ---- guessing ----------------------------------------------------------------------------------------


async def test_200_concurrent_guesses_judge_at_most_the_threshold(
    mclient: Any, clock: FakeClock
) -> None:
    """200 concurrent wrong codes on one challenge: at most the identity+IP threshold (5) are
    judged (401), the rest locked out (429), none accepted — and then the right code is locked
    out too from that address."""
    secret, _ = await enrolled_user(mclient, clock)
    right = code(secret, clock)
    _, c1 = await password_login(mclient, "alice", ALICE, ip="203.0.113.5")
    guesses = [f"{(int(right) + 1 + n) % 1_000_000:06d}" for n in range(200)]  # all wrong

    results = await asyncio.gather(
        *(answer(mclient, c1["challenge"], g, ip="203.0.113.5") for g in guesses)
    )
    after, _ = await answer(mclient, c1["challenge"], right, ip="203.0.113.5")

    statuses = [status for status, _ in results]
    assert statuses.count(200) == 0
    assert statuses.count(401) <= 5
    assert statuses.count(401) + statuses.count(429) == 200
    assert after == 429


async def test_otp_lockout_never_locks_the_owners_password_step_from_a_trusted_ip(
    mclient: Any, clock: FakeClock
) -> None:
    """An attacker who knows the password and exhausts the OTP counters from many addresses
    locks the code step for the identity; the owner's trusted address still gets its password
    checked (a challenge, not 429) and logs in with a code."""
    secret, _ = await enrolled_user(mclient, clock)
    _, mine = await password_login(mclient, "alice", ALICE, ip="192.0.2.44")
    assert (await answer(mclient, mine["challenge"], code(secret, clock), ip="192.0.2.44"))[
        0
    ] == 200
    clock.advance(seconds=30)

    locked = []
    for n in range(30):
        ip = f"198.51.100.{n + 1}"
        status, theirs = await password_login(mclient, "alice", ALICE, ip=ip)
        if status == 429:  # a right password counts as a wrong one until the code holds
            locked.append(status)
            continue
        for guess in ("000001", "000002"):
            locked.append((await answer(mclient, theirs["challenge"], guess, ip=ip))[0])
    owner_pw, owner = await password_login(mclient, "alice", ALICE, ip="192.0.2.44")
    owner_code, _ = await answer(mclient, owner["challenge"], code(secret, clock), ip="192.0.2.44")

    assert 429 in locked and 200 not in locked
    assert owner_pw == 401 and owner["mfa_required"] is True
    assert owner_code == 200


# ---- tokens carry MFA, unforgeably -------------------------------------------------------------------


async def test_require_mfa_refuses_a_token_minted_without_it(
    mclient: Any, clock: FakeClock
) -> None:
    """verify with require_mfa: 403 for a password-only token, 200 for an MFA one; without
    require_mfa both pass and `mfa` says which is which. Forward-auth does the same."""
    secret, _ = await enrolled_user(mclient, clock)
    plain = await admin_token(mclient)
    _, c1 = await password_login(mclient, "alice", ALICE)
    _, strong = await answer(mclient, c1["challenge"], code(secret, clock))

    plain_required = await verify(mclient, plain, require_mfa=True)
    plain_free = await verify(mclient, plain)
    strong_required = await verify(mclient, strong["token"], require_mfa=True)
    auth_plain = await mclient.get(
        "/v1/auth", headers={**bearer(plain), "X-Auth-Require-MFA": "true"}
    )
    auth_strong = await mclient.get(
        "/v1/auth", headers={**bearer(strong["token"]), "X-Auth-Require-MFA": "true"}
    )

    assert plain_required[0] == 403 and "second factor" in plain_required[1]["reason"]
    assert plain_free[0] == 200 and plain_free[1]["mfa"] is False
    assert strong_required[0] == 200 and strong_required[1]["mfa"] is True
    assert (auth_plain.status, auth_strong.status) == (403, 200)
    assert auth_strong.headers["X-Auth-MFA"] == "true"


async def test_mfa_cannot_be_forged_by_attenuation_or_by_flipping_the_flag(
    mclient: Any, clock: FakeClock
) -> None:
    """A holder of a password-only token who appends `declared mfa true` (or any caveat) is still
    refused under require_mfa; setting the identifier's MFA bit breaks the signature (401)."""
    plain = await admin_token(mclient)
    attenuated = attenuate(plain, [b"declared mfa true"])
    macaroon = decode_token(plain, max_bytes=1 << 16, max_caveats=128)
    ident = bytearray(macaroon.identifier)
    ident[1] |= FLAG_MFA
    flipped = encode_token(
        Macaroon(bytes(ident), macaroon.caveats, macaroon.signature, macaroon.location)
    )

    by_caveat = await verify(mclient, attenuated, require_mfa=True)
    by_flag = await verify(mclient, flipped, require_mfa=True)

    assert by_caveat[0] == 403 and by_caveat[1]["valid"] is False
    assert by_flag[0] == 401


async def test_require_mfa_must_be_a_boolean(mclient: Any) -> None:
    """context.require_mfa that is not true or false is a 400, not a silent allow."""
    plain = await admin_token(mclient)

    resp = await mclient.post(
        "/v1/verify", json={"token": plain, "context": {"require_mfa": "yes"}}
    )

    assert resp.status == 400


# ---- self-service and admin reset --------------------------------------------------------------------


async def test_disable_needs_a_fresh_factor(mclient: Any, clock: FakeClock) -> None:
    """Disabling with a wrong code is refused and leaves MFA on; with a current code it turns
    MFA off, and the password alone logs in again."""
    secret, _ = await enrolled_user(mclient, clock)
    _, c1 = await password_login(mclient, "alice", ALICE)
    _, token = await answer(mclient, c1["challenge"], code(secret, clock))
    clock.advance(seconds=30)

    wrong = await mclient.post(
        "/v1/mfa/disable", json={"otp": "000000"}, headers=bearer(token["token"])
    )
    right = await mclient.post(
        "/v1/mfa/disable", json={"otp": code(secret, clock)}, headers=bearer(token["token"])
    )
    after, body = await password_login(mclient, "alice", ALICE)

    assert (wrong.status, right.status) == (401, 204)
    assert after == 200 and body["mfa"] is False


async def test_enrol_twice_is_a_conflict(mclient: Any, clock: FakeClock) -> None:
    """An active factor is not replaced by a new enrolment (a stolen token cannot swap it)."""
    secret, _ = await enrolled_user(mclient, clock)
    _, c1 = await password_login(mclient, "alice", ALICE)
    _, token = await answer(mclient, c1["challenge"], code(secret, clock))

    again = await mclient.post(
        "/v1/mfa/enroll", json={"password": ALICE}, headers=bearer(token["token"])
    )

    assert again.status == 409


async def new_user_token(client: Any, name: str = "alice") -> tuple[str, str]:
    """Create `name` (not enrolled) and log in with its password; (admin token, user token)."""
    root = await admin_token(client)
    made = await client.post(
        "/v1/users", json={"name": name, "password": ALICE}, headers=bearer(root)
    )
    assert made.status == 201, await made.text()
    status, body = await password_login(client, name, ALICE)
    assert status == 200, body
    return root, str(body["token"])


async def test_enrol_needs_the_current_password(mclient: Any, clock: FakeClock) -> None:
    """Enrolment asks for the password again: none is a 400, a wrong one a 401 counted as a
    failed login for the user, and nothing is left pending; the right one starts enrolment."""
    root, token = await new_user_token(mclient)
    thief = {**bearer(token), **frm("203.0.113.9")}

    no_body = await mclient.post("/v1/mfa/enroll", headers=thief)
    empty = await mclient.post("/v1/mfa/enroll", json={}, headers=thief)
    blank = await mclient.post("/v1/mfa/enroll", json={"password": ""}, headers=thief)
    wrong = await mclient.post("/v1/mfa/enroll", json={"password": "not hers"}, headers=thief)
    counted = await (await mclient.get("/v1/users/alice/lockout", headers=bearer(root))).json()
    pending = (await (await mclient.get("/v1/mfa", headers=bearer(token))).json())["pending"]
    right = await mclient.post(
        "/v1/mfa/enroll", json={"password": ALICE}, headers={**bearer(token), **frm("192.0.2.1")}
    )

    assert (no_body.status, empty.status, blank.status) == (400, 400, 400)
    assert wrong.status == 401
    assert (await wrong.json())["error"]["code"]
    assert counted["failures"] == 1, counted
    assert pending is False
    assert right.status == 200 and (await right.json())["secret"]


async def test_wrong_enrol_passwords_lock_out_like_logins(mclient: Any, clock: FakeClock) -> None:
    """Guessing the password through enrolment hits the login lockout: after the threshold a
    429 with Retry-After, and the right password is refused too while locked."""
    _, token = await new_user_token(mclient)
    thief = {**bearer(token), **frm("203.0.113.9")}

    statuses = [
        (await mclient.post("/v1/mfa/enroll", json={"password": f"guess {n}"}, headers=thief))
        for n in range(12)
    ]
    right = await mclient.post("/v1/mfa/enroll", json={"password": ALICE}, headers=thief)

    assert statuses[0].status == 401 and statuses[-1].status == 429
    assert "Retry-After" in statuses[-1].headers
    assert right.status == 429


async def test_admin_reset_is_audited_and_needs_an_admin(mclient: Any, clock: FakeClock) -> None:
    """A user cannot reset another's factor; an admin can, the audit log records it, and the
    user logs in with the password alone afterwards."""
    await enrolled_user(mclient, clock)
    await enrolled_user(mclient, clock, name="bob")
    root = await admin_token(mclient)
    bobs = await mclient.post(
        "/v1/login", json={"username": "bob", "password": ALICE, "otp": "000000"}
    )
    assert bobs.status == 401

    resp = await mclient.delete("/v1/users/alice/mfa", headers=bearer(root))
    audit = await mclient.get("/v1/audit", headers=bearer(root))
    after, body = await password_login(mclient, "alice", ALICE)

    assert resp.status == 200 and (await resp.json())["reset"] is True
    entries = (await audit.json())["entries"]
    assert any(e["action"] == "mfa_reset" and e["target"] == "alice" for e in entries)
    assert after == 200 and "token" in body


# ---- policy: roles that require MFA ----------------------------------------------------------------


async def test_a_role_requiring_mfa_gets_no_admin_token_without_it(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """With TOKENSVC_MFA_REQUIRED_ROLES=admin, the admin's password alone gets a token that can
    only enrol (not admin-capable, refused by admin calls); after enrolling, an MFA login gets an
    admin token that works."""
    client = await serve(
        aiohttp_client,
        mfa_config.model_copy(update={"mfa_required_roles": frozenset({"admin"})}),
        clock,
    )

    status, weak = await password_login(client, "admin", ADMIN_PASSWORD)
    refused = await client.get("/v1/users", headers=bearer(weak["token"]))
    mint = await client.post("/v1/tokens", json={"subject": "x"}, headers=bearer(weak["token"]))
    started = await client.post(
        "/v1/mfa/enroll", json={"password": ADMIN_PASSWORD}, headers=bearer(weak["token"])
    )
    secret = (await started.json())["secret"]
    activated = await client.post(
        "/v1/mfa/activate", json={"otp": code(secret, clock)}, headers=bearer(weak["token"])
    )
    clock.advance(seconds=30)
    _, c1 = await password_login(client, "admin", ADMIN_PASSWORD)
    _, strong = await answer(client, c1["challenge"], code(secret, clock))
    allowed = await client.get("/v1/users", headers=bearer(strong["token"]))

    assert status == 200 and weak["admin"] is False and weak["mfa"] is False
    assert refused.status == 403 and mint.status == 403
    assert started.status == 200 and activated.status == 200
    assert strong["admin"] is True and strong["mfa"] is True
    assert allowed.status == 200


async def test_an_old_admin_token_stops_administering_once_mfa_is_required(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """An admin token minted without MFA is refused by admin calls once the admin role requires
    MFA (the same database, a replica restarted with the policy)."""
    first = await serve(aiohttp_client, mfa_config, clock)
    old = await admin_token(first)
    assert (await first.get("/v1/users", headers=bearer(old))).status == 200
    strict = await serve(
        aiohttp_client,
        mfa_config.model_copy(update={"mfa_required_roles": frozenset({"admin"})}),
        clock,
    )

    resp = await strict.get("/v1/users", headers=bearer(old))

    assert resp.status == 403


# ---- replicas -----------------------------------------------------------------------------------------


async def test_a_code_used_on_one_replica_is_refused_on_another(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Path,
    redis_url: str,
    redis_prefix: str,
    clock: FakeClock,
) -> None:
    """Two replicas sharing PostgreSQL and Redis: a code that logged in on one is refused on the
    other (fresh challenge there), and either opens the other's challenges."""
    config = make_config(
        database_url=pg_url,
        data_dir=data_dir,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        trusted_proxies=TRUSTED,
    )
    one = await serve(aiohttp_client, config, clock)
    two = await serve(aiohttp_client, config, clock)
    secret, _ = await enrolled_user(one, clock)
    otp = code(secret, clock)

    _, c1 = await password_login(one, "alice", ALICE)
    ok, _ = await answer(two, c1["challenge"], otp)
    _, c2 = await password_login(two, "alice", ALICE)
    replay, _ = await answer(two, c2["challenge"], otp)
    replay_one, _ = await answer(one, c2["challenge"], otp)

    assert ok == 200
    assert (replay, replay_one) == (401, 401)
    assert one.app[appkeys.FACTORS] is not two.app[appkeys.FACTORS]


# ---- timing ---------------------------------------------------------------------------------------

TIMING_ROUNDS = 60
TIMING_WARMUP = 5


@pytest.mark.serial  # wall-clock bound: run alone
async def test_unknown_wrong_and_enrolled_take_the_same_time(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Path,
    redis_url: str,
    redis_prefix: str,
    clock: FakeClock,
) -> None:
    """With OWASP argon2, PostgreSQL and Redis, the password step's median times for an unknown
    user, a wrong password and an enrolled user's right password differ by less than 10 %."""
    config = make_config(
        database_url=pg_url,
        data_dir=data_dir,
        password_profile="OWASP",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        trusted_proxies=TRUSTED,
    )
    client = await serve(aiohttp_client, config, clock)
    await enrolled_user(client, clock)
    lockout = client.app[appkeys.LOCKOUT]
    kinds = ("unknown", "wrong", "enrolled")
    credentials = {
        "unknown": ("ghost", ALICE),
        "wrong": ("alice", "not the password"),
        "enrolled": ("alice", ALICE),
    }
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    rng = random.Random(19)

    for n in range(TIMING_WARMUP + TIMING_ROUNDS):
        order = list(kinds)
        rng.shuffle(order)  # each round in random order, so drift hits all three alike
        for kind in order:
            name, password = credentials[kind]
            headers = {**basic_auth(name, password), **frm(f"10.{n % 200}.{kinds.index(kind)}.1")}
            started = time.perf_counter()
            resp = await client.post("/v1/login", headers=headers)
            await resp.read()
            elapsed = time.perf_counter() - started
            assert resp.status == 401
            await lockout.clear(name)  # untimed: keep the identity counter below its threshold
            if n >= TIMING_WARMUP:
                samples[kind].append(elapsed)

    medians = {kind: statistics.median(samples[kind]) for kind in kinds}
    spread = (max(medians.values()) - min(medians.values())) / max(medians.values())
    print(
        "\npassword-step timing over 60 attempts each (OWASP argon2id, PostgreSQL, Redis): "
        + ", ".join(f"{kind} {medians[kind] * 1000:.2f} ms" for kind in kinds)
        + f"; spread {spread:.1%}"
    )
    assert all(len(samples[kind]) == TIMING_ROUNDS for kind in kinds)
    assert spread < 0.10


# ---- the bakery discharger --------------------------------------------------------------------------


async def test_the_discharger_mfa_conditions_need_a_token_minted_with_mfa(
    mclient: Any, clock: FakeClock
) -> None:
    """`user-is-mfa alice` and `has-role-mfa` are discharged for alice's MFA token (declaring
    `mfa true`), refused for a password-only token (bob's); `user-is` takes either."""
    from tests.bakery.test_bakery_handlers import (
        assert_bakery_error,
        discharge_for,
        discharged,
        predicates,
    )

    secret, _ = await enrolled_user(mclient, clock, roles=["ops"])
    _, c1 = await password_login(mclient, "alice", ALICE)
    _, strong = await answer(mclient, c1["challenge"], code(secret, clock))
    # A password-only login token of the user's own (one an admin minted for a user vouches
    # for nothing at the discharger: tests/bakery/test_bakery_handlers.py): bob has no factor.
    made = await mclient.post(
        "/v1/users",
        json={"name": "bob", "password": ALICE, "roles": ["ops"]},
        headers=bearer(await admin_token(mclient)),
    )
    assert made.status == 201, await made.text()
    weak_token = (await password_login(mclient, "bob", ALICE))[1]["token"]

    with_mfa = await discharge_for(mclient, "user-is-mfa alice", headers=bearer(strong["token"]))
    role_mfa = await discharge_for(mclient, "has-role-mfa ops", headers=bearer(strong["token"]))
    without = await discharge_for(mclient, "user-is-mfa bob", headers=bearer(weak_token))
    role_without = await discharge_for(mclient, "has-role-mfa ops", headers=bearer(weak_token))
    plain = await discharge_for(mclient, "user-is bob", headers=bearer(weak_token))

    assert predicates(await discharged(with_mfa))[1:] == [
        "declared mfa true",
        "declared username alice",
    ]
    assert "declared mfa true" in predicates(await discharged(role_mfa))
    await assert_bakery_error(without, 403, "second factor")
    await assert_bakery_error(role_without, 403, "second factor")
    assert predicates(await discharged(plain))[1:] == ["declared username bob"]
