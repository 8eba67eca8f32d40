"""The real `tokensvc` console script, run as a subprocess against real PostgreSQL.

Operator commands (`migrate`, `token mint --local`, `keys list|rotate --local`) and the offline
`token inspect`; the tokens they make are checked by an app built on the same database and KEK.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import ADMIN_PASSWORD, basic_auth, make_config
from tokensvc.web import appkeys
from tokensvc.web.app import create_app

if TYPE_CHECKING:
    from pytest_aiohttp import AiohttpClient

SCRIPT = Path(sys.executable).parent / "tokensvc"


def script() -> str:
    if SCRIPT.exists():
        return str(SCRIPT)
    found = shutil.which("tokensvc")
    assert found, "the tokensvc console script is not installed"
    return found


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"Result(rc={self.returncode}, stdout={self.stdout[-500:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture
def kek() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def cli_env(tmp_path: Path, data_dir: Path, pg_url: str, kek: str) -> dict[str, str]:
    """The environment of an operator on PostgreSQL: nothing from the caller's TOKENSVC_* or home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        TOKENSVC_DATA_DIR=str(data_dir),
        TOKENSVC_DATABASE_URL=pg_url,
        TOKENSVC_KEK=kek,
    )
    return env


async def tokensvc(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    """Run the console script (with `stdin` as its input, if given); its exit status and output."""
    proc = await asyncio.create_subprocess_exec(
        script(),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(
        proc.communicate(None if stdin is None else stdin.encode()), timeout=60
    )
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_clean_failure(result: Result) -> str:
    """Non-zero exit, no traceback, one `Error:` line saying what went wrong; that line."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result
    return errors[0]


async def app_client(aiohttp_client: Any, pg_url: str, data_dir: Path, kek: str) -> Any:
    """The service on the database and KEK the CLI used."""
    return await aiohttp_client(
        create_app(make_config(database_url=pg_url, data_dir=data_dir, kek=kek))
    )


async def test_migrate_creates_the_schema(cli_env: dict[str, str], pg_url: str) -> None:
    """`tokensvc migrate` exits 0 and leaves the root_keys and users tables in an empty database."""
    result = await tokensvc(cli_env, "migrate")

    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as conn:
            tables = set(
                (
                    await conn.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                ).scalars()
            )
    finally:
        await engine.dispose()
    assert result.returncode == 0, result
    assert {"root_keys", "users"} <= tables
    assert "up to date" in result.stdout


async def test_migrate_does_not_call_a_newer_schema_up_to_date(
    cli_env: dict[str, str], pg_url: str
) -> None:
    """Helper-69: at a revision this release does not ship (a newer release's), migrate left
    it alone, as it must in a rolling update, but said "up to date"."""
    assert (await tokensvc(cli_env, "migrate")).returncode == 0
    engine = create_async_engine(pg_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'ffffdeadbeef'"))
    finally:
        await engine.dispose()

    result = await tokensvc(cli_env, "migrate")

    assert result.returncode == 0, result
    assert "ffffdeadbeef, which this release does not know" in result.stdout
    assert "up to date" not in result.stdout


@pytest.mark.parametrize("command", [("migrate",), ("keys", "list", "--local")])
async def test_a_data_dir_that_cannot_be_made_is_one_line_naming_it(
    cli_env: dict[str, str], command: tuple[str, ...]
) -> None:
    """Helper-69: an uncreatable TOKENSVC_DATA_DIR was a 64-line traceback from `migrate`."""
    embedded = {k: v for k, v in cli_env.items() if k != "TOKENSVC_DATABASE_URL"}
    embedded["TOKENSVC_DATA_DIR"] = "/proc/no-such-dir/tokensvc"

    result = await tokensvc(embedded, *command)

    assert result.returncode == 2, result
    assert assert_clean_failure(result) == (
        "Error: TOKENSVC_DATA_DIR: cannot create '/proc/no-such-dir/tokensvc'"
        " (No such file or directory)"
    )


async def test_local_admin_mint_gives_a_token_the_service_accepts(
    cli_env: dict[str, str], aiohttp_client: AiohttpClient, pg_url: str, data_dir: Path, kek: str
) -> None:
    """`token mint --local --admin --subject admin --ttl 1h --json` makes a token that verifies and passes admin calls."""
    client = await app_client(aiohttp_client, pg_url, data_dir, kek)  # its start creates admin
    minted = await tokensvc(
        cli_env,
        "token",
        "mint",
        "--local",
        "--admin",
        "--subject",
        "admin",
        "--ttl",
        "1h",
        "--json",
    )

    assert minted.returncode == 0, minted
    body = minted.json()
    assert {"token", "token_id", "key_id", "subject", "admin", "expires_at"} <= set(body)
    assert body["subject"] == "admin" and body["admin"] is True
    verified = await client.post("/v1/verify", json={"token": body["token"]})
    assert verified.status == 200, await verified.text()
    assert (await verified.json())["token_id"] == body["token_id"]
    keys = await client.get("/v1/keys", headers={"Authorization": f"Bearer {body['token']}"})
    assert keys.status == 200, await keys.text()
    assert body["key_id"] in {k["id"] for k in (await keys.json())["keys"]}


async def test_the_break_glass_door_makes_admin_tokens_only_for_admins_and_audits_its_burns(
    cli_env: dict[str, str], aiohttp_client: AiohttpClient, pg_url: str, data_dir: Path, kek: str
) -> None:
    """Red team: `token mint --local --admin` for a name that is not an enabled admin made a
    dormant admin token that came alive when the name became an admin; `token revoke --local
    --token` was audited as the token's subject, not as the operator who burned it."""
    client = await app_client(aiohttp_client, pg_url, data_dir, kek)
    added = await _with_stdin(
        cli_env, "correct horse battery", "user", "add", "eve", "--password-stdin", "--local"
    )
    assert added.returncode == 0, added
    admin_mint = ("token", "mint", "--local", "--admin", "--json", "--subject")

    refused = {s: await tokensvc(cli_env, *admin_mint, s) for s in ("eve", "nobody-yet")}
    leaked = (
        await tokensvc(cli_env, "token", "mint", "--local", "--subject", "eve", "--json")
    ).json()
    burned = await tokensvc(
        cli_env, "token", "revoke", "--local", "--token", "-", stdin=leaked["token"]
    )
    trail = await tokensvc(cli_env, "audit", "--local", "--target", leaked["token_id"], "--json")

    for result in refused.values():
        assert "enabled admin user" in assert_clean_failure(result)
    assert burned.returncode == 0, burned
    assert (await client.post("/v1/verify", json={"token": leaked["token"]})).status == 401
    revoked = [e for e in trail.json()["entries"] if e["action"] == "token_revoked"]
    assert [e["actor"] for e in revoked] == [f"local:{getpass.getuser()}"], trail.json()
    assert revoked[0]["details"]["via"] == "presented"


async def service_token(client: Any, **body: Any) -> dict[str, Any]:
    """A token minted by the service itself, through login and POST /v1/tokens."""
    login = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    admin_token = (await login.json())["token"]
    resp = await client.post(
        "/v1/tokens", json=body, headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def test_inspect_shows_the_identifier_and_caveats_offline(
    cli_env: dict[str, str], aiohttp_client: AiohttpClient, pg_url: str, data_dir: Path, kek: str
) -> None:
    """`token inspect TOKEN --json` shows token_id, key_id, the expiry and the caveats as objects (times in ISO 8601), with no configuration; `inspect -` reads stdin."""
    client = await app_client(aiohttp_client, pg_url, data_dir, kek)
    minted = await service_token(
        client, subject="alice", operations=["read"], resources=["/docs/*"]
    )
    offline = {k: v for k, v in cli_env.items() if not k.startswith("TOKENSVC_")}

    result = await tokensvc(offline, "token", "inspect", minted["token"], "--json")

    assert result.returncode == 0, result
    info = result.json()
    assert info["token_id"] == minted["token_id"]
    assert info["key_id"] == minted["key_id"]
    assert info["admin"] is False and info["mfa"] is False
    by_type = {c["type"]: c for c in info["caveats"]}
    assert by_type["subject"] == {"type": "subject", "subject": "alice"}
    assert by_type["operations"] == {"type": "operations", "operations": ["read"]}
    assert by_type["resources"] == {"type": "resources", "resources": ["/docs/*"]}
    assert by_type["expiry"]["expires_at"] == minted["expires_at"]
    assert info["expires_at"] == minted["expires_at"]
    assert "Expiry(" not in result.stdout
    from_stdin = await tokensvc(
        offline, "token", "inspect", "-", "--json", stdin=minted["token"] + "\n"
    )
    assert from_stdin.returncode == 0, from_stdin
    assert from_stdin.json() == info


async def test_inspect_of_a_damaged_token_fails_cleanly(cli_env: dict[str, str]) -> None:
    """`token inspect` of garbage, a bad checksum or non-ASCII text exits non-zero with one line, no traceback."""
    offline = {k: v for k, v in cli_env.items() if not k.startswith("TOKENSVC_")}
    token = "tsv1_AgEIdG9rZW5zdmMCIgEAVfV6EdZCLF63AhYp47XvNjA5N2M1MGFhZGVmZDlhMDQAAgdbMiwieCJdAAIOWzAsMTc5NTMwMDI0OF0AAgVbNywwXQAABiDYOoVFEbeO5RT8wFGCxJMnHtZbhrAPkLxjfRihTp_wLA.00000000"

    results = await asyncio.gather(
        tokensvc(offline, "token", "inspect", "not a token at all"),
        tokensvc(offline, "token", "inspect", token),
        tokensvc(offline, "token", "inspect", "tsv1_\u00e9t\u00e9.00000000"),
    )

    garbage, bad_checksum, non_ascii = results
    assert_clean_failure(garbage)
    assert "checksum" in assert_clean_failure(bad_checksum)
    assert_clean_failure(non_ascii)


async def test_keys_list_and_rotate_locally(
    cli_env: dict[str, str], aiohttp_client: AiohttpClient, pg_url: str, data_dir: Path, kek: str
) -> None:
    """`keys list --local --json` shows the service's current key; `keys rotate --local --json` makes a new current one."""
    client = await app_client(aiohttp_client, pg_url, data_dir, kek)
    scheduled = (await service_token(client, subject="alice"))["key_id"]

    listed = await tokensvc(cli_env, "keys", "list", "--local", "--json")
    rotated = await tokensvc(cli_env, "keys", "rotate", "--local", "--json")

    assert listed.returncode == 0, listed
    assert [k["id"] for k in listed.json() if k["current"]] == [scheduled]
    for key in listed.json():
        assert set(key) == {"id", "created_at", "expires_at", "current"}
    assert rotated.returncode == 0, rotated
    new = rotated.json()
    assert new["id"] != scheduled and new["current"] is True
    infos = await client.app[appkeys.KEYRING].list()
    assert {i.id: i.current for i in infos} == {scheduled: False, new["id"]: True}


async def test_bad_ttl_exits_non_zero_with_a_one_line_message(cli_env: dict[str, str]) -> None:
    """A --ttl that is no duration, zero, or longer than a key can back fails with one `Error:` line and no traceback."""
    base = ("token", "mint", "--local", "--subject", "alice", "--ttl")

    banana, zero, too_long = await asyncio.gather(
        tokensvc(cli_env, *base, "banana"),
        tokensvc(cli_env, *base, "0"),
        tokensvc(cli_env, *base, "48h"),
    )

    assert "ttl" in assert_clean_failure(banana).lower()
    assert "banana" in banana.stderr
    assert "ttl" in assert_clean_failure(zero).lower()
    assert "ttl" in assert_clean_failure(too_long).lower()
    assert banana.stdout == zero.stdout == too_long.stdout == ""


async def test_wrong_kek_fails_with_one_line_not_a_traceback(
    cli_env: dict[str, str], aiohttp_client: AiohttpClient, pg_url: str, data_dir: Path, kek: str
) -> None:
    """With a KEK other than the one the root keys were sealed with, a local mint is one `Error:` line and a non-zero exit."""
    await app_client(aiohttp_client, pg_url, data_dir, kek)  # seals this interval's key under `kek`
    wrong_kek = {**cli_env, "TOKENSVC_KEK": base64.b64encode(secrets.token_bytes(32)).decode()}

    result = await tokensvc(wrong_kek, "token", "mint", "--local", "--subject", "alice", "--json")

    assert "key-encryption key" in assert_clean_failure(result)
    assert result.stdout == ""


async def test_unreachable_database_fails_with_one_line_not_a_traceback(
    cli_env: dict[str, str],
) -> None:
    """With the database unreachable, `keys list --local` and `migrate` are one `Error:` line and
    a non-zero exit."""
    unreachable = {
        **cli_env,
        "TOKENSVC_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
    }

    listed = await tokensvc(unreachable, "keys", "list", "--local", "--json")
    # Red team (helper-34): migrate printed a 100-line traceback for the same failure.
    migrated = await tokensvc(unreachable, "migrate")
    # Red team (helper-40): and both did for a URL the driver cannot use (a port that is no
    # number), whose value the line must not repeat.
    unusable = {**cli_env, "TOKENSVC_DATABASE_URL": "postgresql://u@127.0.0.1/db?port=s3cr3t"}
    unusable_results = [
        await tokensvc(unusable, "migrate"),
        await tokensvc(unusable, "keys", "list", "--local"),
    ]

    for result in (listed, migrated, *unusable_results):
        assert_clean_failure(result)
        assert result.stdout == ""
        assert "s3cr3t" not in result.stderr


async def test_local_actions_are_audited_like_the_api(
    cli_env: dict[str, str], aiohttp_client: AiohttpClient, pg_url: str, data_dir: Path, kek: str
) -> None:
    """`token mint --local`, `keys rotate --local` and `user add --local` go through the same
    services as the API, so each leaves an audit row naming the operator as `local:<os user>`."""
    actor = f"local:{getpass.getuser()}"
    added = await _with_stdin(
        cli_env, "correct horse battery", "user", "add", "carol", "--password-stdin", "--local"
    )
    minted = await tokensvc(cli_env, "token", "mint", "--local", "--subject", "batch", "--json")
    rotated = await tokensvc(cli_env, "keys", "rotate", "--local", "--json")
    assert (added.returncode, minted.returncode, rotated.returncode) == (0, 0, 0), (
        added,
        minted,
        rotated,
    )
    client = await app_client(aiohttp_client, pg_url, data_dir, kek)
    login = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    admin = {"Authorization": "Bearer " + (await login.json())["token"]}

    resp = await client.get(f"/v1/audit?actor={actor}", headers=admin)

    entries = (await resp.json())["entries"]
    assert {(e["action"], e["target"]) for e in entries} == {
        ("user_created", "carol"),
        ("token_minted", minted.json()["token_id"]),
        ("key_rotated", rotated.json()["id"]),
    }


async def _with_stdin(env: dict[str, str], text_in: str, *args: str) -> Result:
    proc = await asyncio.create_subprocess_exec(
        script(),
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(text_in.encode() + b"\n"), timeout=60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_local_admin_commands_answer_as_the_api_does(
    cli_env: dict[str, str], aiohttp_client: AiohttpClient, pg_url: str, data_dir: Path, kek: str
) -> None:
    """`user show|roles|delete`, `token list`, `subject revoke-all`, `keys revoke` and `audit`
    with --local go through the services and print the same JSON the API answers."""
    client = await app_client(aiohttp_client, pg_url, data_dir, kek)
    login = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    admin = {"Authorization": "Bearer " + (await login.json())["token"]}
    added = await _with_stdin(
        cli_env, "correct horse battery", "user", "add", "dan", "--password-stdin", "--local"
    )
    assert added.returncode == 0, added

    shown = await tokensvc(cli_env, "user", "show", "dan", "--local", "--json")
    roles = await tokensvc(cli_env, "user", "roles", "dan", "--add", "ops", "--local", "--json")
    api_user = await (await client.get("/v1/users/dan", headers=admin)).json()
    minted = await tokensvc(cli_env, "token", "mint", "--local", "--subject", "dan", "--json")
    listed = await tokensvc(cli_env, "token", "list", "--local", "--subject", "dan", "--json")
    api_list = await (await client.get("/v1/tokens?subject=dan", headers=admin)).json()
    revoked_all = await tokensvc(
        cli_env, "subject", "revoke-all", "dan", "--yes", "--local", "--json"
    )
    rotated = await tokensvc(cli_env, "keys", "rotate", "--local", "--json")
    key_revoked = await tokensvc(
        cli_env, "keys", "revoke", rotated.json()["id"], "--yes", "--local", "--json"
    )
    deleted = await tokensvc(cli_env, "user", "delete", "dan", "--yes", "--local")
    trail = await tokensvc(cli_env, "audit", "--local", "--target", "dan", "--json")
    api_trail = await (await client.get("/v1/audit?target=dan", headers=admin)).json()
    api_keys = await (await client.get("/v1/keys", headers=admin)).json()

    for result in (shown, roles, minted, listed, revoked_all, rotated, key_revoked, deleted, trail):
        assert result.returncode == 0, result
    assert {k: v for k, v in shown.json().items() if k != "updated_at"} == {
        k: v for k, v in api_user.items() if k != "updated_at"
    } | {"roles": []}
    assert roles.json()["roles"] == ["ops"] == api_user["roles"]
    assert listed.json() == api_list["tokens"]
    assert [t["token_id"] for t in listed.json()] == [minted.json()["token_id"]]
    assert revoked_all.json()["subject"] == "dan" and revoked_all.json()["generation"] >= 1
    assert rotated.json()["id"] not in [k["id"] for k in api_keys["keys"]]
    assert trail.json() == api_trail
    assert [e["action"] for e in trail.json()["entries"]][:2] == [
        "user_deleted",
        "tokens_revoked_all",
    ]


async def test_local_lockout_needs_a_shared_store(cli_env: dict[str, str], redis_url: str) -> None:
    """`lockout status --local` without Redis refuses in one line (the embedded lockout lives in the
    server's memory); with TOKENSVC_REDIS_URL it reads and clears the shared counters."""
    with_redis = {
        **cli_env,
        "TOKENSVC_REDIS_URL": redis_url,
        "TOKENSVC_REDIS_PREFIX": f"clitest{secrets.token_hex(4)}:",
    }

    refused = await tokensvc(cli_env, "lockout", "status", "ed", "--local")
    status = await tokensvc(with_redis, "lockout", "status", "ed", "--local", "--json")
    cleared = await tokensvc(with_redis, "lockout", "clear", "ed", "--local")

    assert "TOKENSVC_REDIS_URL" in assert_clean_failure(refused)
    assert status.returncode == 0, status
    assert status.json()["failures"] == 0 and status.json()["locked"] is False
    assert cleared.returncode == 0 and "cleared" in cleared.stdout
