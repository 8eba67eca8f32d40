"""`tokensvc user …`: add, list, change passwords, disable, unlock."""

from __future__ import annotations

import sys
from typing import Any

import click

from tokensvc.cli.common import emit, fail_on_errors, local_runtime, operator, run


@click.group()
def user() -> None:
    """Users: add, list, change passwords, disable, unlock."""


def _new_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("New password", hide_input=True, confirmation_prompt=True))


def _user_line(u: dict[str, Any]) -> str:
    flags = ",".join(u["roles"]) or "-"
    return f"{u['name']:<24} roles={flags:<16} {'disabled' if u['disabled'] else 'enabled'}"


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Give the user the admin role.")
@click.option("--role", "roles", multiple=True, help="Extra role (repeatable).")
@click.option("--password-stdin", is_flag=True)
@click.option("--local", is_flag=True, help="Write the configured database directly.")
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@fail_on_errors
def user_add(
    name: str,
    admin: bool,
    roles: tuple[str, ...],
    password_stdin: bool,
    local: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """Add a user (password prompted twice, or read from standard input)."""
    password = _new_password(password_stdin)
    all_roles = sorted(set(roles) | ({"admin"} if admin else set()))
    if local:
        from tokensvc.services.users import NewUser

        new = NewUser(name=name, password=password, roles=tuple(all_roles))

        async def go() -> dict[str, Any]:
            async with local_runtime() as built:
                created = await built.services.users.create(operator(), new)
            return {"name": created.name, "roles": list(created.roles), "disabled": False}

        result = run(go())
    else:
        from tokensvc.cli.client import Client

        result = Client.from_saved(url).request(
            "POST", "/v1/users", {"name": name, "password": password, "roles": all_roles}
        )
    emit(result, as_json, lambda u: "created " + _user_line(u))


@user.command("list")
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@fail_on_errors
def user_list(url: str | None, as_json: bool) -> None:
    """List users."""
    from tokensvc.cli.client import Client

    users = Client.from_saved(url).request("GET", "/v1/users")["users"]
    emit(users, as_json, lambda us: "\n".join(_user_line(u) for u in us) or "(no users)")


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True)
@click.option("--url", default=None)
@fail_on_errors
def user_passwd(name: str, password_stdin: bool, url: str | None) -> None:
    """Set a user's password; their existing tokens stop working."""
    from tokensvc.cli.client import Client

    password = _new_password(password_stdin)
    Client.from_saved(url).request("PATCH", f"/v1/users/{name}", {"password": password})
    click.echo(f"password of {name} changed; their earlier tokens are revoked")


@user.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable instead.")
@click.option("--url", default=None)
@fail_on_errors
def user_disable(name: str, enable: bool, url: str | None) -> None:
    """Disable a user (their tokens stop working), or --enable them again."""
    from tokensvc.cli.client import Client

    Client.from_saved(url).request("PATCH", f"/v1/users/{name}", {"disabled": not enable})
    click.echo(f"{name} {'enabled' if enable else 'disabled'}")


@user.command("unlock")
@click.argument("name")
@click.option("--url", default=None)
@fail_on_errors
def user_unlock(name: str, url: str | None) -> None:
    """Clear a user's failed-login lockout."""
    from tokensvc.cli.client import Client

    Client.from_saved(url).request("DELETE", f"/v1/users/{name}/lockout")
    click.echo(f"lockout of {name} cleared")


COMMANDS = [user]
