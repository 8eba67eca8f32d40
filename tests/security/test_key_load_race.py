"""Red team (helper-46): a root key revoked while this process was loading it (another replica's
revocation, heard through pub/sub or the feed) was put back in the key cache by the load, and
stayed there: harmless only while every token it signed has a registry row (revoking the key
revokes them). The attack, with the load held open across the revocation."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tokensvc.web import appkeys


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_key_revoked_during_its_load_is_not_cached_or_used(
    client: Any, admin_token: str
) -> None:
    app = client.server.app
    minted = await client.post(
        "/v1/tokens",
        json={"subject": "svc-x", "operations": ["tokens:verdict"]},
        headers=bearer(admin_token),
    )
    caller = (await minted.json())["token"]
    login = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    victim = (await login.json())["token"]
    first = await client.post("/v1/verdict", json={"token": victim}, headers=bearer(caller))
    key_id = (await first.json())["verdict"]["key_id"]
    keyring, verifier = app[appkeys.KEYRING], app[appkeys.VERIFIER]
    revocations = app[appkeys.REVOCATIONS]
    keyring._cache.evict(key_id)  # a cold replica: nothing of the key cached (forget() would
    # mark it revoked, and the load below would not even be tried)
    verifier.cache.forget_key(key_id)

    store = keyring._store
    original_get = store.get
    read, release = asyncio.Event(), asyncio.Event()

    async def slow_get(kid: str) -> Any:
        row = await original_get(kid)  # read before the revocation commits
        if kid == key_id:
            read.set()
            await release.wait()
        return row

    store.get = slow_get
    pending = asyncio.create_task(
        client.post("/v1/verdict", json={"token": victim}, headers=bearer(caller))
    )
    await asyncio.wait_for(read.wait(), 5)
    # Another replica revokes the key (its database writes), and this one hears of it.
    await revocations.record_key(key_id, by="admin")
    store.get = original_get
    await store.delete(key_id)
    revocations.note_key(key_id)
    release.set()
    answer = await pending

    assert answer.status == 401
    assert keyring.get_cached(key_id) is None
