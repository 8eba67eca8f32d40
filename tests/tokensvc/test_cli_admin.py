"""Every admin action of the API has a CLI command: users, lockouts, keys, subjects, audit.

End to end against a real `tokensvc serve` subprocess (embedded SQLite), through the stored
admin login; the --local forms of the same commands are in test_cli.py (PostgreSQL).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.tokensvc.test_cli_login import Cli, assert_one_line_failure, http, server  # noqa: F401

PASSWORD = "a long enough password"


@pytest.fixture
def admin_cli(tmp_path: Path, server: str) -> Cli:  # noqa: F811
    cli = Cli(tmp_path / "admin")
    cli.home.mkdir()
    cli.login(server, "admin", ADMIN_PASSWORD)
    return cli


def _user(cli: Cli, name: str) -> None:
    cli.ok("user", "add", name, "--password-stdin", stdin=PASSWORD + "\n")


def test_user_show_roles_and_delete(admin_cli: Cli, server: str, tmp_path: Path) -> None:  # noqa: F811
    """`user show`, `user roles --add/--remove` and `user delete --yes` do what the API does;
    losing a role or being deleted kills the user's stored token."""
    _user(admin_cli, "gina")
    gina = Cli(tmp_path / "gina")
    gina.home.mkdir()

    shown = json.loads(admin_cli.ok("user", "show", "gina", "--json"))
    added = json.loads(
        admin_cli.ok("user", "roles", "gina", "--add", "ops", "--add", "dev", "--json")
    )
    gina.login(server, "gina", PASSWORD)
    removed = admin_cli.ok("user", "roles", "gina", "--remove", "ops")
    after_role_loss = gina("whoami")
    unconfirmed = admin_cli("user", "delete", "gina")
    deleted = admin_cli.ok("user", "delete", "gina", "--yes")
    missing = admin_cli("user", "show", "gina")

    assert shown["name"] == "gina" and shown["roles"] == [] and shown["disabled"] is False
    assert shown["created_at"].endswith("Z")
    assert sorted(added["roles"]) == ["dev", "ops"]
    assert removed.strip() == "gina: dev"
    assert "log in again: tokensvc login gina" in assert_one_line_failure(after_role_loss)
    assert unconfirmed.returncode != 0  # no --yes and no terminal to say yes on
    assert "deleted gina" in deleted
    assert "not_found" in assert_one_line_failure(missing)


def test_lockout_status_and_clear(admin_cli: Cli, server: str) -> None:  # noqa: F811
    """`lockout status` shows the failures counted for a name; `lockout clear` forgets them."""
    _user(admin_cli, "hank")
    for _ in range(3):
        assert http("POST", server + "/v1/login", headers=basic_auth("hank", "wrong!"))[0] == 401

    before = json.loads(admin_cli.ok("lockout", "status", "hank", "--json"))
    text = admin_cli.ok("lockout", "status", "hank")
    cleared = admin_cli.ok("lockout", "clear", "hank")
    after = json.loads(admin_cli.ok("lockout", "status", "hank", "--json"))

    assert before["failures"] == 3 and before["name"] == "hank"
    assert "hank: " in text and "3 failure(s)" in text
    assert "lockout of hank cleared" in cleared
    assert after["failures"] == 0 and after["locked"] is False


def test_subject_revoke_all_keys_revoke_and_audit(admin_cli: Cli, server: str) -> None:  # noqa: F811
    """`subject revoke-all` kills a subject's tokens; `keys revoke` kills a key's tokens; `audit`
    lists both actions, filtered by action, with ISO 8601 times."""
    minted = json.loads(admin_cli.ok("token", "mint", "--subject", "ivy", "--json"))
    revoke_all = json.loads(admin_cli.ok("subject", "revoke-all", "ivy", "--yes", "--json"))
    after_revoke_all = http("POST", server + "/v1/verify", {"token": minted["token"]})[0]
    new_key = json.loads(admin_cli.ok("keys", "rotate", "--json"))
    on_new_key = json.loads(admin_cli.ok("token", "mint", "--subject", "jay", "--json"))
    admin_cli.ok("keys", "revoke", new_key["id"], "--yes")
    after_key_revoke = http("POST", server + "/v1/verify", {"token": on_new_key["token"]})

    trail = json.loads(admin_cli.ok("audit", "--action", "key_revoked", "--json"))
    all_recent = admin_cli.ok("audit", "--limit", "5")

    assert revoke_all["subject"] == "ivy" and revoke_all["generation"] >= 1
    assert after_revoke_all == 401
    assert on_new_key["key_id"] == new_key["id"]
    assert after_key_revoke[0] == 401
    assert [e["target"] for e in trail["entries"]][:1] == [new_key["id"]]
    assert all(e["action"] == "key_revoked" and e["at"].endswith("Z") for e in trail["entries"])
    assert "key_revoked" in all_recent and "tokens_revoked_all" in all_recent


def test_messages_in_the_users_units(admin_cli: Cli, server: str) -> None:  # noqa: F811
    """A --ttl over the limit is answered in hours, not seconds; `token revoke` with nothing to
    revoke says what to give; `token verify` says valid or not (not valid on stderr, exit 1)."""
    too_long = admin_cli("token", "mint", "--subject", "kim", "--ttl", "400d")
    nothing = admin_cli("token", "revoke")
    token = admin_cli.ok(
        "token", "mint", "--subject", "kim", "--ttl", "10m", "--op", "read"
    ).strip()
    valid = admin_cli("token", "verify", token, "--op", "read")
    denied = admin_cli("token", "verify", "-", "--op", "write", stdin=token + "\n")
    as_json = json.loads(admin_cli.ok("token", "verify", token, "--op", "read", "--json"))

    line = assert_one_line_failure(too_long)
    assert "at most 23h" in line and "seconds" not in line
    assert nothing.returncode == 2 and "not both" not in nothing.stderr
    assert "give the TOKEN_ID to revoke, or --token" in nothing.stderr
    assert valid.returncode == 0 and "valid: subject kim" in valid.stdout
    assert denied.returncode == 1 and "not valid" in denied.stderr and denied.stdout == ""
    assert as_json["valid"] is True and as_json["subject"] == "kim"
    introspected = json.loads(admin_cli.ok("token", "introspect", token, "--json"))
    assert introspected["active"] is True and introspected["sub"] == "kim"
    assert "not active" in admin_cli.ok(
        "token", "introspect", "-", stdin="tsv1_nonsense.00000000\n"
    )


def test_attenuate_ttl_beyond_the_tokens_expiry_is_not_added_silently(admin_cli: Cli) -> None:
    """`attenuate --ttl 2h` of a 1 h token refuses (alone) or warns and leaves the useless caveat
    out (with --op); a shorter --ttl is added; `-` reads the token from stdin."""
    token = admin_cli.ok("token", "mint", "--subject", "lee", "--ttl", "1h").strip()

    alone = admin_cli("token", "attenuate", token, "--ttl", "2h")
    with_op = admin_cli(
        "token", "attenuate", "-", "--ttl", "2h", "--op", "read", stdin=token + "\n"
    )
    shorter = admin_cli.ok("token", "attenuate", token, "--ttl", "10m").strip()

    line = assert_one_line_failure(alone)
    assert "ends after the token's own expiry" in line and "shorter --ttl" in line
    assert with_op.returncode == 0 and "warning:" in with_op.stderr
    narrowed = json.loads(admin_cli.ok("token", "inspect", with_op.stdout.strip(), "--json"))
    assert [c["type"] for c in narrowed["caveats"]].count("expiry") == 1
    assert narrowed["caveats"][-1] == {"type": "operations", "operations": ["read"]}
    ten = json.loads(admin_cli.ok("token", "inspect", shorter, "--json"))
    assert [c["type"] for c in ten["caveats"]].count("expiry") == 2
    assert ten["expires_at"] < narrowed["expires_at"]


def test_every_option_of_every_command_is_documented() -> None:
    """Every option of every command (--url and --json included) has help text, and every
    command a docstring: nothing shows up blank in `--help`."""
    import click

    from tokensvc.cli import main

    def walk(command: click.Command, path: str) -> list[str]:
        missing = [] if command.help else [path]
        for param in command.params:
            if isinstance(param, click.Option) and not param.help and param.name != "help":
                missing.append(f"{path} {param.opts[0]}")
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                missing += walk(sub, f"{path} {name}")
        return missing

    assert walk(main, "tokensvc") == []
