"""`tokensvc user …`: add, list, show, change passwords and roles, disable, delete, unlock,
mfa-reset.

Each command goes through the API with your token for the server, or with --local straight to
the configured database through the same service method (audited as `local:<os user>`).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

import click

from tokensvc.cli import common
from tokensvc.cli.client import Client
from tokensvc.cli.common import emit, fail_on_errors, json_option, local_option, url_option
from tokensvc.cli.render import user_body, user_detail, user_line


@click.group()
def user() -> None:
    """Users: add, list, show, passwd, roles, disable, delete, unlock, mfa-reset."""


def _path(name: str) -> str:
    return f"/v1/users/{quote(name, safe='')}"


def _new_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("New password", hide_input=True, confirmation_prompt=True))


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Give the user the admin role.")
@click.option("--role", "roles", multiple=True, help="Extra role (repeatable).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@local_option
@url_option
@json_option
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

        async def go(services: Any, who: Any) -> dict[str, Any]:
            return user_body(await services.users.create(who, new))

        result = common.local(go)
    else:
        result = Client.signed_in(url).request(
            "POST", "/v1/users", {"name": name, "password": password, "roles": all_roles}
        )
    emit(result, as_json, lambda u: "created " + user_line(u))


@user.command("list")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="At most this many (1-1000).",
)
@click.option("--after", default=None, help="Paging cursor: list after this name.")
@local_option
@url_option
@json_option
@fail_on_errors
def user_list(limit: int, after: str | None, local: bool, url: str | None, as_json: bool) -> None:
    """List users."""
    if local:

        async def go(services: Any, who: Any) -> list[dict[str, Any]]:
            return [user_body(u) for u in await services.users.list(who, after=after, limit=limit)]

        users = common.local(go)
    else:
        from urllib.parse import urlencode

        query = {"limit": str(limit), **({"after": after} if after else {})}
        users = Client.signed_in(url).request("GET", "/v1/users?" + urlencode(query))["users"]
    emit(users, as_json, lambda us: "\n".join(user_line(u) for u in us) or "(no users)")


@user.command("show")
@click.argument("name")
@local_option
@url_option
@json_option
@fail_on_errors
def user_show(name: str, local: bool, url: str | None, as_json: bool) -> None:
    """Show one user: roles, enabled or not, when created and changed."""
    emit(_get(name, local, url), as_json, user_detail)


def _get(name: str, local: bool, url: str | None) -> dict[str, Any]:
    if local:

        async def go(services: Any, who: Any) -> dict[str, Any]:
            return user_body(await services.users.get(who, name))

        return common.local(go)
    result: dict[str, Any] = Client.signed_in(url).request("GET", _path(name))
    return result


def _change(name: str, local: bool, url: str | None, **fields: Any) -> dict[str, Any]:
    """PATCH the user (or UserService.update with --local); the user as it is now."""
    if local:
        from tokensvc.services.users import UserChange

        change = UserChange(**fields)

        async def go(services: Any, who: Any) -> dict[str, Any]:
            return user_body(await services.users.update(who, name, change))

        return common.local(go)
    body = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    result: dict[str, Any] = Client.signed_in(url).request("PATCH", _path(name), body)
    return result


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@local_option
@url_option
@json_option
@fail_on_errors
def user_passwd(
    name: str, password_stdin: bool, local: bool, url: str | None, as_json: bool
) -> None:
    """Set a user's password; their existing tokens stop working."""
    result = _change(name, local, url, password=_new_password(password_stdin))
    emit(
        result,
        as_json,
        lambda u: f"password of {u['name']} changed; their earlier tokens are revoked",
    )


@user.command("roles")
@click.argument("name")
@click.option("--add", "added", multiple=True, metavar="ROLE", help="Give a role (repeatable).")
@click.option(
    "--remove", "removed", multiple=True, metavar="ROLE", help="Take a role (repeatable)."
)
@local_option
@url_option
@json_option
@fail_on_errors
def user_roles(
    name: str,
    added: tuple[str, ...],
    removed: tuple[str, ...],
    local: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """Show a user's roles, or change them; a role taken away revokes their earlier tokens."""
    current = _get(name, local, url)
    if added or removed:
        roles = tuple(sorted((set(current["roles"]) | set(added)) - set(removed)))
        if roles != tuple(sorted(current["roles"])):
            current = _change(name, local, url, roles=roles)
    emit(current, as_json, lambda u: f"{u['name']}: {', '.join(u['roles']) or '(no roles)'}")


@user.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable instead.")
@local_option
@url_option
@json_option
@fail_on_errors
def user_disable(name: str, enable: bool, local: bool, url: str | None, as_json: bool) -> None:
    """Disable a user (their tokens stop working), or --enable them again."""
    result = _change(name, local, url, disabled=not enable)
    emit(result, as_json, lambda u: f"{u['name']} {'disabled' if u['disabled'] else 'enabled'}")


@user.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@local_option
@url_option
@json_option
@fail_on_errors
def user_delete(name: str, yes: bool, local: bool, url: str | None, as_json: bool) -> None:
    """Delete a user; their tokens die, and re-creating the name brings none back."""
    if not yes:
        click.confirm(f"delete user {name} and revoke all their tokens?", abort=True, err=True)
    if local:

        async def go(services: Any, who: Any) -> None:
            await services.users.delete(who, name)

        common.local(go)
    else:
        Client.signed_in(url).request("DELETE", _path(name))
    emit({"deleted": name}, as_json, lambda d: f"deleted {d['deleted']}")


def _unlock(name: str, local: bool, url: str | None, as_json: bool) -> None:
    from tokensvc.cli.lockout import clear

    clear(name, local, url, as_json)


@user.command("unlock")
@click.argument("name")
@local_option
@url_option
@json_option
@fail_on_errors
def user_unlock(name: str, local: bool, url: str | None, as_json: bool) -> None:
    """Clear a user's failed-login lockout (the same as `tokensvc lockout clear NAME`)."""
    _unlock(name, local, url, as_json)


@user.command("mfa-reset")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@local_option
@url_option
@json_option
@fail_on_errors
def user_mfa_reset(name: str, yes: bool, local: bool, url: str | None, as_json: bool) -> None:
    """Drop NAME's second factor and recovery codes (a lost phone); audited. The user then logs
    in with the password alone and enrols again."""
    if not yes:
        click.confirm(f"remove the second factor of {name}?", abort=True, err=True)
    if local:

        async def go(services: Any, who: Any) -> bool:
            return bool(await services.mfa.reset(who, name))

        had = common.local(go)
    else:
        had = bool(Client.signed_in(url).request("DELETE", _path(name) + "/mfa")["reset"])
    emit(
        {"user": name, "reset": had},
        as_json,
        lambda r: (
            f"second factor of {r['user']} removed"
            if r["reset"]
            else f"{r['user']} had no second factor"
        ),
    )


COMMANDS = [user]
