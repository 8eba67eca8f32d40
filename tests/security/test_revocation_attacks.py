"""Attacks on revocation: every event that must revoke a subject's tokens does, in any order (B2).

One monotonic generation per subject, raised by revoke-all, a password change, disabling, losing
a role and deletion; re-creating a user never lowers it. Each test runs on the embedded shape and
on PostgreSQL + Redis.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import FakeClock, make_config
from tests.security.attack import call, create_user, login, verify

PASSWORD = "first long copper passphrase"
OTHER = "second long copper passphrase"


async def revoke_all(client: Any, admin: str, subject: str) -> int:
    status, body = await call(client, "POST", f"/v1/subjects/{subject}/revoke-all", admin)
    assert status == 200, body
    return int(body["generation"])


async def patch(client: Any, admin: str, name: str, **change: Any) -> None:
    status, body = await call(client, "PATCH", f"/v1/users/{name}", admin, json=change)
    assert status == 200, body


async def test_a_password_change_after_a_revoke_all_still_revokes(shaped: Any, root: str) -> None:
    """The reproduction: revoke-all, log in, change the password: the token from that login dies."""
    await create_user(shaped, root, "ra1", PASSWORD)
    await revoke_all(shaped, root, "ra1")
    token = await login(shaped, "ra1", PASSWORD)
    assert (await verify(shaped, token))[0] == 200

    await patch(shaped, root, "ra1", password=OTHER)

    assert (await verify(shaped, token))[0] == 401


async def test_delete_and_recreate_after_a_revoke_all_still_revokes(shaped: Any, root: str) -> None:
    """Deleting a user kills its tokens, and re-creating the name brings none of them back."""
    await create_user(shaped, root, "ra1", PASSWORD)
    await revoke_all(shaped, root, "ra1")
    token = await login(shaped, "ra1", PASSWORD)

    assert (await call(shaped, "DELETE", "/v1/users/ra1", root))[0] == 204
    await create_user(shaped, root, "ra1", PASSWORD)
    fresh = await login(shaped, "ra1", PASSWORD)

    assert (await verify(shaped, token))[0] == 401
    assert (await verify(shaped, fresh))[0] == 200


async def test_disabling_after_a_revoke_all_revokes_and_enabling_revives_nothing(
    shaped: Any, root: str
) -> None:
    """Disabling kills the user's tokens after a revoke-all too; re-enabling does not revive them."""
    await create_user(shaped, root, "ra1", PASSWORD)
    await revoke_all(shaped, root, "ra1")
    token = await login(shaped, "ra1", PASSWORD)

    await patch(shaped, root, "ra1", disabled=True)
    disabled = (await verify(shaped, token))[0]
    await patch(shaped, root, "ra1", disabled=False)

    assert (disabled, (await verify(shaped, token))[0]) == (401, 401)


async def test_a_regained_role_does_not_revive_an_old_admin_token(shaped: Any, root: str) -> None:
    """Losing the admin role kills the user's admin token; getting the role back does not make
    that token work again."""
    await create_user(shaped, root, "bob", PASSWORD, roles=["admin"])
    await revoke_all(shaped, root, "bob")
    bobs = await login(shaped, "bob", PASSWORD)
    assert (await call(shaped, "GET", "/v1/users", bobs))[0] == 200

    await patch(shaped, root, "bob", roles=[])
    await patch(shaped, root, "bob", roles=["admin"])

    assert (await call(shaped, "GET", "/v1/users", bobs))[0] == 401
    assert (await verify(shaped, bobs))[0] == 401


EVENTS = ("revoke-all", "password", "disable", "role", "delete")


async def _event(client: Any, admin: str, event: str, password: str) -> str:
    """Apply one revoking event to ra1; the password ra1 has afterwards."""
    if event == "revoke-all":
        await revoke_all(client, admin, "ra1")
    elif event == "password":
        password = "next " + password
        await patch(client, admin, "ra1", password=password)
    elif event == "disable":
        await patch(client, admin, "ra1", disabled=True)
        await patch(client, admin, "ra1", disabled=False)
    elif event == "role":
        await patch(client, admin, "ra1", roles=[])
        await patch(client, admin, "ra1", roles=["dev"])
    else:
        assert (await call(client, "DELETE", "/v1/users/ra1", admin))[0] == 204
        await create_user(client, admin, "ra1", password, roles=["dev"])
    return password


@pytest.mark.parametrize("order", [EVENTS, tuple(reversed(EVENTS)), EVENTS[1:] + EVENTS[:1]])
async def test_every_revoking_event_revokes_in_any_order(
    shaped: Any, root: str, order: tuple[str, ...]
) -> None:
    """Whatever came before, each revoking event kills every token issued before it (twice over:
    each event runs two rounds), while a token from after it works."""
    await create_user(shaped, root, "ra1", PASSWORD, roles=["dev"])
    password = PASSWORD
    issued: list[str] = []

    for event in order * 2:
        token = await login(shaped, "ra1", password)
        issued.append(token)
        password = await _event(shaped, root, event, password)
        statuses = [(await verify(shaped, t))[0] for t in issued]
        assert statuses == [401] * len(issued), (event, statuses)

    assert (await verify(shaped, await login(shaped, "ra1", password)))[0] == 200


async def test_concurrent_revocations_each_raise_the_generation(shaped: Any, root: str) -> None:
    """Twenty revoke-alls at once raise the generation twenty times: none is lost to a race."""
    # A subject tokens were issued to (revoke-all of one that no token or user has is a 404).
    assert (await call(shaped, "POST", "/v1/tokens", root, json={"subject": "svc"}))[0] == 201
    first = await revoke_all(shaped, root, "svc")

    results = await asyncio.gather(*(revoke_all(shaped, root, "svc") for _ in range(20)))

    assert sorted(results) == list(range(first + 1, first + 21))


async def test_a_change_made_on_one_replica_revokes_on_another(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Any,
    redis_url: str,
    redis_prefix: str,
    clock: FakeClock,
) -> None:
    """With two replicas on one PostgreSQL and Redis, a password change after a revoke-all made
    through one replica is refused by the other within a second."""
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    config = make_config(
        database_url=pg_url, data_dir=data_dir, redis_url=redis_url, redis_prefix=redis_prefix
    )
    one = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    two = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    from tests.conftest import ADMIN_PASSWORD

    admin = await login(one, "admin", ADMIN_PASSWORD)
    await create_user(one, admin, "ra1", PASSWORD)
    await revoke_all(one, admin, "ra1")
    token = await login(two, "ra1", PASSWORD)
    assert (await verify(two, token))[0] == 200

    await patch(one, admin, "ra1", password=OTHER)

    for _ in range(100):
        if (await verify(two, token))[0] == 401:
            break
        await asyncio.sleep(0.01)
    assert (await verify(two, token))[0] == 401


async def test_a_token_revoked_on_one_replica_cannot_administer_on_a_lagging_one(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """Red team: replicas without Redis learn of each other's revoke-alls at their next refresh
    (2 s), a bound fit for /v1/verify. Within it, an admin token revoked on one replica minted,
    on the other, a 30-day admin child at the subject's new generation — one that outlived the
    revocation — or could have created a user; so could a token revoked by its id within the
    revocation refresh. Administering now reads both fresh: the revoked token is refused at
    once on every replica, and mints nothing."""
    from tests.conftest import ADMIN_PASSWORD
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    config = make_config(database_url=pg_url, data_dir=data_dir)  # no Redis: polling only
    one = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    two = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    stolen = await login(one, "admin", ADMIN_PASSWORD)
    operator = await login(one, "admin", ADMIN_PASSWORD)
    assert (await call(two, "GET", "/v1/tokens", stolen))[0] == 200  # `two` knows the token
    await revoke_all(one, operator, "admin")  # the leak is noticed: every admin token revoked

    child = await call(
        two, "POST", "/v1/tokens", stolen, json={"admin": True, "subject": "admin", "ttl": "1h"}
    )
    other = await call(two, "POST", "/v1/tokens", stolen, json={"subject": "svc", "ttl": "1h"})
    user = await call(
        two, "POST", "/v1/users", stolen, json={"name": "mallory", "password": PASSWORD}
    )

    assert (child[0], other[0], user[0]) == (401, 401, 401), (child, other, user)
    assert "revoked" in child[1]["error"]["message"]

    # Revoked by its id on `one` (a leak noticed): refused at once on `two` as well.
    fresh = await login(one, "admin", ADMIN_PASSWORD)
    operator = await login(one, "admin", ADMIN_PASSWORD)
    assert (await call(two, "GET", "/v1/tokens", fresh))[0] == 200
    token_id = (await verify(one, fresh))[1]["token_id"]
    assert (await call(one, "DELETE", f"/v1/tokens/{token_id}", operator))[0] == 204
    minted = await call(two, "POST", "/v1/tokens", fresh, json={"subject": "svc", "ttl": "1h"})
    assert minted[0] == 401, minted


def login_service(app: Any, clock: FakeClock, **parts: Any) -> Any:
    """A login service over the app's own stores, with some parts replaced (`hasher`,
    `generations`): for holding a login at a chosen step."""
    from datetime import timedelta

    from tokensvc.services.login import LoginService
    from tokensvc.web import appkeys

    wiring: dict[str, Any] = {
        "users": app[appkeys.USERS],
        "generations": app[appkeys.GENERATIONS],
        "hasher": app[appkeys.HASHER],
        "lockout": app[appkeys.LOCKOUT],
        "minter": app[appkeys.MINTER],
        "second_factors": app[appkeys.FACTORS],
        "otp_lockout": app[appkeys.OTP_LOCKOUT],
    }
    return LoginService(
        **{**wiring, **parts},
        clock=clock,
        default_ttl=timedelta(hours=1),
        max_ttl=timedelta(hours=2),
    )


class GatedHasher:
    """The app's real hasher, held at the start of each password check until released."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.checking = asyncio.Event()
        self.release = asyncio.Event()

    async def verify(self, stored: Any, password: str, **options: Any) -> Any:
        self.checking.set()
        await self.release.wait()
        return await self.inner.verify(stored, password, **options)

    async def verify_in(self, slot: Any, stored: Any, password: str) -> Any:
        self.checking.set()
        await self.release.wait()
        return await self.inner.verify_in(slot, stored, password)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_password_change_during_a_login_revokes_that_login(
    shaped: Any, root: str, clock: FakeClock
) -> None:
    """A login whose password check is still running when the password changes gets a token that
    is already revoked: the generation is read before the check, not after."""

    from tokensvc.services.login import LoginRequest
    from tokensvc.web import appkeys

    await create_user(shaped, root, "ra1", PASSWORD)
    hasher = GatedHasher(shaped.app[appkeys.HASHER])
    service = login_service(shaped.app, clock, hasher=hasher)

    pending = asyncio.create_task(service.login(LoginRequest("ra1", PASSWORD, "192.0.2.1")))
    # Bounded: a login that fails before its check (a wiring error) must fail here, not hang.
    await asyncio.wait_for(hasher.checking.wait(), timeout=60)
    await patch(shaped, root, "ra1", password=OTHER)
    hasher.release.set()
    raced = await pending

    assert (await verify(shaped, raced.token))[0] == 401


class GatedGenerations:
    """The app's generations, held after each fresh read until released."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    async def fetch(self, subject: str) -> int:
        value = await self.inner.fetch(subject)
        self.read.set()
        await self.release.wait()
        return int(value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("change", [{"password": OTHER}, {"disabled": True}])
async def test_a_change_between_a_logins_reads_leaves_no_live_token(
    shaped: Any, root: str, clock: FakeClock, change: dict[str, Any]
) -> None:
    """A password change or disable that commits while a login is between reading the generation
    and reading the user row: the login checks the changed row, so the old password gets no
    token (never a token minted at the new generation with the old credentials)."""

    from tokensvc.errors import Unauthenticated
    from tokensvc.services.login import LoginRequest
    from tokensvc.web import appkeys

    await create_user(shaped, root, "ra1", PASSWORD)
    generations = GatedGenerations(shaped.app[appkeys.GENERATIONS])
    service = login_service(shaped.app, clock, generations=generations)

    pending = asyncio.create_task(service.login(LoginRequest("ra1", PASSWORD, "192.0.2.1")))
    await asyncio.wait_for(generations.read.wait(), timeout=60)
    await patch(shaped, root, "ra1", **change)
    generations.release.set()

    with pytest.raises(Unauthenticated):
        await pending


async def test_a_token_for_another_spelling_of_a_user_is_not_that_user(
    shaped: Any, root: str
) -> None:
    """A token an admin minted for subject `RA1` is not user ra1's: the discharger does not take
    it as ra1, so ra1's password change (which does not revoke `RA1`) leaves no way in as ra1."""
    from tests.security.test_enumeration import discharge
    from tests.security.test_redteam_names import legacy_token

    await create_user(shaped, root, "ra1", PASSWORD)
    other = await legacy_token(shaped, "RA1")  # the mint refuses the spelling now

    status, body = await discharge(shaped, "user-is ra1", {"Authorization": f"Bearer {other}"})

    assert status == 403, body


async def test_a_non_ascii_subject_is_revoked_on_another_replica_at_once(
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Any,
    redis_url: str,
    redis_prefix: str,
    clock: FakeClock,
) -> None:
    """A revoke-all of subject `bjørn` reaches the other replica over pub/sub (well inside the
    2 s poll), as an ASCII subject's does."""
    import time

    from tests.conftest import ADMIN_PASSWORD
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    config = make_config(
        database_url=pg_url, data_dir=data_dir, redis_url=redis_url, redis_prefix=redis_prefix
    )
    one = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    two = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    admin = await login(one, "admin", ADMIN_PASSWORD)
    token = (await call(one, "POST", "/v1/tokens", admin, json={"subject": "bjørn"}))[1]["token"]
    assert (await verify(two, token))[0] == 200

    await revoke_all(one, admin, "bjørn")
    started = time.monotonic()
    # Polls the other replica: there is no event to wait on.
    while (await verify(two, token))[0] != 401 and time.monotonic() - started < 5:  # noqa: ASYNC110
        await asyncio.sleep(0.01)

    assert time.monotonic() - started < 1.0


async def test_a_token_of_a_revoked_key_cannot_administer_on_a_lagging_replica(
    aiohttp_client: Any, pg_url: str, data_dir: Any, clock: FakeClock
) -> None:
    """Red team: two replicas without Redis; a root key revoked on one, and within the other's
    refresh a token it signed created an admin user there (a mint was already refused: it
    re-checks the key in its transaction). Administering reads the key's revocation fresh."""
    from tests.conftest import ADMIN_PASSWORD
    from tests.served import ServedTestServer
    from tokensvc.macaroons.identifier import decode_identifier
    from tokensvc.macaroons.tokenformat import decode_token
    from tokensvc.web.app import create_app

    config = make_config(database_url=pg_url, data_dir=data_dir)  # no Redis: polling only
    one = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    two = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    stolen = await login(one, "admin", ADMIN_PASSWORD)
    key_id = decode_identifier(decode_token(stolen, max_bytes=16384, max_caveats=128).identifier)
    assert (await call(two, "GET", "/v1/users", stolen))[0] == 200  # `two` knows the token
    assert (await call(one, "POST", "/v1/keys/rotate", stolen))[0] in (200, 201)
    operator = await login(one, "admin", ADMIN_PASSWORD)  # signed by the new key

    status, _ = await call(one, "POST", f"/v1/keys/{key_id.key_id}/revoke", operator)
    assert status in (200, 204)
    created = await call(
        two,
        "POST",
        "/v1/users",
        stolen,
        json={"name": "mallory", "password": "Zq8-horse-staple-771", "roles": ["admin"]},
    )

    assert created[0] == 401, created
