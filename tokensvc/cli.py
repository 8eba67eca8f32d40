"""The `tokensvc` command line: run and operate the service, and use it as a client.

Human-readable output by default, `--json` for scripts; a non-zero exit status on any failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

import click

from tokensvc.cli_errors import fail_on_errors
from tokensvc.config import Config, ConfigError, parse_duration
from tokensvc.errors import TokensvcError

T = TypeVar("T")


def _run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human(data))


_fail_on_errors = fail_on_errors


@click.group()
@click.version_option(package_name="tokensvc")
def main() -> None:
    """tokensvc: macaroon tokens, root keys, passwords and lockout."""


# ---- serve / migrate -----------------------------------------------------------------------------


@main.command()
@click.option("--host", default=None, help="Address to bind (default TOKENSVC_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default TOKENSVC_PORT or 8080).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes sharing the port (SO_REUSEPORT); more than 1 needs TOKENSVC_REDIS_URL.",
)
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Run the HTTP service.

    With TOKENSVC_REDIS_URL set, the worker(s) answer /v1/verify and every other connection goes
    to one more, lower-priority process: the lane (TOKENSVC_VERIFY_PROCESS).
    """
    from keystore import KeystoreError
    from tokensvc.server import run

    config = _config()
    try:
        run(config, host=host or config.host, port=port or config.port, workers=workers)
    except TokensvcError as exc:
        raise click.ClickException(exc.message) from None
    except KeystoreError as exc:
        raise click.ClickException(f"keystore: {exc}") from None


@main.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    from keystore import create_engine
    from tokensvc.migrate import upgrade
    from tokensvc.web.app import prepare_embedded_database

    config = _config()

    async def go() -> None:
        if config.embedded:
            prepare_embedded_database(config)
        engine = create_engine(config.effective_database_url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    _run(go())
    click.echo(f"database at {config.public_database_url} is up to date")


# ---- local operator access (break-glass, straight against the database) ---------------------------


class _Local:
    """The keyring and minter over the configured database, for operator commands."""

    def __init__(self, config: Config) -> None:
        self.config = config

    async def __aenter__(self) -> Self:
        from keystore import KeyEncryptionKey, Keyring, RotationPolicy, create_engine
        from tokensvc.migrate import upgrade
        from tokensvc.minting import Minter
        from tokensvc.web.app import prepare_embedded_database

        config = self.config
        if config.embedded:
            prepare_embedded_database(config)
        self.engine = create_engine(config.effective_database_url)
        await upgrade(self.engine)
        kek = KeyEncryptionKey.load(
            value=config.kek,
            file=config.kek_file,
            data_dir=config.data_dir if config.embedded else None,
        )
        clock = lambda: datetime.now(UTC)
        self.keyring = Keyring(
            self.engine,
            kek=kek,
            policy=RotationPolicy(
                lifetime=config.key_lifetime, generate_interval=config.key_generate_interval
            ),
            clock=clock,
        )
        from keystore.discharger_key import load_discharger_key
        from tokensvc.bakery.thirdparty import ThirdPartyLocator
        from tokensvc.generations import SubjectGenerations
        from tokensvc.subjects import SubjectStore
        from tokensvc.users import UserStore

        self.users = UserStore(self.engine)
        self.generations = SubjectGenerations(SubjectStore(self.engine))
        self.locator = ThirdPartyLocator(config.bakery)
        self.minter = Minter(
            self.keyring,
            generations=self.generations,
            location=config.location,
            clock=clock,
            third_parties=self.locator,
            discharger_key=await load_discharger_key(self.engine, kek=kek, clock=clock),
        )
        from keystore.service_keys import ServiceKeys
        from tokensvc.registry import TokenRegistry

        self.registry = TokenRegistry(self.engine)
        self.minter.attach(
            self.registry,
            service_keys=ServiceKeys(self.engine, kek=kek, clock=clock),
            max_service_ttl=config.max_service_token_ttl,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.locator.close()
        await self.engine.dispose()


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- token -----------------------------------------------------------------------------------------


@main.group()
def token() -> None:
    """Mint, inspect and check tokens."""


@token.command("mint")
@click.option("--subject", help="Who the token is for (default: the caller).")
@click.option("--ttl", default=None, help="Lifetime, e.g. 15m, 1h, 12h (default 1h).")
@click.option("--op", "operations", multiple=True, help="Allowed operation (repeatable).")
@click.option("--resource", "resources", multiple=True, help="Allowed resource; `prefix*` allowed.")
@click.option("--audience", "audiences", multiple=True, help="Service the token is for.")
@click.option("--cidr", "cidrs", multiple=True, help="Client network the token is valid from.")
@click.option("--admin", is_flag=True, help="Make the token admin-capable.")
@click.option(
    "--service", is_flag=True, help="Long-lived service token on its own root key (ttl up to 365d)."
)
@click.option("--description", default="", help="What the token is for.")
@click.option(
    "--third-party",
    "third_party",
    type=(str, str),
    multiple=True,
    metavar="LOCATION CONDITION",
    help="Require a discharge from a third party (repeatable).",
)
@click.option("--local", is_flag=True, help="Mint straight against the configured database.")
@click.option("--url", default=None, help="Service URL (default: the logged-in one).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_fail_on_errors
def token_mint(
    subject: str | None,
    ttl: str | None,
    operations: tuple[str, ...],
    resources: tuple[str, ...],
    audiences: tuple[str, ...],
    cidrs: tuple[str, ...],
    admin: bool,
    service: bool,
    description: str,
    third_party: tuple[tuple[str, str], ...],
    local: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """Mint a scoped token (through the API, or with --local as an operator)."""
    third_party_body = [{"location": loc, "condition": cond} for loc, cond in third_party]
    config = _config()
    if local:
        from tokensvc.bakery.thirdparty import parse_third_party
        from tokensvc.minting import MintRequest

        if not subject:
            raise click.UsageError("--subject is required with --local")
        try:
            lifetime = parse_duration(ttl) if ttl else config.default_token_ttl
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--ttl") from None

        async def go() -> dict[str, Any]:
            async with _Local(config) as local_ops:
                minted = await local_ops.minter.mint(
                    MintRequest(
                        subject=subject,
                        ttl=lifetime,
                        operations=operations,
                        resources=resources,
                        audiences=audiences,
                        cidrs=cidrs,
                        admin=admin,
                        third_party=parse_third_party(third_party_body or None),
                        description=description,
                        service=service,
                    ),
                    created_by="(local operator)",
                )
            return {
                "token": minted.token,
                "token_id": minted.token_id,
                "subject": minted.subject,
                "key_id": minted.key_id,
                "admin": minted.admin,
                "expires_at": _iso(minted.expires_at),
                "kind": minted.kind,
            }

        result = _run(go())
    else:
        from tokensvc.client import Client

        body: dict[str, Any] = {
            "operations": list(operations),
            "resources": list(resources),
            "audience": list(audiences),
            "cidrs": list(cidrs),
            "admin": admin,
            "description": description,
        }
        if service:
            body["service"] = True
        if third_party_body:
            body["third_party"] = third_party_body
        if subject:
            body["subject"] = subject
        if ttl:
            body["ttl"] = ttl
        result = Client.from_saved(url).request("POST", "/v1/tokens", body)
    _emit(result, as_json, lambda r: r["token"])


@token.command("inspect")
@click.argument("token_string", metavar="TOKEN", required=False)
@click.option("--json", "as_json", is_flag=True)
@_fail_on_errors
def token_inspect(token_string: str | None, as_json: bool) -> None:
    """Show what a token says, offline (reads TOKEN or standard input). Nothing is verified."""
    from tokensvc.describe import describe

    raw = token_string or sys.stdin.readline().strip()
    info = describe(raw)

    def human(i: dict[str, Any]) -> str:
        lines = [f"{k}: {v}" for k, v in i.items() if k != "caveats"]
        lines += [f"caveat: {c}" for c in i["caveats"]]
        return "\n".join(lines)

    _emit(info, as_json, human)


def _token_rows_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no tokens)"
    lines = [
        f"{'TOKEN ID':<32} {'SUBJECT':<16} {'KIND':<8} {'STATUS':<8} {'EXPIRES':<20} LAST USED"
    ]
    lines += [
        f"{r['token_id']:<32} {r['subject'][:16]:<16} {r['kind']:<8} {r['status']:<8}"
        f" {r['expires_at'] or '-':<20} {r['last_used_at'] or '-'}"
        + (f"  # {r['description'][:40]}" if r.get("description") else "")
        for r in rows
    ]
    return "\n".join(lines)


@token.command("list")
@click.option("--subject", default=None, help="Only this subject's tokens.")
@click.option("--all", "include_all", is_flag=True, help="Include revoked and expired tokens.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--after", default=None, help="Paging cursor: list after this token id.")
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@_fail_on_errors
def token_list(
    subject: str | None,
    include_all: bool,
    limit: int,
    after: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """List registered tokens (metadata only, never a token)."""
    from urllib.parse import urlencode

    from tokensvc.client import Client

    query: dict[str, str] = {"limit": str(limit)}
    if subject:
        query["subject"] = subject
    if after:
        query["after"] = after
    if include_all:
        query.update(include_revoked="true", include_expired="true")
    result = Client.from_saved(url).request("GET", "/v1/tokens?" + urlencode(query))
    _emit(result["tokens"], as_json, _token_rows_table)


@token.command("revoke")
@click.argument("token_id", required=False)
@click.option(
    "--token", "presented", default=None, help="Revoke by presenting the token ('-': stdin)."
)
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@_fail_on_errors
def token_revoke(
    token_id: str | None, presented: str | None, url: str | None, as_json: bool
) -> None:
    """Revoke a token by id (admin or its owner), or by presenting it with --token (anyone)."""
    from tokensvc.client import Client, load_credentials

    if (token_id is None) == (presented is None):
        raise click.UsageError("give a TOKEN_ID or --token, not both")
    if presented is not None:
        raw = sys.stdin.readline().strip() if presented == "-" else presented.strip()
        saved = load_credentials() or {}
        base = _service_url(url or saved.get("url"))
        Client(url=base).request("POST", "/v1/tokens/revoke", {"token": raw})
        info = {"revoked": "presented token", "note": "the service answers 204 to anything"}
        _emit(info, as_json, lambda i: "revocation sent (a genuine token is now revoked)")
        return
    Client.from_saved(url).request("DELETE", f"/v1/tokens/{token_id}")
    _emit({"revoked": token_id}, as_json, lambda i: f"revoked {i['revoked']}")


@token.command("attenuate")
@click.argument("token_string", metavar="TOKEN", required=False)
@click.option("--op", "operations", multiple=True, help="Allowed operation (repeatable).")
@click.option("--resource", "resources", multiple=True, help="Allowed resource (repeatable).")
@click.option("--audience", "audiences", multiple=True, help="Service the token is for.")
@click.option("--ttl", default=None, help="Expire this much from now, e.g. 10m.")
@click.option("--json", "as_json", is_flag=True)
@_fail_on_errors
def token_attenuate(
    token_string: str | None,
    operations: tuple[str, ...],
    resources: tuple[str, ...],
    audiences: tuple[str, ...],
    ttl: str | None,
    as_json: bool,
) -> None:
    """Narrow a token offline: append first-party caveats (no key, no network needed)."""
    import time

    from caveats import Audience, Expiry, Operations, Resources, encode
    from tokensvc.attenuation import attenuate

    raw = token_string or sys.stdin.readline().strip()
    predicates = []
    if operations:
        predicates.append(encode(Operations(tuple(operations))))
    if resources:
        predicates.append(encode(Resources(tuple(resources))))
    if audiences:
        predicates.append(encode(Audience(tuple(audiences))))
    if ttl:
        try:
            seconds = parse_duration(ttl).total_seconds()
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--ttl") from None
        predicates.append(encode(Expiry(int(time.time() + seconds))))
    if not predicates:
        raise click.UsageError("nothing to add: give --op, --resource, --audience or --ttl")
    narrowed = attenuate(raw, predicates)
    _emit({"token": narrowed}, as_json, lambda r: r["token"])


@token.command("check")
@click.argument("token_string", metavar="TOKEN", required=False)
@click.option("--json", "as_json", is_flag=True)
def token_check(token_string: str | None, as_json: bool) -> None:
    """Check a token's format and checksum offline; exit 1 if it is bad. Verifies no signature."""
    from tokensvc.attenuation import check_format

    raw = token_string or sys.stdin.readline().strip()
    result = check_format(raw)
    _emit(result, as_json, lambda r: "ok" if r["ok"] else f"bad token: {r['problem']}")
    if not result["ok"]:
        sys.exit(1)


def _attach_bakery_commands() -> None:
    from tokensvc.bakery.cli import discharge_command

    token.add_command(discharge_command)


_attach_bakery_commands()


# ---- keys ------------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """Root keys: list and rotate."""


def _key_rows(infos: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": i.id,
            "created_at": _iso(i.created_at),
            "expires_at": _iso(i.expires_at),
            "current": i.current,
        }
        for i in infos
    ]


def _key_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'ID':<24} {'CREATED':<21} {'EXPIRES':<21} CURRENT"]
    lines += [
        f"{r['id']:<24} {r['created_at']:<21} {r['expires_at']:<21} {'*' if r['current'] else ''}"
        for r in rows
    ]
    return "\n".join(lines)


@keys.command("list")
@click.option("--local", is_flag=True, help="Read the configured database directly.")
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@_fail_on_errors
def keys_list(local: bool, url: str | None, as_json: bool) -> None:
    """List root keys (metadata only)."""
    if local:

        async def go() -> list[dict[str, Any]]:
            async with _Local(_config()) as ops:
                return _key_rows(await ops.keyring.list())

        rows = _run(go())
    else:
        from tokensvc.client import Client

        rows = Client.from_saved(url).request("GET", "/v1/keys")["keys"]
    _emit(rows, as_json, _key_table)


@keys.command("rotate")
@click.option("--local", is_flag=True, help="Write the configured database directly.")
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@_fail_on_errors
def keys_rotate(local: bool, url: str | None, as_json: bool) -> None:
    """Make a new root key now; new tokens are minted on it."""
    if local:

        async def go() -> dict[str, Any]:
            async with _Local(_config()) as ops:
                key = await ops.keyring.rotate()
                return next(r for r in _key_rows(await ops.keyring.list()) if r["id"] == key.id)

        row = _run(go())
    else:
        from tokensvc.client import Client

        row = Client.from_saved(url).request("POST", "/v1/keys/rotate", {})
    _emit(row, as_json, lambda r: f"new current key {r['id']}, expires {r['expires_at']}")


# ---- login / whoami / logout ------------------------------------------------------------------------


def _service_url(url: str | None) -> str:
    from tokensvc.client import DEFAULT_URL

    return (url or os.environ.get("TOKENSVC_URL") or DEFAULT_URL).rstrip("/")


@main.command()
@click.argument("username", required=False)
@click.option("--url", default=None, help="Service URL (default TOKENSVC_URL or 127.0.0.1:8080).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--ttl", default=None, help="Ask for a shorter lifetime, e.g. 1h.")
@click.option("--json", "as_json", is_flag=True)
@_fail_on_errors
def login(
    username: str | None, url: str | None, password_stdin: bool, ttl: str | None, as_json: bool
) -> None:
    """Exchange a username and password for a token, stored in your config dir (mode 0600)."""
    import base64

    from tokensvc.client import Client, save_credentials

    username = username or click.prompt("Username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True)
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    client = Client(url=_service_url(url))
    body = {"ttl": ttl} if ttl else {}
    result = client.request("POST", "/v1/login", body, headers={"Authorization": f"Basic {basic}"})
    path = save_credentials(
        {
            "url": client.url,
            "token": result["token"],
            "subject": result["subject"],
            "expires_at": result["expires_at"],
        }
    )
    info = {"subject": result["subject"], "expires_at": result["expires_at"], "stored": str(path)}
    _emit(info, as_json, lambda i: f"logged in as {i['subject']} until {i['expires_at']}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@_fail_on_errors
def whoami(as_json: bool) -> None:
    """Show who the stored token belongs to, as the service sees it now."""
    from tokensvc.client import Client

    client = Client.from_saved()
    result = client.request("POST", "/v1/verify", {"token": client.token})
    info = {"subject": result["subject"], "expires_at": result["expires_at"], "url": client.url}
    _emit(
        info, as_json, lambda i: f"{i['subject']} (token expires {i['expires_at']}) at {i['url']}"
    )


@main.command()
@_fail_on_errors
def logout() -> None:
    """Revoke the stored token (best effort) and forget it."""
    from tokensvc.client import Client, credentials_path, load_credentials

    path = credentials_path()
    saved = load_credentials()
    if saved and isinstance(saved.get("token"), str):
        try:
            # Anonymous on purpose: presenting the token is what authorises burning it.
            Client(url=str(saved.get("url") or _service_url(None)).rstrip("/")).request(
                "POST", "/v1/tokens/revoke", {"token": saved["token"]}
            )
        except TokensvcError as exc:
            click.echo(f"warning: could not revoke the stored token ({exc.message})", err=True)
    try:
        path.unlink()
    except FileNotFoundError:
        click.echo("not logged in")
        return
    click.echo("logged out")


# ---- users -----------------------------------------------------------------------------------------


@main.group()
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
@_fail_on_errors
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
        from tokensvc.passwords import PasswordHasher, profile_by_name

        config = _config()

        async def go() -> dict[str, Any]:
            async with _Local(config) as ops:
                hasher = PasswordHasher(
                    profile=profile_by_name(config.password_profile), pepper=config.pepper
                )
                try:
                    created = await ops.users.create(
                        name, password_hash=await hasher.hash(password), roles=all_roles
                    )
                finally:
                    hasher.close()
                return {"name": created.name, "roles": list(created.roles), "disabled": False}

        result = _run(go())
    else:
        from tokensvc.client import Client

        result = Client.from_saved(url).request(
            "POST", "/v1/users", {"name": name, "password": password, "roles": all_roles}
        )
    _emit(result, as_json, lambda u: "created " + _user_line(u))


@user.command("list")
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@_fail_on_errors
def user_list(url: str | None, as_json: bool) -> None:
    """List users."""
    from tokensvc.client import Client

    users = Client.from_saved(url).request("GET", "/v1/users")["users"]
    _emit(users, as_json, lambda us: "\n".join(_user_line(u) for u in us) or "(no users)")


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True)
@click.option("--url", default=None)
@_fail_on_errors
def user_passwd(name: str, password_stdin: bool, url: str | None) -> None:
    """Set a user's password; their existing tokens stop working."""
    from tokensvc.client import Client

    password = _new_password(password_stdin)
    Client.from_saved(url).request("PATCH", f"/v1/users/{name}", {"password": password})
    click.echo(f"password of {name} changed; their earlier tokens are revoked")


@user.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable instead.")
@click.option("--url", default=None)
@_fail_on_errors
def user_disable(name: str, enable: bool, url: str | None) -> None:
    """Disable a user (their tokens stop working), or --enable them again."""
    from tokensvc.client import Client

    Client.from_saved(url).request("PATCH", f"/v1/users/{name}", {"disabled": not enable})
    click.echo(f"{name} {'enabled' if enable else 'disabled'}")


@user.command("unlock")
@click.argument("name")
@click.option("--url", default=None)
@_fail_on_errors
def user_unlock(name: str, url: str | None) -> None:
    """Clear a user's failed-login lockout."""
    from tokensvc.client import Client

    Client.from_saved(url).request("DELETE", f"/v1/users/{name}/lockout")
    click.echo(f"lockout of {name} cleared")


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
