"""The `token` commands end to end against a real `tokensvc serve` subprocess (embedded SQLite)."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.tokensvc.test_cli import app_client, cli_env, kek, tokensvc  # noqa: F401
from tests.tokensvc.test_cli_login import Cli, http, server  # noqa: F401

ALICE_PASSWORD = "her long lantern passphrase"


@pytest.fixture
def admin_cli(tmp_path: Path, server: str) -> Cli:  # noqa: F811
    cli = Cli(tmp_path / "admin")
    cli.home.mkdir()
    cli.login(server, "admin", ADMIN_PASSWORD)
    return cli


def verify(server: str, token: str, **context: str) -> tuple[int, dict]:  # noqa: F811
    return http("POST", server + "/v1/verify", {"token": token, "context": context})


def test_login_mint_attenuate_verify_revoke_verify(server: str, admin_cli: Cli) -> None:  # noqa: F811
    """login → mint → attenuate offline → verify (allowed and denied) → revoke → verify refused."""
    minted = json.loads(
        admin_cli.ok(
            "token",
            "mint",
            "--subject",
            "alice",
            "--ttl",
            "10m",
            "--op",
            "read",
            "--op",
            "write",
            "--json",
        )
    )
    narrowed = admin_cli.ok(
        "token", "attenuate", minted["token"], "--op", "read", "--audience", "files", "--ttl", "5m"
    ).strip()

    allowed = verify(server, narrowed, operation="read", audience="files")
    denied = verify(server, narrowed, operation="write", audience="files")
    wide = verify(server, minted["token"], operation="write")
    revoke = admin_cli.ok("token", "revoke", "--token", narrowed)
    after = verify(server, minted["token"], operation="read")
    after_narrowed = verify(server, narrowed, operation="read", audience="files")

    assert narrowed.startswith("tsv1_") and narrowed != minted["token"]
    assert admin_cli.ok("token", "check", narrowed).strip() == "ok"
    assert allowed[0] == 200 and allowed[1]["token_id"] == minted["token_id"]
    assert denied[0] == 403
    assert wide[0] == 200
    assert "revocation sent" in revoke
    # The attenuated token is the same token (same id): revoking it revokes the original too.
    assert after == (401, after[1]) and after[1]["reason"] == "token revoked"
    assert after_narrowed[0] == 401


def test_list_and_revoke_by_id(server: str, admin_cli: Cli) -> None:  # noqa: F811
    """`token list --json` shows a minted token (no secret); `token revoke ID` kills it; --all shows it revoked."""
    minted = json.loads(
        admin_cli.ok(
            "token", "mint", "--subject", "lister", "--description", "nightly job", "--json"
        )
    )

    listed = json.loads(admin_cli.ok("token", "list", "--subject", "lister", "--json"))
    table = admin_cli.ok("token", "list", "--subject", "lister")
    admin_cli.ok("token", "revoke", minted["token_id"])
    after = json.loads(admin_cli.ok("token", "list", "--subject", "lister", "--json"))
    everything = json.loads(admin_cli.ok("token", "list", "--subject", "lister", "--all", "--json"))

    assert [r["token_id"] for r in listed] == [minted["token_id"]]
    assert listed[0]["description"] == "nightly job" and "tsv1_" not in json.dumps(listed)
    assert minted["token_id"] in table and "nightly job" in table
    assert after == []
    assert [r["status"] for r in everything] == ["revoked"]
    assert verify(server, minted["token"])[0] == 401


def test_service_token_through_the_cli(server: str, admin_cli: Cli) -> None:  # noqa: F811
    """`token mint --service --ttl 90d` gives a service token that verifies."""
    minted = json.loads(
        admin_cli.ok("token", "mint", "--subject", "svc", "--service", "--ttl", "90d", "--json")
    )

    assert minted["kind"] == "service"
    assert verify(server, minted["token"])[0] == 200


def test_check_accepts_good_and_rejects_bad_offline(
    admin_cli: Cli,
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`token check` exits 0 on a good token and 1 on a typo or garbage (the problem on stderr), with no server involved."""
    token = admin_cli.token(server)
    offline = Cli(tmp_path / "offline")
    offline.home.mkdir()
    typo = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]

    good = json.loads(offline.ok("token", "check", token, "--json"))
    bad = offline("token", "check", typo)
    garbage = offline("token", "check", "hello")

    assert good["ok"] is True and good["checksum"] == "ok"
    assert bad.returncode == 1 and "checksum" in bad.stderr and bad.stdout == ""
    assert garbage.returncode == 1


def test_attenuate_keeps_a_plain_pymacaroons_token_plain(admin_cli: Cli, server: str) -> None:  # noqa: F811
    """A plain base64 token attenuated stays plain base64, readable by pymacaroons, and verifies."""
    import base64

    from pymacaroons import Macaroon

    from tokensvc.macaroons.macaroon import serialize_v2
    from tokensvc.macaroons.tokenformat import decode_token

    minted = json.loads(admin_cli.ok("token", "mint", "--subject", "alice", "--json"))
    m = decode_token(minted["token"], max_bytes=1 << 16, max_caveats=128)
    plain = base64.urlsafe_b64encode(serialize_v2(m)).decode().rstrip("=")

    narrowed = admin_cli.ok("token", "attenuate", plain, "--op", "read").strip()
    parsed = Macaroon.deserialize(narrowed)

    assert not narrowed.startswith("tsv1_")
    assert len(parsed.caveats) == len(m.caveats) + 1
    assert verify(server, narrowed, operation="read")[0] == 200
    assert verify(server, narrowed, operation="write")[0] == 403


@pytest.mark.parametrize("option", ["--op", "--resource", "--audience"])
def test_attenuate_with_an_empty_value_is_one_line_not_a_traceback(
    admin_cli: Cli,
    server: str,  # noqa: F811
    option: str,
) -> None:
    """Red team (helper-37): an empty --op, --resource or --audience raised the caveat
    encoder's error as a traceback; it is a usage error, and no token is printed."""
    token = admin_cli.token(server)

    result = admin_cli("token", "attenuate", token, option, "")

    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and "empty" in result.stderr
    assert result.stdout == ""


def test_logout_revokes_the_stored_token(server: str, tmp_path: Path) -> None:  # noqa: F811
    """`logout` burns the stored token on the server before deleting the file."""
    cli = Cli(tmp_path / "leaver")
    cli.home.mkdir()
    cli.login(server, "admin", ADMIN_PASSWORD)
    token = cli.token(server)
    assert verify(server, token)[0] == 200

    out = cli.ok("logout")

    assert "logged out" in out
    assert not cli.credentials.exists()
    assert verify(server, token)[0] == 401


async def test_local_mints_are_registered(
    cli_env: dict[str, str],  # noqa: F811
    aiohttp_client: Any,
    pg_url: str,
    data_dir: Path,
    kek: str,  # noqa: F811
) -> None:
    """`token mint --local` (the operator path) writes a registry row the service lists, made by
    `local:<os user>`."""
    minted = await tokensvc(
        cli_env,
        "token",
        "mint",
        "--local",
        "--subject",
        "batch",
        "--description",
        "cron",
        "--json",
    )
    assert minted.returncode == 0, minted
    client = await app_client(aiohttp_client, pg_url, data_dir, kek)
    login = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    admin = (await login.json())["token"]

    resp = await client.get(
        "/v1/tokens?subject=batch", headers={"Authorization": f"Bearer {admin}"}
    )

    rows = (await resp.json())["tokens"]
    assert [(r["token_id"], r["created_by"], r["description"]) for r in rows] == [
        (minted.json()["token_id"], f"local:{getpass.getuser()}", "cron")
    ]
