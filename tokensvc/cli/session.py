"""`tokensvc login`, `logout`, `whoami` and `auth status|switch|token`: the CLI user's logins.

Logins are kept per server URL and user (tokensvc.cli.credentials); each token goes back only
to the server that issued it.
"""

from __future__ import annotations

import base64
import sys
from datetime import UTC, datetime
from typing import Any

import click

from tokensvc.cli import credentials
from tokensvc.cli.client import ApiError, Client
from tokensvc.cli.common import emit, fail_on_errors, json_option, url_option
from tokensvc.cli.credentials import TOKEN_ENV, parse_time, target_url
from tokensvc.cli.errors import NotLoggedIn, Refused
from tokensvc.errors import TokensvcError
from tokensvc.operations.durations import format_duration

#: The environment variable `tokensvc login` reads a second-factor code from (scripts).
OTP_ENV = "TOKENSVC_OTP"


@click.command()
@click.argument("username", required=False)
@url_option
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--ttl", default=None, help="Ask for a shorter lifetime, e.g. 1h.")
@click.option(
    "--otp",
    envvar=OTP_ENV,
    default=None,
    help=f"A second-factor code (TOTP or recovery code) sent with the password; also {OTP_ENV}.",
)
@json_option
@fail_on_errors
def login(
    username: str | None,
    url: str | None,
    password_stdin: bool,
    ttl: str | None,
    otp: str | None,
    as_json: bool,
) -> None:
    """Exchange a username and password for a token, stored for that server (file mode 0600).

    With a second factor enrolled, the code is asked for after the password (or sent with it:
    --otp / TOKENSVC_OTP, for scripts). Logins to several servers, and as several users, are
    kept side by side: logging in as another user does not replace the first (see `tokensvc
    auth status`).
    """
    client = Client.anonymous(url)
    username = username or click.prompt("Username")
    if ":" in username:  # HTTP Basic would send it as the user before the colon
        raise click.UsageError("a user name cannot contain ':'")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")  # a CRLF file's line too
    else:
        password = click.prompt("Password", hide_input=True)
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    body = {"ttl": ttl} if ttl else {}
    if otp:
        body["otp"] = otp.strip()

    try:
        result = client.request(
            "POST", "/v1/login", body, headers={"Authorization": f"Basic {basic}"}
        )
    except ApiError as exc:
        if exc.challenge is None:
            raise
        # A wrong password and a right one that needs a code answer alike (so the service
        # tells an attacker nothing): ask for the code either way.
        if sys.stdin.isatty():
            code = click.prompt(
                "Second-factor code (authenticator app or recovery code; empty if you have none)",
                default="",
                show_default=False,
                err=True,
            ).strip()
        else:  # a script: the code is the next line of standard input, if there is one
            code = sys.stdin.readline().strip()
        if not code:
            raise
        answer: dict[str, Any] = {"challenge": exc.challenge, "otp": code}
        if ttl:
            answer["ttl"] = ttl
        result = client.request("POST", "/v1/login", answer)

    result = _answer(client, result, subject=str, token=str, expires_at=str)
    subject = result["subject"]
    token = credentials.checked_token(result["token"], f"the token {client.url} answered")
    with credentials.editing() as store:
        store.put(
            client.url,
            subject,
            {
                "token": token,
                "token_id": result.get("token_id"),
                "expires_at": result["expires_at"],
            },
        )
    info = {
        "url": client.url,
        "subject": subject,
        "expires_at": result["expires_at"],
        "mfa": bool(result.get("mfa", False)),
        "stored": str(credentials.credentials_path()),
    }
    emit(
        info,
        as_json,
        lambda i: (
            f"logged in to {i['url']} as {i['subject']} until {i['expires_at']}"
            + (" (with a second factor)" if i["mfa"] else "")
        ),
    )


@click.command()
@url_option
@json_option
@fail_on_errors
def whoami(url: str | None, as_json: bool) -> None:
    """Show who your token for the server belongs to, as the service sees it now."""
    client = Client.signed_in(url)
    assert client.credential is not None  # noqa: S101 - signed_in() always sets one

    result = _answer(
        client,
        client.request("POST", "/v1/verify", {"token": client.credential.token}),
        subject=str,
        expires_at=(str, type(None)),
    )

    info = {"subject": result["subject"], "expires_at": result["expires_at"], "url": client.url}
    emit(info, as_json, lambda i: f"{i['subject']} (token expires {i['expires_at']}) at {i['url']}")


def _answer(client: Client, result: Any, **fields: type | tuple[type, ...]) -> dict[str, Any]:
    """`result` if it is an object with these fields of these types, else a one-line error
    (red team: a server answering `{}` or `[1]` made a traceback)."""
    if not isinstance(result, dict) or not all(
        isinstance(result.get(name), kind) for name, kind in fields.items()
    ):
        raise ApiError(0, "bad_answer", f"{client.url} answered something that is not tokensvc's")
    return result


@click.command()
@click.argument("username", required=False)
@url_option
@click.option(
    "--force",
    is_flag=True,
    help="Forget the stored token even if the server cannot be asked to revoke it.",
)
@fail_on_errors
def logout(username: str | None, url: str | None, force: bool) -> None:
    """Revoke your stored token for the server and forget it.

    USERNAME: which of the server's logins (default: its active one). If the server cannot be
    reached, the token is kept (it still works until it expires) so a later `logout` can revoke
    it; --force forgets it anyway.
    """
    base = target_url(url)
    store = credentials.load()
    found = store.credential(base, username)
    if found is None:
        click.echo(f"not logged in to {base}" + (f" as {username}" if username else ""))
        return
    try:
        # Anonymous on purpose, and to the token's own server: presenting it authorises burning it.
        Client(url=found.url).request("POST", "/v1/tokens/revoke", {"token": found.token})
    except TokensvcError as exc:
        if not force:
            # Forgetting it now would leave a live token no one can name (red team: logout
            # with the server down deleted a working admin token and exited 0).
            raise Refused(
                f"could not revoke the stored token ({exc.message}); it is kept, and works until"
                f" {found.expires_at}: run `tokensvc logout` again when {found.url} answers, or"
                " add --force to forget it anyway"
            ) from None
        click.echo(f"warning: could not revoke the stored token ({exc.message})", err=True)
    with credentials.editing() as fresh:
        fresh.remove(found.url, str(found.user))
    click.echo(f"logged out of {found.url} ({found.user})")


@click.group()
def auth() -> None:
    """Your stored logins: status, switch, token."""


def _status_rows(now: datetime) -> dict[str, Any]:
    store = credentials.load()
    servers = []
    for url in sorted(store.servers):
        server = store.servers[url]
        users = []
        for name in sorted(server["users"]):
            entry = server["users"][name]
            expires = parse_time(entry.get("expires_at"))
            users.append(
                {
                    "user": name,
                    "active": name == server.get("user"),
                    "expires_at": entry.get("expires_at"),
                    "expired": expires is not None and expires <= now,
                }
            )
        servers.append({"url": url, "default": url == store.default, "users": users})
    return {
        "file": str(store.path),
        "default": store.default,
        "token_env": bool(credentials.env_token()),
        "servers": servers,
    }


def _status_text(status: dict[str, Any], now: datetime) -> str:
    lines: list[str] = []
    if status["token_env"]:
        lines.append(f"{TOKEN_ENV} is set: every command sends it (to --url / TOKENSVC_URL)")
    if not status["servers"]:
        lines.append("not logged in to any server (tokensvc login --url URL USER)")
    for server in status["servers"]:
        lines.append(server["url"] + ("  (default)" if server["default"] else ""))
        for u in server["users"]:
            expires = parse_time(u["expires_at"])
            if u["expired"]:
                when = f"expired {u['expires_at']}: log in again"
            elif expires is not None:
                left = (expires - now).total_seconds()
                left = left if left < 60 else left // 60 * 60  # minutes are precise enough
                when = f"token expires {u['expires_at']} (in {format_duration(left)})"
            else:
                when = "expiry unknown"
            mark = "*" if u["active"] else " "
            lines.append(f"  {mark} {u['user']:<20} {when}")
    lines.append(f"stored in {status['file']}")
    return "\n".join(lines)


@auth.command("status")
@json_option
@fail_on_errors
def auth_status(as_json: bool) -> None:
    """Which servers you are logged in to, as whom, until when; * marks each server's active user."""
    now = datetime.now(UTC)
    status = _status_rows(now)
    emit(status, as_json, lambda s: _status_text(s, now))


@auth.command("switch")
@click.argument("username")
@url_option
@fail_on_errors
def auth_switch(username: str, url: str | None) -> None:
    """Make USERNAME the active login for the server, and the server the default."""
    base = target_url(url)
    with credentials.editing() as store:
        server = store.servers.get(base)
        if not server or username not in server["users"]:
            raise NotLoggedIn(
                f"no login of {username} at {base}: run `tokensvc login {username} --url {base}`"
            )
        server["user"] = username
        store.data["default"] = base
    click.echo(f"now acting as {username} at {base}")


@auth.command("token")
@url_option
@fail_on_errors
def auth_token(url: str | None) -> None:
    """Print your token for the server, for another tool (e.g. curl -H "Authorization: Bearer ...")."""
    client = Client.signed_in(url)
    assert client.credential is not None  # noqa: S101 - signed_in() always sets one
    click.echo(client.credential.token)


COMMANDS = [login, whoami, logout, auth]
