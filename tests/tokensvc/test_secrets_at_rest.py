"""No root key in clear text: not in the database rows, not in the logs, not in any response.

The database is read with plain SQL over a separate engine, as an attacker with a copy of it
would; the logs are those of a whole flow at DEBUG, both the raw records and the JSON lines the
service writes in production (tokensvc.operations.logs.configure).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tokensvc.operations import logs
from tokensvc.web import appkeys
from tokensvc.web.app import create_app

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient
    from pytest_aiohttp import AiohttpClient

    from tests.conftest import FakeClock
    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]

WRONG_PASSWORD = "not the password, but close 7"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def text_forms(secret: bytes) -> list[str]:
    """How a secret could appear in text: hex (either case), base64 (either alphabet, padded or not), repr."""
    forms = [secret.hex(), secret.hex().upper(), repr(secret)[2:-1]]
    for b64 in (base64.b64encode(secret), base64.urlsafe_b64encode(secret)):
        forms += [b64.decode(), b64.decode().rstrip("=")]
    return forms


def binary_forms(secret: bytes) -> list[bytes]:
    return [secret, *(form.encode() for form in text_forms(secret))]


async def all_key_secrets(app: Any) -> dict[str, bytes]:
    """Every live root key (and the HMAC key derived from it), decrypted through the keyring."""
    keyring = app[appkeys.KEYRING]
    secrets: dict[str, bytes] = {}
    for info in await keyring.list():
        key = await keyring.get(info.id)
        assert key is not None
        secrets[f"root key {info.id}"] = key.secret.reveal()
        secrets[f"derived key {info.id}"] = key.derived
    return secrets


async def raw_root_key_rows(database_url: str) -> list[dict[str, Any]]:
    """Every root_keys row as plain SQL returns it, over an engine of our own."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return [
                dict(row)
                for row in (await conn.execute(text("SELECT * FROM root_keys"))).mappings()
            ]
    finally:
        await engine.dispose()


async def test_root_key_rows_hold_no_key_in_clear(client: Client, admin_token: str) -> None:
    """No column of any root_keys row contains a root key, its derived key or the KEK, raw, hex or base64."""
    await client.post("/v1/tokens", json={"subject": "alice"}, headers=bearer(admin_token))
    await client.post("/v1/keys/rotate", headers=bearer(admin_token))
    secrets = await all_key_secrets(client.app)
    config = client.app[appkeys.CONFIG]
    assert config.kek is not None
    secrets["kek"] = base64.b64decode(config.kek)

    rows = await raw_root_key_rows(config.effective_database_url)

    assert len(rows) >= 2
    assert {"id", "ciphertext"} <= set(rows[0])
    found = []
    for row in rows:
        for column, value in row.items():
            haystack = (
                bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
            )
            found += [
                (row["id"], column, name)
                for name, secret in secrets.items()
                if any(form in haystack for form in binary_forms(secret))
            ]
    assert found == []


# ---- logs ------------------------------------------------------------------------------------------------


@pytest.fixture
def production_logs(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """The service's own JSON log pipeline at DEBUG into a buffer, with caplog still capturing raw records."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    caplog.set_level(logging.DEBUG)  # first, so that caplog restores the level from before
    stream = io.StringIO()
    logs.configure("debug", stream=stream)
    root.addHandler(caplog.handler)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.reset_defaults()
        structlog.configure(**saved_structlog)


async def test_logs_of_a_whole_flow_hold_no_token_password_or_key(
    aiohttp_client: AiohttpClient,
    app_config: Config,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    production_logs: io.StringIO,
) -> None:
    """Start, good and bad logins, mint, verify (good, bad, denied), rotate: no token, password or key in any log."""
    client = await aiohttp_client(create_app(app_config, clock=clock))
    responses: list[str] = []

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        resp = await client.request(method, path, **kwargs)
        responses.append(await resp.text())
        return resp

    bad = await call("POST", "/v1/login", headers=basic_auth("admin", WRONG_PASSWORD))
    bad_json = await call(
        "POST", "/v1/login", json={"username": "nobody", "password": WRONG_PASSWORD}
    )
    good = await call("POST", "/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    admin_token = (await good.json())["token"]
    minted = await call(
        "POST",
        "/v1/tokens",
        json={"subject": "alice", "operations": ["read"]},
        headers=bearer(admin_token),
    )
    token = (await minted.json())["token"]
    await call("POST", "/v1/verify", json={"token": token, "context": {"operation": "read"}})
    await call("POST", "/v1/verify", json={"token": token, "context": {"operation": "write"}})
    await call("POST", "/v1/verify", json={"token": token[:-3] + "abc"})
    await call("POST", "/v1/verify", json={"token": token[5:-9]})
    await call("GET", "/v1/keys", headers=bearer(token))
    rotated = await call("POST", "/v1/keys/rotate", headers=bearer(admin_token))
    await call("GET", "/v1/keys", headers=bearer(admin_token))
    secrets = await all_key_secrets(client.app)
    await client.close()

    assert [bad.status, bad_json.status, good.status, minted.status, rotated.status] == [
        401,
        401,
        200,
        201,
        201,
    ]
    records = caplog.get_records("setup") + caplog.get_records("call")
    raw = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''} {vars(r)!r}" for r in records
    )
    written = production_logs.getvalue()
    assert written, "the flow wrote no log lines at all"
    needles: dict[str, str] = {
        "admin token": admin_token,
        "admin token body": admin_token[5:-9],
        "minted token": token,
        "minted token body": token[5:-9],
        "admin password": ADMIN_PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "kek": str(app_config.kek),
    }
    for name, secret in secrets.items():
        for i, form in enumerate(text_forms(secret)):
            needles[f"{name} form {i}"] = form
    leaks = {
        (where, name)
        for where, haystack in (("raw records", raw), ("written log", written))
        for name, needle in needles.items()
        if needle in haystack
    }
    assert leaks == set()
    in_responses = {
        name
        for name, needle in needles.items()
        if name.startswith(("root key", "derived key", "kek", "admin password", "wrong password"))
        and any(needle in r for r in responses)
    }
    assert in_responses == set()
