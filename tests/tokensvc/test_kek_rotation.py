"""KEK rotation in the service: who may see and re-seal, what a replica does with a KEK it lacks.

The end-to-end rotation with three `tokensvc serve` processes is test_kek_rotation_replicas.py.
"""

from __future__ import annotations

import base64
import secrets
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.served import ServedTestServer
from tests.tokensvc.test_api_admin import assert_json_error, bearer, mint, narrowed
from tokensvc.composition import LOCKOUT_HASH_PURPOSE, runtime
from tokensvc.operations.config import ConfigError
from tokensvc.web import appkeys
from tokensvc.web.app import create_app

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tests.conftest import FakeClock
    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]


def _kek() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


async def _login(client: Any) -> str:
    resp = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


async def test_kek_status_and_reseal_are_for_admins_only(client: Client, admin_token: str) -> None:
    """No token: 401; a plain token: 403; an admin token narrowed to keys:read sees the status
    but cannot re-seal (403); a full admin token re-seals (200)."""
    plain = (await mint(client, admin_token, subject="admin"))["token"]
    read_only = narrowed(admin_token, "allow keys:read")

    anonymous = await client.get("/v1/kek")
    as_plain = await client.post("/v1/kek/reseal", headers=bearer(plain))
    status_read_only = await client.get("/v1/kek", headers=bearer(read_only))
    reseal_read_only = await client.post("/v1/kek/reseal", headers=bearer(read_only))
    reseal_admin = await client.post("/v1/kek/reseal", headers=bearer(admin_token))

    await assert_json_error(anonymous, 401)
    await assert_json_error(as_plain, 403)
    await assert_json_error(reseal_read_only, 403)
    assert status_read_only.status == 200
    body = await status_read_only.json()
    assert body["not_current"] == 0 and body["keks"][0]["role"] == "current"
    assert reseal_admin.status == 200, await reseal_admin.text()
    assert (await reseal_admin.json())["resealed"] == 0


async def test_a_reseal_is_audited(client: Client, admin_token: str) -> None:
    """POST /v1/kek/reseal leaves a `keys_resealed` audit entry naming the admin and the KEK."""
    current = (await (await client.get("/v1/kek", headers=bearer(admin_token))).json())["current"]

    await client.post("/v1/kek/reseal", headers=bearer(admin_token))
    resp = await client.get("/v1/audit?action=keys_resealed", headers=bearer(admin_token))

    entries = (await resp.json())["entries"]
    assert [(e["actor"], e["target"]) for e in entries] == [("admin", current)]


async def test_status_never_shows_key_material(client: Client, admin_token: str) -> None:
    """The status names KEKs by their keyed fingerprint only, never the KEK itself."""
    kek = client.app[appkeys.CONFIG].kek
    assert kek is not None

    text = await (await client.get("/v1/kek", headers=bearer(admin_token))).text()

    assert kek not in text and kek.rstrip("=") not in text
    assert base64.b64decode(kek).hex() not in text


async def test_a_start_with_a_kek_that_opens_nothing_names_the_variable(
    pg_config: Config, clock: FakeClock
) -> None:
    """A database sealed under one KEK, started with another alone: one ConfigError naming
    TOKENSVC_KEK and both KEK ids, before anything is served."""
    async with runtime(pg_config, clock=clock) as first:
        old_id = first.kek.kek_id
    other = pg_config.model_copy(update={"kek": _kek()})

    with pytest.raises(ConfigError) as caught:
        async with runtime(other, clock=clock):
            pass

    message = caught.value.message
    assert message.startswith("TOKENSVC_KEK")
    assert old_id in message and "TOKENSVC_KEK_PREVIOUS" in message
    assert "\n" not in message


async def test_a_malformed_previous_kek_names_its_variable(
    pg_config: Config, clock: FakeClock
) -> None:
    """TOKENSVC_KEK_PREVIOUS with something that is not a KEK is a ConfigError naming it."""
    bad = pg_config.model_copy(update={"kek_previous": _kek() + ",not-a-key"})

    with pytest.raises(ConfigError, match=r"^TOKENSVC_KEK_PREVIOUS: "):
        async with runtime(bad, clock=clock):
            pass


async def test_a_replica_without_the_new_kek_answers_503_not_500_nor_a_deny(
    aiohttp_client: Any, pg_config: Config, clock: FakeClock
) -> None:
    """Rolled out in the wrong order (a replica seals with a KEK another does not hold), the
    other replica answers 503 for tokens on the new key: never a deny of a genuine token, never
    a 500. The same replica, restarted with both KEKs, verifies it."""
    new = _kek()
    assert pg_config.kek is not None
    behind = await aiohttp_client(ServedTestServer(create_app(pg_config, clock=clock)))
    ahead_config = pg_config.model_copy(update={"kek": new, "kek_previous": pg_config.kek})
    ahead = await aiohttp_client(ServedTestServer(create_app(ahead_config, clock=clock)))
    admin = await _login(ahead)
    assert (await ahead.post("/v1/keys/rotate", headers=bearer(admin))).status == 201
    token = (await mint(ahead, admin, subject="alice"))["token"]

    on_behind = await behind.post("/v1/verify", json={"token": token, "context": {}})
    both_config = pg_config.model_copy(update={"kek_previous": new})
    caught_up = await aiohttp_client(ServedTestServer(create_app(both_config, clock=clock)))
    on_caught_up = await caught_up.post("/v1/verify", json={"token": token, "context": {}})

    assert on_behind.status == 503, await on_behind.text()
    assert on_caught_up.status == 200, await on_caught_up.text()


async def test_lockout_and_log_hash_keys_survive_a_kek_rotation(
    pg_config: Config, clock: FakeClock
) -> None:
    """The keys of lockout's Redis hashes and of log `user_hash`es come from the deployment key,
    which a re-seal moves, not changes: the same before and after the old KEK is gone."""
    from keystore.reseal import reseal

    new = _kek()
    async with runtime(pg_config, clock=clock, serving=False) as before:
        hash_key = before.deployment_key.derive(LOCKOUT_HASH_PURPOSE)
    rotating = pg_config.model_copy(update={"kek": new, "kek_previous": pg_config.kek})
    async with runtime(rotating, clock=clock, serving=False) as during:
        result = await reseal(during.engine, during.keks, now=clock())
    async with runtime(pg_config.model_copy(update={"kek": new}), clock=clock) as after:
        hash_key_after = after.deployment_key.derive(LOCKOUT_HASH_PURPOSE)

    assert result.total >= 3
    assert hash_key_after == hash_key
    assert hash_key != before.kek.derive(LOCKOUT_HASH_PURPOSE)
