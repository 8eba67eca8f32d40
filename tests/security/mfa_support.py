"""Helpers for the second-factor attack tests: the app in both shapes, an enrolled victim, codes.

The test client is a trusted proxy, so `X-Forwarded-For` names the client address an attacker
(or the victim) comes from. The FakeClock drives the TOTP steps: codes are computed, not waited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config

VICTIM = "alice"
VICTIM_PASSWORD = "her own quiet harbour passphrase"
VICTIM_IP = "192.0.2.1"
ATTACKER_IP = "198.51.100.66"
ADMIN_IP = "192.0.2.250"
TRUSTED = ("127.0.0.1/32",)


@pytest.fixture(params=["sqlite", "postgres+redis"])
def mfa_config(request: pytest.FixtureRequest, data_dir: Path, sqlite_url: str) -> Any:
    """Both shapes, the test client a trusted proxy."""
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
    """The real app factory, served as `tokensvc serve` serves it."""
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    return await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))


def bearer(token: str, ip: str = VICTIM_IP) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Forwarded-For": ip}


def frm(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def code(secret: str, clock: FakeClock, *, steps: int = 0) -> str:
    """The TOTP code of `secret` at the clock's time (plus `steps` steps of 30 s)."""
    return str(pyotp.TOTP(secret).at(clock.now.timestamp() + 30 * steps))


async def password_login(
    client: Any, name: str, password: str, ip: str = VICTIM_IP, **body: Any
) -> tuple[int, Any]:
    resp = await client.post(
        "/v1/login", headers={**basic_auth(name, password), **frm(ip)}, json=body or None
    )
    return resp.status, await resp.json()


async def answer(
    client: Any, challenge: str, otp: str, ip: str = VICTIM_IP, **body: Any
) -> tuple[int, Any]:
    resp = await client.post(
        "/v1/login", json={"challenge": challenge, "otp": otp, **body}, headers=frm(ip)
    )
    return resp.status, await resp.json()


async def admin_token(client: Any) -> str:
    status, body = await password_login(client, "admin", ADMIN_PASSWORD, ip=ADMIN_IP)
    assert status == 200, body
    return str(body["token"])


async def make_user(client: Any, name: str = VICTIM, roles: list[str] | None = None) -> str:
    """Create `name` (by the bootstrap admin); a password-only token of theirs."""
    made = await client.post(
        "/v1/users",
        json={"name": name, "password": VICTIM_PASSWORD, "roles": roles or []},
        headers=bearer(await admin_token(client), ADMIN_IP),
    )
    assert made.status == 201, await made.text()
    status, body = await password_login(client, name, VICTIM_PASSWORD)
    assert status == 200, body
    return str(body["token"])


async def enrol(
    client: Any, clock: FakeClock, token: str, password: str = VICTIM_PASSWORD
) -> tuple[str, list[str]]:
    """Enrol a TOTP factor with `token` and its user's `password`; (base32 secret, recovery
    codes). The clock moves past the activation's step, so the next login uses a fresh code."""
    started = await client.post(
        "/v1/mfa/enroll", json={"password": password}, headers=bearer(token)
    )
    assert started.status == 200, await started.text()
    secret = str((await started.json())["secret"])
    activated = await client.post(
        "/v1/mfa/activate", json={"otp": code(secret, clock)}, headers=bearer(token)
    )
    assert activated.status == 200, await activated.text()
    clock.advance(seconds=30)
    return secret, list((await activated.json())["recovery_codes"])


async def enrolled_victim(
    client: Any, clock: FakeClock, roles: list[str] | None = None
) -> tuple[str, list[str], str]:
    """The victim, enrolled; (secret, recovery codes, a password-only token from before)."""
    old = await make_user(client, roles=roles)
    secret, codes = await enrol(client, clock, old)
    return secret, codes, old


async def mfa_login(client: Any, clock: FakeClock, secret: str, ip: str = VICTIM_IP) -> Any:
    """The victim's own two-step login; the 200 body."""
    status, first = await password_login(client, VICTIM, VICTIM_PASSWORD, ip=ip)
    assert status == 401 and first["mfa_required"] is True, first
    status, second = await answer(client, first["challenge"], code(secret, clock), ip=ip)
    assert status == 200, second
    clock.advance(seconds=30)  # the step is spent
    return second


async def verify(client: Any, token: str, **context: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/verify", json={"token": token, "context": context})
    return resp.status, dict(await resp.json())


async def second_factor_counters(client: Any) -> list[dict[str, Any]]:
    """The victim's second-factor lockout counters, as an admin sees them."""
    admin = bearer(await admin_token(client), ADMIN_IP)
    seen = await (await client.get(f"/v1/users/{VICTIM}/lockout", headers=admin)).json()
    return [c for c in seen["counters"] if c["scope"].startswith("second_factor")]
