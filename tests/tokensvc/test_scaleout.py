"""Three `tokensvc serve` processes on separate ports, sharing one PostgreSQL and one Redis."""

from __future__ import annotations

import asyncio
import base64
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.ports import free_port
from tests.tokensvc.test_cli_login import TOKENSVC, _clean_env

REPLICAS = 3

# Three replicas, each a supervisor, a verify process and a lane, starting at once: run alone.
pytestmark = pytest.mark.serial


async def _wait_healthy(
    session: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 60  # a start-up bound on a loaded 2-core CI host, not a goal
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"replica exited with {proc.returncode}")
        try:
            async with session.get(base + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("replica did not become healthy")


@pytest.fixture
async def replicas(
    pg_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[list[str]]:
    """Base URLs of three replicas with one KEK, database and Redis prefix; always terminated."""
    kek = base64.b64encode(secrets.token_bytes(32)).decode()
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    bases: list[str] = []
    try:
        for i in range(REPLICAS):
            port = free_port()
            env = _clean_env(tmp_path / f"r{i}")
            env.update(
                TOKENSVC_DATA_DIR=str(tmp_path / f"r{i}" / "data"),
                TOKENSVC_DATABASE_URL=pg_url,
                TOKENSVC_REDIS_URL=redis_url,
                TOKENSVC_REDIS_PREFIX=redis_prefix,
                TOKENSVC_KEK=kek,
                TOKENSVC_ADMIN_PASSWORD=ADMIN_PASSWORD,
                TOKENSVC_PASSWORD_PROFILE="CHEAP_FOR_TESTS",
                TOKENSVC_ALLOW_INSECURE="test-password-profile",
            )
            log = (tmp_path / f"replica{i}.log").open("wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(  # noqa: ASYNC220 - returns at once, nothing blocks
                    [TOKENSVC, "serve", "--port", str(port), "--verify-port", str(free_port())],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as session:
            for base, proc in zip(bases, procs, strict=True):
                await _wait_healthy(session, base, proc)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


async def _login(
    session: aiohttp.ClientSession, base: str, user: str, password: str, ip: str = ""
) -> int:
    headers = basic_auth(user, password)
    async with session.post(base + "/v1/login", headers=headers) as resp:
        return resp.status


async def _until_all_refuse(
    session: aiohttp.ClientSession, replicas: list[str], token: str, started: float
) -> tuple[dict[str, float], set[str]]:
    """Poll every replica until each refuses `token` (or 10 s pass): seconds after `started`
    at which each did, and the replicas still accepting it."""
    pending = set(replicas)
    seen_after: dict[str, float] = {}
    while pending and time.monotonic() - started < 10:
        for base in list(pending):
            async with session.post(base + "/v1/verify", json={"token": token}) as resp:
                if resp.status == 401:
                    seen_after[base] = time.monotonic() - started
                    pending.discard(base)
        await asyncio.sleep(0.01)
    return seen_after, pending


async def test_replicas_share_one_root_key_and_verify_each_others_tokens(
    replicas: list[str], pg_url: str
) -> None:
    """Started together, the replicas made exactly one root key, and a token from any verifies on all."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            replicas[0] + "/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD)
        ) as resp:
            token = (await resp.json())["token"]
        statuses = []
        for base in replicas:
            async with session.post(base + "/v1/verify", json={"token": token}) as resp:
                statuses.append(resp.status)
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        keys = await conn.fetchval("SELECT count(*) FROM root_keys")
    finally:
        await conn.close()

    assert statuses == [200] * REPLICAS
    assert keys == 1


async def test_failures_spread_over_replicas_count_as_one_identitys(replicas: list[str]) -> None:
    """Wrong passwords sent round-robin to three replicas lock the identity as if sent to one."""
    async with aiohttp.ClientSession() as session:
        failures = [
            await _login(session, replicas[i % REPLICAS], "admin", "wrong password!")
            for i in range(5)
        ]
        after = [await _login(session, base, "admin", ADMIN_PASSWORD) for base in replicas]

    # 5 failures from one IP reach the identity+IP threshold, wherever they were sent.
    assert failures == [401] * 5
    assert after == [429] * REPLICAS


async def test_a_password_change_through_one_replica_revokes_on_all(replicas: list[str]) -> None:
    """Tokens of a user whose password changed via one replica are refused by every replica within the bound."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            replicas[0] + "/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD)
        ) as resp:
            admin = {"Authorization": f"Bearer {(await resp.json())['token']}"}
        async with session.post(
            replicas[0] + "/v1/users",
            json={"name": "carol", "password": "the first violet passphrase"},
            headers=admin,
        ) as resp:
            assert resp.status == 201
        async with session.post(
            replicas[1] + "/v1/login", headers=basic_auth("carol", "the first violet passphrase")
        ) as resp:
            carol = (await resp.json())["token"]
        started = time.monotonic()
        async with session.patch(
            replicas[0] + "/v1/users/carol",
            json={"password": "the second violet passphrase"},
            headers=admin,
        ) as resp:
            assert resp.status == 200
        seen_after, pending = await _until_all_refuse(session, replicas, carol, started)

    print(f"password change seen as revocation after (s): {sorted(seen_after.values())}")
    assert not pending, f"still accepted by {pending}"
    assert max(seen_after.values()) < 5.0


async def test_a_token_revoked_through_one_replica_is_refused_by_all(replicas: list[str]) -> None:
    """Self-revocation through replica 0 reaches every replica within the documented 1 s bound."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            replicas[1] + "/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD)
        ) as resp:
            token = (await resp.json())["token"]
        for base in replicas:
            async with session.post(base + "/v1/verify", json={"token": token}) as resp:
                assert resp.status == 200
        started = time.monotonic()
        async with session.post(replicas[0] + "/v1/tokens/revoke", json={"token": token}) as resp:
            assert resp.status == 204
        seen_after, pending = await _until_all_refuse(session, replicas, token, started)

    print(f"token revocation seen by all three after (s): {sorted(seen_after.values())}")
    assert not pending, f"still accepted by {pending}"
    assert max(seen_after.values()) < 1.5
