"""No token, password or key material in the logs: a full flow at DEBUG, and `scrub` itself."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.bakery.conftest import bearer, login, mint, with_third_party
from tests.bakery.test_bakery_interop import as_pymacaroon, bakery_client_with_token, get_discharge
from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tests.tokensvc.test_request_logs import json_logs, lines  # noqa: F401 - the fixture
from tokensvc.bakery import appkeys as bakery_keys
from tokensvc.operations.logs import scrub, security_event
from tokensvc.web import appkeys
from tokensvc.web.app import create_app

ALICE_PASSWORD = "Her-Pa55word-never-logged"
WRONG_PASSWORD = "wrong-Pa55word-never-logged"
DB_PASSWORD = "Db-Pa55word-never-logged"


def encodings(secret: bytes) -> list[str]:
    """The forms a key could take in a line of text: hex, and base64 in both alphabets."""
    std = base64.b64encode(secret).decode()
    return [secret.hex(), std.rstrip("="), base64.urlsafe_b64encode(secret).decode().rstrip("=")]


async def test_a_full_flow_logs_no_secret(
    aiohttp_server: Any,
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Path,
    clock: FakeClock,
    json_logs: io.StringIO,  # noqa: F811 - the imported fixture
) -> None:
    """Logins good and bad, user creation, mint, discharge, verify, revoke: no secret in any line."""
    config = make_config(database_url=pg_url, data_dir=data_dir)
    server = await aiohttp_server(create_app(config, clock=clock), host="127.0.0.1")
    client = await aiohttp_client(server)
    discharger_url = str(server.make_url("/bakery"))

    admin = await login(client, "admin", ADMIN_PASSWORD)
    bad = await client.post("/v1/login", headers=basic_auth("admin", WRONG_PASSWORD))
    created = await client.post(
        "/v1/users", json={"name": "alice", "password": ALICE_PASSWORD}, headers=bearer(admin)
    )
    by_body = await client.post("/v1/login", json={"username": "alice", "password": ALICE_PASSWORD})
    alice = str((await by_body.json())["token"])
    wrong_body = await client.post(
        "/v1/login", json={"username": "alice", "password": WRONG_PASSWORD}
    )
    token = await with_third_party(
        client, await mint(client, admin, subject="alice", ttl=600), discharger_url, "user-is alice"
    )
    discharge = await get_discharge(token, bakery_client_with_token(alice))
    bound = as_pymacaroon(token).prepare_for_request(discharge).serialize()
    verified = await client.post("/v1/verify", json={"token": token, "discharges": [bound]})
    keys = await client.get("/v1/keys", headers=bearer(admin))
    revoked = await client.post("/v1/tokens/revoke", json={"token": token})
    after = await client.post("/v1/verify", json={"token": token, "discharges": [bound]})
    logging.getLogger("tokensvc").warning(
        "connecting to %s", f"postgresql+asyncpg://svc:{DB_PASSWORD}@db.internal/tokensvc"
    )
    root_key = await client.app[appkeys.KEYRING].current()
    discharger_key = client.app[bakery_keys.DISCHARGER_KEY]

    logged = json_logs.getvalue()
    statuses = [bad.status, created.status, wrong_body.status, verified.status, keys.status]
    assert statuses == [401, 201, 401, 200, 200]
    assert revoked.status == 204 and after.status == 401
    assert len(lines(json_logs, "http_request")) >= 10
    assert lines(json_logs, "authn_login_fail") and lines(json_logs, "authn_login_success")
    secrets_used = [
        ADMIN_PASSWORD,
        ALICE_PASSWORD,
        WRONG_PASSWORD,
        DB_PASSWORD,
        admin,
        alice,
        token,
        bound,
        discharge.serialize(),
        str(config.kek),
        *(t[5:45] for t in (admin, alice, token)),  # any stretch of a token, not only all of it
        *encodings(root_key.secret.reveal()),
        *encodings(root_key.derived),
        *encodings(discharger_key.private.reveal()),
        *encodings(base64.b64decode(str(config.kek))),
        *encodings(as_pymacaroon(token).signature_bytes),
    ]
    leaked = [s for s in secrets_used if s in logged]
    assert leaked == []


def test_security_event_fields_named_like_secrets_are_masked(json_logs: io.StringIO) -> None:  # noqa: F811
    """A field called password, token or authorization is written as [REDACTED], nested too."""

    security_event(
        "authn_login_fail",
        user="bob",
        password="hunter2-x",
        headers={"Authorization": "Basic Ym9iOmh1bnRlcjI=", "Accept": "*/*"},
        items=[{"token": "abc-def-ghi"}],
    )

    logged = json_logs.getvalue()
    (line,) = lines(json_logs, "authn_login_fail")
    assert line["password"] == "[REDACTED]"
    assert line["headers"] == {"Authorization": "[REDACTED]", "Accept": "*/*"}
    assert line["items"] == [{"token": "[REDACTED]"}]
    assert "hunter2" not in logged and "Ym9iOmh1bnRlcjI" not in logged and "abc-def" not in logged


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("db postgresql+asyncpg://svc:s3cret@db:5432/x down", "s3cret"),
        ("db postgresql+asyncpg://svc:p@ss@db:5432/x down", "ss@db"),
        ("redis redis://:r3dispass@cache:6379/0 refused", "r3dispass"),
        ("headers: Authorization: Bearer tsv1_whatever-it-is", "whatever-it-is"),
        ('{"Authorization": "Basic Ym9iOmh1bnRlcjI="}', "Ym9iOmh1bnRlcjI"),
        ("sent Macaroon AgEIdG9rZW5zdmMCE", "AgEIdG9rZW5zdmMCE"),
        ("GET /cb?password=pw123&next=/", "pw123"),
        ('{"password": "pw456", "user": "bob"}', "pw456"),
        ("token=tok789 in query", "tok789"),
        ("pymacaroon " + "A" * 100, "A" * 80),
    ],
)
def test_scrub_masks_credentials_inside_free_text(text: str, secret: str) -> None:
    """Database and Redis URLs, Authorization values and key=value secrets lose their secret."""

    scrubbed = scrub(text)

    assert secret not in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "invalid token: signature does not match",
        "GET /v1/users/alice 200",
        "root key 0123456789abcdef rotated",
        "postgresql+asyncpg://db.internal/tokensvc",
    ],
)
def test_scrub_leaves_ordinary_text_alone(text: str) -> None:
    """Error reasons, paths, key ids and URLs without credentials pass unchanged."""

    scrubbed = scrub(text)

    assert scrubbed == text
