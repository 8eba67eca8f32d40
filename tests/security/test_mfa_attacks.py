"""Red-team attacks on the second factor: getting an MFA token without one, locking the owner
out, telling accounts apart, and switching the factor off with a stolen token.

Each test is an attack as an attacker would run it against the served app (both shapes:
SQLite with in-process stores, PostgreSQL with Redis); the assertion is what must hold for the
attack to fail.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, mask_challenge
from tests.security.mfa_support import (
    ADMIN_IP,
    ATTACKER_IP,
    VICTIM,
    VICTIM_IP,
    VICTIM_PASSWORD,
    admin_token,
    answer,
    bearer,
    code,
    enrol,
    enrolled_victim,
    frm,
    make_user,
    mfa_config,
    mfa_login,
    password_login,
    second_factor_counters,
    serve,
    verify,
)

__all__ = ["mfa_config"]  # the fixture, imported for pytest

WRONG = "not the password at all"


async def probe_after(client: Any, candidate: str, ip: str) -> int:
    """Four known-wrong passwords from `ip`, then `candidate`, then one more wrong one: the
    status of that last probe (429 when the candidate was counted as a failure)."""
    for _ in range(4):
        status, _ = await password_login(client, VICTIM, WRONG, ip=ip)
        assert status == 401
    await password_login(client, VICTIM, candidate, ip=ip)
    status, _ = await password_login(client, VICTIM, WRONG, ip=ip)
    return status


# ---- telling a right password apart before the second step ------------------------------------


async def test_lockout_does_not_reveal_an_enrolled_users_right_password(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """An attacker with four wrong guesses behind it cannot learn whether a fifth was the
    enrolled user's right password from whether the next attempt is locked out."""
    client = await serve(aiohttp_client, mfa_config, clock)
    await enrolled_victim(client, clock)

    after_right = await probe_after(client, VICTIM_PASSWORD, ip="198.51.100.1")
    after_wrong = await probe_after(client, "another wrong one", ip="198.51.100.2")

    assert after_wrong == 429
    assert after_right == after_wrong


async def test_one_call_lockout_does_not_reveal_an_enrolled_users_right_password(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """With password and a wrong code in one call, a right password is counted against the
    password step exactly as a wrong one is: the next attempt's status is the same."""
    client = await serve(aiohttp_client, mfa_config, clock)
    await enrolled_victim(client, clock)

    statuses = []
    for ip, candidate in (("198.51.100.3", VICTIM_PASSWORD), ("198.51.100.4", WRONG + "!")):
        for _ in range(4):
            await password_login(client, VICTIM, WRONG, ip=ip)
        await password_login(client, VICTIM, candidate, ip=ip, otp="000000")
        statuses.append((await password_login(client, VICTIM, WRONG, ip=ip))[0])

    assert statuses == [429, 429]


async def test_password_step_answers_look_alike_headers_and_all(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Unknown user, wrong password of an enrolled user, and the enrolled user's right password
    get the same status, the same header names and the same body but for the random challenge."""
    client = await serve(aiohttp_client, mfa_config, clock)
    await enrolled_victim(client, clock)

    answers = []
    for name, password in (("nobody-here", WRONG), (VICTIM, WRONG), (VICTIM, VICTIM_PASSWORD)):
        resp = await client.post(
            "/v1/login", headers={**basic_auth(name, password), **frm(ATTACKER_IP)}
        )
        body = await resp.read()
        answers.append(
            (
                resp.status,
                sorted(h.lower() for h in resp.headers if h.lower() not in ("date",)),
                resp.headers.get("WWW-Authenticate"),
                mask_challenge(body),
            )
        )

    assert answers[0][0] == 401
    assert answers[0] == answers[1] == answers[2]


async def test_challenge_length_does_not_reveal_an_account_with_a_long_history(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """A user whose generation has grown past one digit (ten revoke-alls, password changes...)
    gets, for a wrong password, a challenge of the same length as a name nobody has: the
    challenge does not carry the generation's width."""
    client = await serve(aiohttp_client, mfa_config, clock)
    await make_user(client)
    root = bearer(await admin_token(client), ADMIN_IP)
    for _ in range(12):
        raised = await client.post(f"/v1/subjects/{VICTIM}/revoke-all", headers=root)
        assert raised.status in (200, 204), await raised.text()

    _, existing = await password_login(client, VICTIM, WRONG, ip=ATTACKER_IP)
    _, unknown = await password_login(client, "nobody-here", WRONG, ip=ATTACKER_IP)

    assert len(existing["challenge"]) == len(unknown["challenge"])


async def test_a_decoys_second_step_runs_the_statements_a_real_one_runs(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """A wrong code on a real challenge (right password) and on a decoy (wrong password) send
    the same database statements, so the second step's time does not tell which guess at the
    password was right."""
    from sqlalchemy import event

    from tokensvc.web import appkeys

    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    engine = client.server.app[appkeys.ENGINE].sync_engine
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        statements.append(sql)

    _, real = await password_login(client, VICTIM, VICTIM_PASSWORD, ip="203.0.113.7")
    _, decoy = await password_login(client, VICTIM, WRONG, ip="203.0.113.8")
    wrong = "123456" if code(secret, clock) != "123456" else "654321"
    seen = {}
    event.listen(engine, "before_cursor_execute", record)
    try:
        for name, challenge, ip in (("real", real, "203.0.113.7"), ("decoy", decoy, "203.0.113.8")):
            for guess in (wrong, "aaaa-bbbb-cccc"):
                statements.clear()
                status, _ = await answer(client, challenge["challenge"], guess, ip=ip)
                assert status == 401
                seen[name, guess] = list(statements)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert seen["real", wrong] == seen["decoy", wrong]
    assert seen["real", "aaaa-bbbb-cccc"] == seen["decoy", "aaaa-bbbb-cccc"]


# ---- lockout as a denial of service ------------------------------------------------------------


async def test_a_decoy_challenge_cannot_lock_the_owner_out(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """An attacker without the password takes a (decoy) challenge for the victim and burns code
    guesses on it until it is locked out; the victim, from an address they completed a login
    from, still logs in with password and code."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    await mfa_login(client, clock, secret)  # VICTIM_IP is now one the owner logs in from

    _, decoy = await password_login(client, VICTIM, WRONG, ip=ATTACKER_IP)
    statuses = [
        (await answer(client, decoy["challenge"], f"{n:06d}", ip=ATTACKER_IP))[0] for n in range(30)
    ]
    owner = await mfa_login(client, clock, secret)

    assert set(statuses[:5]) == {401} and statuses[-1] == 429
    assert owner["mfa"] is True


async def test_an_attacker_with_the_password_cannot_lock_the_owners_password_step(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """An attacker who knows the password, from a handful of addresses, exhausts code guesses
    and password attempts; the owner's password and code still work from their usual address."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    await mfa_login(client, clock, secret)

    for host in range(1, 5):
        ip = f"203.0.113.{host}"
        for _ in range(6):
            status, first = await password_login(client, VICTIM, VICTIM_PASSWORD, ip=ip)
            if status == 401:
                for n in range(6):
                    await answer(client, first["challenge"], f"{n:06d}", ip=ip)
    owner = await mfa_login(client, clock, secret)

    assert owner["mfa"] is True


async def test_an_admin_sees_and_clears_a_second_factor_lock(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Red team: an attacker without the password locked the victim's codes with a decoy
    challenge; the admin's lockout view said "not locked", the admin's clear changed nothing, and
    the victim, from a new address, got 429. Both now cover the second factor's counters."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    _, decoy = await password_login(client, VICTIM, WRONG, ip=ATTACKER_IP)
    statuses = [
        (await answer(client, decoy["challenge"], f"{n:06d}", ip=ATTACKER_IP))[0] for n in range(30)
    ]
    assert statuses[-1] == 429
    admin = bearer(await admin_token(client), ADMIN_IP)

    seen = await (await client.get(f"/v1/users/{VICTIM}/lockout", headers=admin)).json()
    cleared = await client.delete(f"/v1/users/{VICTIM}/lockout", headers=admin)
    after = await (await client.get(f"/v1/users/{VICTIM}/lockout", headers=admin)).json()
    owner = await mfa_login(client, clock, secret, ip="192.0.2.77")  # an address never used

    assert seen["locked"] is True
    assert {c["scope"] for c in seen["counters"]} >= {"second_factor"}
    assert cleared.status == 204
    assert after["locked"] is False
    assert owner["mfa"] is True


async def test_a_challenge_sent_from_another_address_counts_no_failure(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Red team: code guesses on one challenge counted against the account from any address,
    though a challenge is bound to the one it was issued to. Now such an answer is refused
    without counting: from ten other addresses, thirty guesses lock nothing."""
    client = await serve(aiohttp_client, mfa_config, clock)
    await enrolled_victim(client, clock)
    _, decoy = await password_login(client, VICTIM, WRONG, ip=ATTACKER_IP)

    statuses = [
        (await answer(client, decoy["challenge"], f"{n:06d}", ip=f"203.0.113.{n % 10 + 20}"))[0]
        for n in range(30)
    ]
    assert set(statuses) == {401}
    assert await second_factor_counters(client) == []


# ---- getting an MFA token without the second factor -------------------------------------------


async def test_a_challenge_cannot_be_answered_with_another_users_code(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Mallory, enrolled herself, answers alice's challenge (got with alice's password from
    alice's address) with her own current code: refused."""
    client = await serve(aiohttp_client, mfa_config, clock)
    await enrolled_victim(client, clock)
    mallory_token = await make_user(client, name="mallory")
    mallory_secret, mallory_codes = await enrol(client, clock, mallory_token)

    _, first = await password_login(client, VICTIM, VICTIM_PASSWORD)
    with_totp = await answer(client, first["challenge"], code(mallory_secret, clock))
    with_recovery = await answer(client, first["challenge"], mallory_codes[0])

    assert with_totp[0] == 401 and "token" not in with_totp[1]
    assert with_recovery[0] == 401 and "token" not in with_recovery[1]


async def test_two_factors_raced_on_one_challenge_yield_one_token(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """The same challenge answered at once with the current code and with a recovery code
    yields exactly one token."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, codes, _ = await enrolled_victim(client, clock)
    _, first = await password_login(client, VICTIM, VICTIM_PASSWORD)

    results = await asyncio.gather(
        answer(client, first["challenge"], code(secret, clock)),
        answer(client, first["challenge"], codes[0]),
        answer(client, first["challenge"], code(secret, clock, steps=-1)),
    )

    assert sorted(status for status, _ in results) == [200, 401, 401]


async def test_one_recovery_code_raced_on_two_challenges_yields_one_token(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Two challenges, one recovery code sent to both at once: one token, and the code is spent."""
    client = await serve(aiohttp_client, mfa_config, clock)
    _, codes, _ = await enrolled_victim(client, clock)
    _, c1 = await password_login(client, VICTIM, VICTIM_PASSWORD)
    _, c2 = await password_login(client, VICTIM, VICTIM_PASSWORD)

    results = await asyncio.gather(
        answer(client, c1["challenge"], codes[1]), answer(client, c2["challenge"], codes[1])
    )
    _, c3 = await password_login(client, VICTIM, VICTIM_PASSWORD)
    again = await answer(client, c3["challenge"], codes[1])

    assert sorted(status for status, _ in results) == [200, 401]
    assert again[0] == 401


async def test_one_totp_code_raced_on_many_challenges_yields_one_token(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Four challenges answered at once with the same current code (an attacker who shoulder-
    surfed it races the owner): exactly one token."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    challenges = [(await password_login(client, VICTIM, VICTIM_PASSWORD))[1] for _ in range(4)]

    current = code(secret, clock)
    results = await asyncio.gather(*(answer(client, c["challenge"], current) for c in challenges))

    assert sorted(status for status, _ in results) == [200, 401, 401, 401]


async def test_recovery_codes_die_when_regenerated(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """After the owner regenerates recovery codes, a code of the old set (say, a printed copy
    an attacker found) is refused; a new one works once."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, old_codes, _ = await enrolled_victim(client, clock)
    token = (await mfa_login(client, clock, secret))["token"]

    regenerated = await client.post(
        "/v1/mfa/recovery-codes", json={"otp": code(secret, clock)}, headers=bearer(token)
    )
    new_codes = (await regenerated.json())["recovery_codes"]
    _, c1 = await password_login(client, VICTIM, VICTIM_PASSWORD)
    old = await answer(client, c1["challenge"], old_codes[2])
    new = await answer(client, c1["challenge"], new_codes[0])

    assert regenerated.status == 200
    assert old[0] == 401
    assert new[0] == 200 and new[1]["mfa"] is True


async def test_an_old_factor_is_dead_after_disable_and_reenrolment(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """After disable and a new enrolment, codes of the old secret and old recovery codes are
    refused on a fresh challenge."""
    client = await serve(aiohttp_client, mfa_config, clock)
    old_secret, old_codes, _ = await enrolled_victim(client, clock)
    token = (await mfa_login(client, clock, old_secret))["token"]
    disabled = await client.post(
        "/v1/mfa/disable", json={"otp": code(old_secret, clock)}, headers=bearer(token)
    )
    clock.advance(seconds=30)
    await enrol(client, clock, token)

    _, c1 = await password_login(client, VICTIM, VICTIM_PASSWORD)
    by_old_totp = await answer(client, c1["challenge"], code(old_secret, clock))
    by_old_recovery = await answer(client, c1["challenge"], old_codes[3])

    assert disabled.status == 204 or disabled.status == 200
    assert by_old_totp[0] == 401 and by_old_recovery[0] == 401


async def test_after_an_admin_reset_no_token_claims_mfa(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """After an admin resets the victim's factor, a password with the old code in one call
    gets a token that is not marked MFA, and require_mfa refuses it."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    reset = await client.delete(
        f"/v1/users/{VICTIM}/mfa", headers=bearer(await admin_token(client), ADMIN_IP)
    )

    status, body = await password_login(client, VICTIM, VICTIM_PASSWORD, otp=code(secret, clock))
    verified, _ = await verify(client, body["token"], require_mfa=True)

    assert reset.status in (200, 204)
    assert status == 200 and body["mfa"] is False
    assert verified == 403


async def test_a_challenge_issued_before_a_password_change_yields_no_live_token(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """A challenge got with the old password and answered after the owner changed it gives
    nothing that verifies."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    _, first = await password_login(client, VICTIM, VICTIM_PASSWORD)
    changed = await client.patch(
        f"/v1/users/{VICTIM}",
        json={"password": "a brand new long passphrase"},
        headers=bearer(await admin_token(client), ADMIN_IP),
    )

    status, body = await answer(client, first["challenge"], code(secret, clock))

    assert changed.status == 200, await changed.text()
    assert status == 401 or (await verify(client, body["token"]))[0] == 401


async def test_delegation_never_makes_a_token_mfa(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """An admin token minted without MFA mints no MFA token for itself; an MFA admin token mints
    MFA only for its own subject, never for another one (nor a service token for another)."""
    client = await serve(aiohttp_client, mfa_config, clock)
    plain_admin = await admin_token(client)
    await make_user(client)
    secret, _ = await enrol(client, clock, plain_admin, password=ADMIN_PASSWORD)
    _, challenge = await password_login(client, "admin", ADMIN_PASSWORD, ip=ADMIN_IP)
    _, strong = await answer(client, challenge["challenge"], code(secret, clock), ip=ADMIN_IP)

    async def mint(token: str, **body: Any) -> Any:
        resp = await client.post("/v1/tokens", json=body, headers=bearer(token, ADMIN_IP))
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()

    from_plain = await mint(plain_admin, subject="admin", ttl=600)
    for_other = await mint(strong["token"], subject=VICTIM, ttl=600)
    # (Not for the user VICTIM's name itself: a service token for a user's name is refused.)
    service_for_other = await mint(strong["token"], subject=f"{VICTIM}-svc", service=True)
    for_self = await mint(strong["token"], subject="admin", ttl=600)

    assert strong["mfa"] is True
    assert from_plain["mfa"] is False
    assert for_other["mfa"] is False and service_for_other["mfa"] is False
    assert for_self["mfa"] is True
    assert (await verify(client, for_other["token"], require_mfa=True))[0] == 403


# ---- the enrol-only token of a role that requires MFA -----------------------------------------


async def test_the_enrol_only_token_can_do_nothing_but_enrol(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """The admin who must enrol gets a token that is refused by every other door: admin calls,
    minting, verdicts, the stream, introspection, /v1/verify (with or without an operation),
    forward-auth and the discharger."""
    from tests.bakery.test_bakery_handlers import discharge_for

    client = await serve(
        aiohttp_client,
        mfa_config.model_copy(update={"mfa_required_roles": frozenset({"admin"})}),
        clock,
    )
    status, weak = await password_login(client, "admin", ADMIN_PASSWORD, ip=ADMIN_IP)
    token = weak["token"]
    headers = bearer(token, ADMIN_IP)

    refused = [
        (await client.get("/v1/users", headers=headers)).status,
        (await client.get("/v1/tokens", headers=headers)).status,
        (await client.post("/v1/tokens", json={"subject": "admin"}, headers=headers)).status,
        (await client.post("/v1/verdict", json={"token": token}, headers=headers)).status,
        (await client.get("/v1/revocations/stream?until=now", headers=headers)).status,
        (await client.post("/v1/introspect", data={"token": token}, headers=headers)).status,
        (await client.get("/v1/auth", headers={**headers, "X-Original-URI": "/x"})).status,
        (await verify(client, token))[0],
        (await verify(client, token, operation="read"))[0],
        (await discharge_for(client, "user-is admin", headers=headers)).status,
        (await discharge_for(client, "has-role admin", headers=headers)).status,
    ]
    own = await client.get("/v1/mfa", headers=headers)

    assert status == 200 and weak["admin"] is False and weak["mfa"] is False
    assert all(s in (401, 403) for s in refused), refused
    assert own.status == 200


async def test_the_must_enrol_admin_gets_no_discharge_with_a_password_alone(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """An admin whose role requires MFA and who has not enrolled cannot have the discharger
    vouch for `has-role admin` or `user-is admin` with HTTP Basic: a password alone gets them
    only enrolment, at this door too."""
    from tests.bakery.test_bakery_handlers import discharge_for

    client = await serve(
        aiohttp_client,
        mfa_config.model_copy(update={"mfa_required_roles": frozenset({"admin"})}),
        clock,
    )
    basic = {**basic_auth("admin", ADMIN_PASSWORD), **frm(ADMIN_IP)}

    by_role = await discharge_for(client, "has-role admin", headers=basic)
    by_name = await discharge_for(client, "user-is admin", headers=basic)

    assert by_role.status in (401, 403), await by_role.text()
    assert by_name.status in (401, 403), await by_name.text()


async def test_an_old_admin_token_without_mfa_gets_no_role_discharge(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Once the admin role requires MFA, an admin token minted without a second factor (before
    the policy) gets no `has-role admin` / `user-is admin` discharge (as admin calls refuse it),
    while an ordinary user's role is still vouched for with a password-only token."""
    from tests.bakery.test_bakery_handlers import discharge_for

    before = await serve(aiohttp_client, mfa_config, clock)
    old_admin = await admin_token(before)
    user_token = await make_user(before, roles=["ops"])
    await before.close()
    client = await serve(
        aiohttp_client,
        mfa_config.model_copy(update={"mfa_required_roles": frozenset({"admin"})}),
        clock,
    )
    headers = bearer(old_admin, ADMIN_IP)

    by_role = await discharge_for(client, "has-role admin", headers=headers)
    by_name = await discharge_for(client, "user-is admin", headers=headers)
    ops = await discharge_for(client, "has-role ops", headers=bearer(user_token))

    assert by_role.status == 403, await by_role.text()
    assert by_name.status == 403, await by_name.text()
    assert ops.status == 200, await ops.text()


# ---- switching the factor off with a stolen token ---------------------------------------------


async def test_a_stolen_password_only_token_cannot_switch_the_factor_off(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """A token minted before enrolment (no factor) cannot disable, regenerate codes or re-enrol;
    its code guesses are locked out after the threshold; the owner still logs in."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, stolen = await enrolled_victim(client, clock)
    thief = bearer(stolen, ATTACKER_IP)
    await mfa_login(client, clock, secret)

    no_code = await client.post("/v1/mfa/disable", json={}, headers=thief)
    no_code_codes = await client.post("/v1/mfa/recovery-codes", json={}, headers=thief)
    re_enrol = await client.post(
        "/v1/mfa/enroll", json={"password": "a guess at the password"}, headers=thief
    )
    guesses = [
        (await client.post("/v1/mfa/disable", json={"otp": f"{n:06d}"}, headers=thief)).status
        for n in range(12)
    ]
    status = await client.get("/v1/mfa", headers=bearer(stolen))
    owner = await mfa_login(client, clock, secret)

    assert no_code.status == 400 and no_code_codes.status == 400
    assert re_enrol.status == 409
    assert set(guesses[:5]) == {401} and guesses[-1] == 429
    assert (await status.json())["enrolled"] is True
    assert owner["mfa"] is True


async def test_a_used_challenge_respelled_is_still_used(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """A challenge that yielded a token, sent again with extra base64 padding (which decodes to
    the same sealed box), yields nothing: its one use is named by what is inside, not by the text."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, codes, _ = await enrolled_victim(client, clock)
    _, first = await password_login(client, VICTIM, VICTIM_PASSWORD)

    used = await answer(client, first["challenge"], code(secret, clock))
    respelled = await answer(client, first["challenge"] + "====", codes[0])

    assert used[0] == 200
    assert respelled[0] == 401 and "token" not in respelled[1]


async def test_a_stolen_token_cannot_bind_the_account_to_the_attackers_authenticator(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """A thief holding a not-yet-enrolled user's login token (no password) cannot enrol its own
    authenticator for the account: that would lock the owner out of their own password login
    (PyPI asks for the password again before adding a second factor)."""
    client = await serve(aiohttp_client, mfa_config, clock)
    stolen = await make_user(client)
    thief = bearer(stolen, ATTACKER_IP)

    bare = await client.post("/v1/mfa/enroll", json={}, headers=thief)
    started = await client.post("/v1/mfa/enroll", json={"password": "guess-1234"}, headers=thief)
    attacker_secret = (await started.json())["secret"] if started.status == 200 else ""
    activated = await client.post(
        "/v1/mfa/activate",
        json={"otp": code(attacker_secret, clock) if attacker_secret else "000000"},
        headers=thief,
    )
    status = await client.get("/v1/mfa", headers=bearer(stolen))
    owner, body = await password_login(client, VICTIM, VICTIM_PASSWORD)

    assert bare.status == 400 and started.status == 401, await started.text()
    assert activated.status in (401, 403), await activated.text()
    assert (await status.json())["pending"] is False
    assert owner == 200 and "token" in body


async def test_an_enrol_racing_the_activation_never_switches_the_factor_off(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """A stream of `enroll` calls (a thief with the user's token, or a double click) racing the
    owner's activation never leaves an account whose activation answered 200 without an active
    factor: an enrol only ever replaces a pending enrolment."""
    client = await serve(aiohttp_client, mfa_config, clock)
    outcomes = []
    for trial in range(4):
        token = await make_user(client, name=f"racer{trial}")
        started = await client.post(
            "/v1/mfa/enroll", json={"password": VICTIM_PASSWORD}, headers=bearer(token)
        )
        secret = (await started.json())["secret"]
        done = asyncio.Event()

        async def activate(
            token: str = token, secret: str = secret, done: asyncio.Event = done
        ) -> int:
            try:
                resp = await client.post(
                    "/v1/mfa/activate", json={"otp": code(secret, clock)}, headers=bearer(token)
                )
                return int(resp.status)
            finally:
                done.set()

        async def enrol_until_done(token: str = token, done: asyncio.Event = done) -> list[int]:
            statuses = []
            while not done.is_set():
                again = await client.post(
                    "/v1/mfa/enroll", json={"password": VICTIM_PASSWORD}, headers=bearer(token)
                )
                statuses.append(again.status)
            return statuses

        activated, *enrols = await asyncio.gather(
            activate(), *(enrol_until_done() for _ in range(3))
        )
        state = await (await client.get("/v1/mfa", headers=bearer(token))).json()
        outcomes.append((activated, state["enrolled"], sorted({s for e in enrols for s in e})))

    for activated, enrolled, enrol_statuses in outcomes:
        assert activated in (200, 401, 409), outcomes
        assert set(enrol_statuses) <= {200, 409}, outcomes
        if activated == 200:
            assert enrolled is True, outcomes


# ---- bad input --------------------------------------------------------------------------------


async def test_bad_second_steps_are_clean_4xx(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Tampered, truncated, oversized and mistyped challenges and codes get a 4xx JSON error,
    never a 500 and never a token."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    _, first = await password_login(client, VICTIM, VICTIM_PASSWORD)
    real = first["challenge"]
    current = code(secret, clock)
    flipped = real[:10] + ("A" if real[10] != "A" else "B") + real[11:]
    bodies: list[Any] = [
        {"challenge": flipped, "otp": current},
        {"challenge": real[:-4], "otp": current},
        {"challenge": "é" * 100, "otp": current},
        {"challenge": "A" * 5000, "otp": current},
        {"challenge": real, "otp": 123456},
        {"challenge": real, "otp": [current]},
        {"challenge": 12, "otp": current},
        {"challenge": real, "otp": "１２３４５６"},  # fullwidth digits
        {"challenge": real, "otp": "٠١٢٣٤٥"},  # Arabic-Indic digits
        {"challenge": real, "otp": current + "\x00"},
        {"challenge": real, "otp": "x" * 65},
        {"challenge": real, "otp": current, "username": VICTIM},
        {"challenge": real, "otp": current, "ttl": -5},
        {"challenge": real, "otp": current, "extra": 1},
        {"otp": current},
        {"challenge": real},
    ]

    answers = []
    for body in bodies:
        resp = await client.post("/v1/login", json=body, headers=frm(VICTIM_IP))
        answers.append((resp.status, resp.content_type, await resp.json()))

    for (status, content_type, data), body in zip(answers, bodies, strict=True):
        assert 400 <= status < 500 and status != 429, (body, status, data)
        assert content_type == "application/json" and "token" not in data, (body, data)
        assert set(data["error"]) >= {"code", "message"}, data
    # The challenge was not burnt by any of that: the owner completes it.
    assert (await answer(client, real, current))[0] == 200


async def test_bad_mfa_self_service_inputs_are_clean_4xx(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Malformed bodies and names on the MFA endpoints get a 4xx JSON error, never a 500."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    token = (await mfa_login(client, clock, secret))["token"]
    admin = await admin_token(client)
    calls: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/v1/mfa/activate", {"data": b"{not json"}, token),
        ("POST", "/v1/mfa/activate", {"json": {"otp": 5}}, token),
        ("POST", "/v1/mfa/activate", {"json": ["otp"]}, token),
        ("POST", "/v1/mfa/disable", {"json": {"otp": None}}, token),
        ("POST", "/v1/mfa/disable", {"json": {"otp": "x" * 10_000}}, token),
        ("POST", "/v1/mfa/disable", {"json": {"otp": "000000", "extra": True}}, token),
        ("POST", "/v1/mfa/recovery-codes", {"data": b"\xff\xfe"}, token),
        ("POST", "/v1/mfa/enroll", {"json": {"anything": 1}}, token),
        ("GET", "/v1/users/%00/mfa", {}, admin),
        ("GET", "/v1/users/" + "a" * 300 + "/mfa", {}, admin),
        ("DELETE", "/v1/users/%E2%80%AE/mfa", {}, admin),
        ("DELETE", "/v1/users/nobody/mfa", {}, admin),
    ]

    answers = []
    for method, path, kwargs, caller in calls:
        headers = {**bearer(caller, ADMIN_IP)}
        if "data" in kwargs:
            headers["Content-Type"] = "application/json"
        resp = await client.request(method, path, headers=headers, **kwargs)
        answers.append((method, path, resp.status, resp.content_type))

    for method, path, status, content_type in answers:
        assert 400 <= status < 500, (method, path[:40], status)
        assert content_type == "application/json", (method, path[:40])


# ---- forward-auth -----------------------------------------------------------------------------


async def test_a_client_cannot_switch_require_mfa_off_with_a_header_of_its_own(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """A client that sends `X-Auth-Require-MFA: false` ahead of the one its proxy adds (a proxy
    that appends rather than replaces), or both in one comma-joined line, gets no allow for a
    token minted without MFA."""
    from multidict import CIMultiDict

    client = await serve(aiohttp_client, mfa_config, clock)
    weak = await make_user(client)
    base = {"Authorization": f"Bearer {weak}", "X-Original-URI": "/admin"}

    statuses = []
    for values in (("false", "true"), ("0", "yes"), ("false, true",), ("true",)):
        headers = CIMultiDict(base)
        for value in values:
            headers.add("X-Auth-Require-MFA", value)
        statuses.append((await client.get("/v1/auth", headers=headers)).status)
    alone = (await client.get("/v1/auth", headers=base)).status

    assert statuses == [403, 403, 403, 403]
    assert alone == 200


# ---- secrets in logs --------------------------------------------------------------------------


async def test_no_second_factor_secret_reaches_a_log(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Through enrolment, logins (right and wrong codes, a recovery code, a decoy), garbage
    second steps, code regeneration and disable, logged at DEBUG: no TOTP secret, code,
    recovery code, challenge or password appears in any log line."""
    from tests.security.edges_support import captured_logs

    with captured_logs() as buffer:
        client = await serve(aiohttp_client, mfa_config, clock)
        token = await make_user(client)
        started = await client.post(
            "/v1/mfa/enroll", json={"password": VICTIM_PASSWORD}, headers=bearer(token)
        )
        body = await started.json()
        secret, uri = body["secret"], body["uri"]
        activation = code(secret, clock)
        activated = await client.post(
            "/v1/mfa/activate", json={"otp": activation}, headers=bearer(token)
        )
        codes = (await activated.json())["recovery_codes"]
        clock.advance(seconds=30)
        _, first = await password_login(client, VICTIM, VICTIM_PASSWORD)
        wrong_code = "123456" if code(secret, clock) != "123456" else "654321"
        await answer(client, first["challenge"], wrong_code)
        await answer(client, first["challenge"], "x" * 64)
        await answer(client, first["challenge"][:-3] + "zzz", code(secret, clock))
        await answer(client, first["challenge"], codes[0].upper())
        _, decoy = await password_login(client, VICTIM, WRONG, ip=ATTACKER_IP)
        await answer(client, decoy["challenge"], codes[1], ip=ATTACKER_IP)
        _, second = await password_login(client, VICTIM, VICTIM_PASSWORD, otp=codes[2])
        strong = second["token"]
        clock.advance(seconds=30)
        regenerated = await client.post(
            "/v1/mfa/recovery-codes", json={"otp": code(secret, clock)}, headers=bearer(strong)
        )
        new_codes = (await regenerated.json())["recovery_codes"]
        await client.post("/v1/mfa/disable", json={"otp": codes[3]}, headers=bearer(strong))
        await client.post("/v1/mfa/disable", json={"otp": new_codes[0]}, headers=bearer(strong))
        text = buffer.getvalue()

    assert "mfa_enrolled" in text and "authn_mfa_success" in text  # the log was captured
    # Six-digit codes as whole numbers (not inside a longer run of digits of a timestamp).
    digits_seen = [c for c in (activation, wrong_code) if re.search(rf"(?<!\d){c}(?!\d)", text)]
    secrets_seen = [
        s
        for s in (
            secret,
            uri,
            first["challenge"],
            decoy["challenge"],
            VICTIM_PASSWORD,
            WRONG,
            *codes,
            *(c.replace("-", "") for c in codes),
            *new_codes,
        )
        if s in text
    ]
    assert secrets_seen == [] and digits_seen == []


async def test_a_challenge_from_before_a_password_change_trusts_nothing(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Red team (helper-58): with the old password, a challenge taken before the owner changed
    it, then one code, answered 200 with a token born revoked, and on the way cleared the
    owner's counters and made the attacker's address one the owner "logs in from" (exempt from
    the account-wide counter). Now the answer is the second step's 401, and nothing is settled."""
    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    status, first = await password_login(client, VICTIM, VICTIM_PASSWORD, ip=ATTACKER_IP)
    assert status == 401 and first["mfa_required"] is True
    admin = bearer(await admin_token(client), ADMIN_IP)
    changed = await client.patch(
        f"/v1/users/{VICTIM}", json={"password": "a new and long password 2"}, headers=admin
    )
    assert changed.status == 200, await changed.text()
    before = await (await client.get(f"/v1/users/{VICTIM}/lockout", headers=admin)).json()

    status, body = await answer(client, first["challenge"], code(secret, clock), ip=ATTACKER_IP)

    after = await (await client.get(f"/v1/users/{VICTIM}/lockout", headers=admin)).json()
    assert status == 401 and "token" not in body
    assert after["trusted_ips"] == before["trusted_ips"]


async def test_a_self_service_code_check_that_cannot_finish_counts_nothing(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Red team (helper-58): /v1/mfa/disable, /activate and /recovery-codes counted the code
    attempt before checking it and never took it back when the check could not finish (the
    hasher, database or spent-code store down): a 503 left a failure counted against the
    user, as a login's would not. Here the check fails as a store outage would."""
    from tokensvc.errors import Unavailable
    from tokensvc.web import appkeys

    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    token = (await mfa_login(client, clock, secret))["token"]
    factors = client.app[appkeys.FACTORS]

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("the second-factor store is unavailable", retry_after=5)

    factors.check = unavailable
    statuses = [
        (
            await client.post(
                "/v1/mfa/disable", json={"otp": code(secret, clock)}, headers=bearer(token)
            )
        ).status
        for _ in range(6)
    ]
    assert set(statuses) == {503}
    assert await second_factor_counters(client) == []


async def test_a_second_step_that_cannot_finish_after_the_code_held_counts_nothing(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Review (helper-60): the user read, the generation read and the challenge's one-use claim
    ran after the attempt was settled as judged, so a store failing there answered 503 with a
    failure counted against the user, though the code was right. Here the claim fails as a
    Redis outage would."""
    from tokensvc.errors import Unavailable
    from tokensvc.web import appkeys

    client = await serve(aiohttp_client, mfa_config, clock)
    secret, _, _ = await enrolled_victim(client, clock)
    once = client.app[appkeys.FACTORS].once
    real_claim = once.claim

    async def down_for_challenges(name: str, **kwargs: Any) -> bool:
        if name.startswith("challenge:"):
            raise Unavailable("the second-factor store is unavailable", retry_after=5)
        return bool(await real_claim(name, **kwargs))

    once.claim = down_for_challenges
    statuses = []
    for _ in range(3):
        status, first = await password_login(client, VICTIM, VICTIM_PASSWORD)
        assert status == 401, first
        status, _ = await answer(client, first["challenge"], code(secret, clock))
        statuses.append(status)
        clock.advance(seconds=30)  # a fresh code for the next try
    assert set(statuses) == {503}
    assert await second_factor_counters(client) == []


async def test_a_second_step_refused_for_another_reason_does_not_spend_the_code(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Red team (helper-65): the code was spent before the challenge's one use, the user and
    the generation were checked, so a double-submitted second step (or one answered after a
    password change) used up a recovery code on a 401, and the owner lost it unknowingly.
    Now the code is spent only by an answer that yields a token."""
    client = await serve(aiohttp_client, mfa_config, clock)
    _, codes, _ = await enrolled_victim(client, clock)
    status, first = await password_login(client, VICTIM, VICTIM_PASSWORD)
    assert status == 401 and first["mfa_required"] is True
    assert (await answer(client, first["challenge"], codes[0]))[0] == 200

    replayed, _ = await answer(client, first["challenge"], codes[1])
    status, taken_before = await password_login(client, VICTIM, VICTIM_PASSWORD)
    admin = bearer(await admin_token(client), ADMIN_IP)
    changed = await client.patch(
        f"/v1/users/{VICTIM}", json={"password": "a new and long password 2"}, headers=admin
    )
    assert changed.status == 200, await changed.text()
    stale, _ = await answer(client, taken_before["challenge"], codes[2])

    assert (replayed, stale) == (401, 401)
    for unspent in codes[1:3]:
        status, fresh = await password_login(client, VICTIM, "a new and long password 2")
        assert status == 401 and fresh["mfa_required"] is True, fresh
        status, body = await answer(client, fresh["challenge"], unspent)
        assert status == 200, body


async def test_metrics_do_not_tell_a_right_password_from_a_wrong_one(
    aiohttp_client: Any, mfa_config: Any, clock: FakeClock
) -> None:
    """Red team (helper-73): for an enrolled user a wrong and a right password got the same
    401 and challenge, but /metrics (open to whoever reaches it) counted `fail` for the wrong
    one only: a guessed password was confirmed past the second factor. In one call (password
    and a wrong code) as well."""
    from prometheus_client.parser import text_string_to_metric_families

    client = await serve(aiohttp_client, mfa_config, clock)
    await enrolled_victim(client, clock)

    async def counts() -> dict[str, float]:
        text = await (await client.get("/metrics")).text()
        return {
            sample.labels["outcome"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "tokensvc_login_total"
        }

    async def deltas(password: str, **body: Any) -> dict[str, float]:
        before = await counts()
        status, _ = await password_login(client, VICTIM, password, ip=ATTACKER_IP, **body)
        assert status == 401
        after = await counts()
        return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k)}

    assert await deltas("a wrong guess at it") == await deltas(VICTIM_PASSWORD)
    assert await deltas("a wrong guess at it", otp="000000") == await deltas(
        VICTIM_PASSWORD, otp="000000"
    )
