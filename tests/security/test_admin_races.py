"""Red team (helper-35): nothing a token does commits after its revocation has.

Admin writes were authorised with a fresh read of the token's revocation, then wrote in a
transaction of their own, with an argon2 hash between the two: a request authorised just before
its admin token was revoked, or its user deleted, committed a new admin — or another admin's
password — after the revocation. Each write now re-checks the token in its own transaction,
holding the token's row (Authorizer.confirm): a revocation either committed first and the write
is refused, or it waits for the write.

Each race is forced from outside, with a transaction of the test's own on the same database.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock
from tests.security.attack import call, create_user, login, token_id_of
from tests.security.races import open_transaction, pg_client

MALLORY_PASSWORD = "a long secret of her own"
BOB_PASSWORD = "correct horse battery staple"


async def _two_admins(client: Any) -> tuple[str, str]:
    """(the bootstrap admin's token, mallory's admin token): mallory is the one to be removed."""
    admin = await login(client, "admin", ADMIN_PASSWORD)
    await create_user(client, admin, "mallory", MALLORY_PASSWORD, roles=["admin"])
    return admin, await login(client, "mallory", MALLORY_PASSWORD)


async def _trail(client: Any, admin: str) -> list[tuple[str, str, str]]:
    """(actor, action, target) of every audit entry, oldest first."""
    status, body = await call(client, "GET", "/v1/audit?limit=1000", admin)
    assert status == 200, body
    return [(e["actor"], e["action"], e["target"]) for e in reversed(body["entries"])]


#: Admin writes a token could race its own revocation with: (method, path, JSON body).
WRITES: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "create an admin": (
        "POST",
        "/v1/users",
        {"name": "backdoor", "password": "a fine long password"},
    ),
    "take over an admin": ("PATCH", "/v1/users/bob", {"password": "attacker's password!"}),
    "delete an admin": ("DELETE", "/v1/users/bob", None),
    "revoke-all": ("POST", "/v1/subjects/bob/revoke-all", None),
    "revoke a token": ("DELETE", "/v1/tokens/{bob_token}", None),
    "revoke a root key": ("POST", "/v1/keys/{new_key}/revoke", None),
    # Red team (helper-43): these wrote outside the service's transactions, and committed up to
    # 1.6 s after their token's revocation.
    "rotate the root key": ("POST", "/v1/keys/rotate", None),
    "re-seal the keys": ("POST", "/v1/kek/reseal", None),
    "clear a lockout": ("DELETE", "/v1/users/bob/lockout", None),
    "reset a second factor": ("DELETE", "/v1/users/bob/mfa", None),
}


@pytest.mark.parametrize("write", list(WRITES))
async def test_a_write_waiting_on_its_tokens_revocation_is_refused(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock, write: str
) -> None:
    """mallory's token is being revoked (its row updated, not yet committed) when her write
    checks it: the write waits for the revocation and, once it commits, is refused with 401
    and changes nothing."""
    client = await pg_client(aiohttp_client, pg_url, data_dir, clock)
    admin, mallory = await _two_admins(client)
    await create_user(client, admin, "bob", BOB_PASSWORD, roles=["admin"])
    bob = await login(client, "bob", BOB_PASSWORD)
    status, rotated = await call(client, "POST", "/v1/keys/rotate", admin)
    assert status == 201, rotated
    method, path, body = WRITES[write]
    path = path.format(bob_token=await token_id_of(client, bob), new_key=rotated["id"])
    mallory_id = await token_id_of(client, mallory)
    before = await _trail(client, admin)

    async with open_transaction(pg_url) as (revoker, revoking):
        await revoker.execute(
            "UPDATE tokens SET revoked_at = $1 WHERE token_id = $2", datetime.now(UTC), mallory_id
        )
        writing = asyncio.ensure_future(call(client, method, path, mallory, json=body))
        await asyncio.sleep(0.5)
        assert not writing.done(), f"the write did not wait for its token's row: {writing}"
        await revoking.commit()
        status, answer = await writing

    assert status == 401, answer
    assert await _trail(client, admin) == before
    assert (await call(client, "GET", "/v1/users/bob", admin))[0] == 200
    await login(client, "bob", BOB_PASSWORD)  # bob's password and tokens are untouched
    status, _ = await call(client, "GET", "/v1/users/backdoor", admin)
    assert status == 404


async def test_deleting_an_admin_waits_for_the_admin_she_is_creating(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """helper-35's finding 1: mallory's create of an admin is held up in its insert (here by a
    transaction of the test's holding the name) when she is deleted. The deletion waits for the
    create, so the trail shows the new admin created before mallory's deletion, never after —
    an auditor sees what she did while she could."""
    client = await pg_client(aiohttp_client, pg_url, data_dir, clock)
    admin, mallory = await _two_admins(client)

    async with open_transaction(pg_url) as (holder, holding):
        await holder.execute(
            "INSERT INTO users (name, password_hash, roles, disabled, created_at, updated_at)"
            " VALUES ('backdoor', 'x', '[]', false, now(), now())"
        )
        creating = asyncio.ensure_future(
            call(
                client,
                "POST",
                "/v1/users",
                mallory,
                json={"name": "backdoor", "password": "a fine long password", "roles": ["admin"]},
            )
        )
        await asyncio.sleep(0.5)
        deleting = asyncio.ensure_future(call(client, "DELETE", "/v1/users/mallory", admin))
        await asyncio.sleep(0.5)
        assert not deleting.done(), "the deletion did not wait for mallory's write"
        await holding.rollback()
        created, deleted = await creating, await deleting

    assert created[0] == 201 and deleted[0] == 204, (created, deleted)
    trail = await _trail(client, admin)
    assert trail.index(("mallory", "user_created", "backdoor")) < trail.index(
        ("admin", "user_deleted", "mallory")
    )


async def test_a_password_change_held_on_its_target_is_refused_once_its_token_is_revoked(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """helper-35's finding 2: mallory's change of bob's password waits for bob's row (held here
    by a transaction of the test's) while her token is revoked by id. It used to commit after
    the revocation — bob's account hers; now it is refused and bob's password stands."""
    client = await pg_client(aiohttp_client, pg_url, data_dir, clock)
    admin, mallory = await _two_admins(client)
    await create_user(client, admin, "bob", BOB_PASSWORD, roles=["admin"])
    mallory_id = await token_id_of(client, mallory)

    async with open_transaction(pg_url) as (holder, holding):
        await holder.execute("SELECT 1 FROM users WHERE name = 'bob' FOR UPDATE")
        changing = asyncio.ensure_future(
            call(client, "PATCH", "/v1/users/bob", mallory, json={"password": "attacker's pw!!"})
        )
        await asyncio.sleep(0.5)
        revoked = await call(client, "DELETE", f"/v1/tokens/{mallory_id}", admin)
        assert revoked[0] == 204, revoked
        await holding.rollback()
        status, answer = await changing

    assert status == 401, answer
    await login(client, "bob", BOB_PASSWORD)
    assert ("mallory", "user_updated", "bob") not in await _trail(client, admin)


# ---- writes with one token, or crossing each other, at the same moment ------------------------

ROUNDS = 6


async def test_a_token_revoking_itself_twice_at_once_is_204_then_401(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """Red team (helper-36): a double-clicked self-revocation share-locked the token's row twice,
    then both went on to update it: a deadlock, and a 503, 13 times in 14. The row is now locked
    exclusively by the first; the second waits, then finds the token revoked."""
    client = await pg_client(aiohttp_client, pg_url, data_dir, clock)
    admin = await login(client, "admin", ADMIN_PASSWORD)
    await create_user(client, admin, "bob", BOB_PASSWORD)
    for _ in range(ROUNDS):
        bob = await login(client, "bob", BOB_PASSWORD)
        path = f"/v1/tokens/{await token_id_of(client, bob)}"

        answers = await asyncio.gather(*(call(client, "DELETE", path, bob) for _ in range(2)))

        assert sorted(status for status, _ in answers) == [204, 401], answers


@pytest.mark.parametrize("crossing", ["passwords", "revocations"])
async def test_crossed_writes_never_answer_503(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock, crossing: str
) -> None:
    """Red team (helper-36): two admins changing each other's passwords, or two tokens of one
    subject revoking each other, lock the same rows in opposite orders; PostgreSQL broke the
    deadlock by failing one with 503. The failed transaction now runs again (it committed
    nothing): it finds its token revoked by the other and answers 401, or succeeds."""
    client = await pg_client(aiohttp_client, pg_url, data_dir, clock)
    admin, _ = await _two_admins(client)
    await create_user(client, admin, "bob", BOB_PASSWORD, roles=["admin"])
    for _ in range(ROUNDS):
        mallory, bob = (
            await login(client, "mallory", MALLORY_PASSWORD),
            await login(client, "bob", BOB_PASSWORD),
        )
        if crossing == "passwords":
            writes = [
                call(client, "PATCH", "/v1/users/bob", mallory, json={"password": BOB_PASSWORD}),
                call(
                    client, "PATCH", "/v1/users/mallory", bob, json={"password": MALLORY_PASSWORD}
                ),
            ]
        else:
            other = await login(client, "bob", BOB_PASSWORD)
            bob_id, other_id = await token_id_of(client, bob), await token_id_of(client, other)
            writes = [
                call(client, "DELETE", f"/v1/tokens/{other_id}", bob),
                call(client, "DELETE", f"/v1/tokens/{bob_id}", other),
            ]

        answers = await asyncio.gather(*writes)

        statuses = [status for status, _ in answers]
        assert set(statuses) <= {200, 204, 401}, answers
        assert set(statuses) & {200, 204}, answers


async def test_an_mfa_reset_held_on_its_target_is_refused_once_its_token_is_revoked(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """Red team (helper-36): an MFA reset was no transaction of its own, so a reset by a token
    revoked while it waited still dropped the victim's second factor, seconds after the
    revocation. It is now one transaction with its audit row: it locks the user's row, then
    re-checks its token, and is refused."""
    from tests.security.mfa_support import VICTIM, enrolled_victim

    client = await pg_client(aiohttp_client, pg_url, data_dir, clock)
    admin, mallory = await _two_admins(client)
    await enrolled_victim(client, clock)
    mallory_id = await token_id_of(client, mallory)

    async with open_transaction(pg_url) as (holder, holding):
        await holder.execute("SELECT 1 FROM users WHERE name = $1 FOR UPDATE", VICTIM)
        resetting = asyncio.ensure_future(
            call(client, "DELETE", f"/v1/users/{VICTIM}/mfa", mallory)
        )
        await asyncio.sleep(0.5)
        assert not resetting.done(), "the reset did not wait for the user's row"
        revoked = await call(client, "DELETE", f"/v1/tokens/{mallory_id}", admin)
        assert revoked[0] == 204, revoked
        await holding.rollback()
        status, answer = await resetting

    assert status == 401, answer
    status, state = await call(client, "GET", f"/v1/users/{VICTIM}/mfa", admin)
    assert status == 200 and state["enrolled"] is True, state
    assert ("mallory", "mfa_reset", VICTIM) not in await _trail(client, admin)


async def test_one_token_revoked_by_many_requests_at_once_is_audited_once(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """Red team (helper-38): eight leak reports of one token at once (copies with caveats
    added, so none is answered from memory) wrote eight `token_revoked` rows: whether to audit
    was read before the transaction. It is now whether the transaction revoked the token."""
    from tests.security.attack import attenuated

    client = await pg_client(aiohttp_client, pg_url, data_dir, clock)
    admin = await login(client, "admin", ADMIN_PASSWORD)
    await create_user(client, admin, "bob", BOB_PASSWORD)
    bob = await login(client, "bob", BOB_PASSWORD)
    bob_id = await token_id_of(client, bob)

    answers = await asyncio.gather(
        *(
            client.post("/v1/tokens/revoke", json={"token": attenuated(bob, f"declared n {n}")})
            for n in range(8)
        )
    )

    assert [resp.status for resp in answers] == [204] * 8
    revoked = [e for e in await _trail(client, admin) if e[1:] == ("token_revoked", bob_id)]
    assert len(revoked) == 1, revoked


async def test_a_child_minted_while_its_parent_expires_dies_with_the_parents_subject(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """Red team (helper-41): a mint began with its parent alive, and was still in its
    transaction (held here at its audit insert) when the parent expired. A revoke-all of the
    parent's subject then locked only unexpired tokens, did not wait for the mint, and its walk
    missed the child the mint committed after: a live child of a revoked subject. Rows expired
    within LOCK_GRACE are locked too, so the revocation waits and its walk finds the child."""
    from tests.security.attack import verify

    client = await pg_client(aiohttp_client, pg_url, data_dir, clock)
    admin, _ = await _two_admins(client)
    await create_user(client, admin, "bob", BOB_PASSWORD, roles=["admin"])
    bob = await login(client, "bob", BOB_PASSWORD)
    status, parent = await call(
        client, "POST", "/v1/tokens", bob, json={"subject": "bob", "admin": True, "ttl": "3s"}
    )
    assert status == 201, parent

    async with open_transaction(pg_url) as (holder, holding):
        await holder.execute("LOCK TABLE audit_log IN SHARE MODE")  # the mint waits at its audit
        minting = asyncio.ensure_future(
            call(
                client, "POST", "/v1/tokens", parent["token"], json={"subject": "svc", "ttl": "1h"}
            )
        )
        await asyncio.sleep(3.5)  # the parent has expired; the mint holds its row all the same
        revoking = asyncio.ensure_future(call(client, "POST", "/v1/subjects/bob/revoke-all", admin))
        await asyncio.sleep(0.5)
        await holding.rollback()
        (minted_status, child), (revoked_status, _) = await minting, await revoking

    assert minted_status == 201 and revoked_status == 200, (child, revoked_status)
    assert (await verify(client, child["token"]))[0] == 401


async def test_a_factor_activated_with_a_token_revoked_on_another_replica_is_refused(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """Red team (helper-41): the victim's password was changed on another replica (her tokens
    revoked there), and 13 ms later her old token, judged by this replica's view from before,
    activated an MFA enrolment: the stolen token's holder owned the account's second factor
    and the owner could not log in. Activation is now one transaction that re-checks the token.
    Here the other replica's commit is a generation raised from outside, and this replica
    refreshes its view once a minute."""
    import asyncpg

    from tests.conftest import make_config
    from tests.security.mfa_support import VICTIM, VICTIM_PASSWORD, bearer, code, make_user
    from tests.security.races import dsn
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    config = make_config(database_url=pg_url, data_dir=data_dir, revocation_refresh_interval="60s")
    client = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    admin = await login(client, "admin", ADMIN_PASSWORD)
    stolen = await make_user(client)
    started = await client.post(
        "/v1/mfa/enroll", json={"password": VICTIM_PASSWORD}, headers=bearer(stolen)
    )
    assert started.status == 200, await started.text()
    secret = (await started.json())["secret"]
    other_replica = await asyncpg.connect(dsn(pg_url))
    try:
        await other_replica.execute(
            "INSERT INTO subject_generations (subject, generation, updated_at)"
            " VALUES ($1, 1, now()) ON CONFLICT (subject)"
            " DO UPDATE SET generation = subject_generations.generation + 1",
            VICTIM,
        )
    finally:
        await other_replica.close()

    activated = await client.post(
        "/v1/mfa/activate", json={"otp": code(secret, clock)}, headers=bearer(stolen)
    )

    assert activated.status == 401, await activated.text()
    status, state = await call(client, "GET", f"/v1/users/{VICTIM}/mfa", admin)
    assert status == 200 and state["enrolled"] is False, state
