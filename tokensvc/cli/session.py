"""`tokensvc login`, `whoami` and `logout`: the stored credentials of a CLI user."""

from __future__ import annotations

import sys

import click

from tokensvc.cli.common import emit, fail_on_errors, service_url
from tokensvc.errors import TokensvcError


@click.command()
@click.argument("username", required=False)
@click.option("--url", default=None, help="Service URL (default TOKENSVC_URL or 127.0.0.1:8080).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--ttl", default=None, help="Ask for a shorter lifetime, e.g. 1h.")
@click.option("--json", "as_json", is_flag=True)
@fail_on_errors
def login(
    username: str | None, url: str | None, password_stdin: bool, ttl: str | None, as_json: bool
) -> None:
    """Exchange a username and password for a token, stored in your config dir (mode 0600)."""
    import base64

    from tokensvc.cli.client import Client, save_credentials

    username = username or click.prompt("Username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True)
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    client = Client(url=service_url(url))
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
    emit(info, as_json, lambda i: f"logged in as {i['subject']} until {i['expires_at']}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@fail_on_errors
def whoami(as_json: bool) -> None:
    """Show who the stored token belongs to, as the service sees it now."""
    from tokensvc.cli.client import Client

    client = Client.from_saved()
    result = client.request("POST", "/v1/verify", {"token": client.token})
    info = {"subject": result["subject"], "expires_at": result["expires_at"], "url": client.url}
    emit(info, as_json, lambda i: f"{i['subject']} (token expires {i['expires_at']}) at {i['url']}")


@click.command()
@fail_on_errors
def logout() -> None:
    """Revoke the stored token (best effort) and forget it."""
    from tokensvc.cli.client import Client, credentials_path, load_credentials

    path = credentials_path()
    saved = load_credentials()
    if saved and isinstance(saved.get("token"), str):
        try:
            # Anonymous on purpose: presenting the token is what authorises burning it.
            Client(url=str(saved.get("url") or service_url(None)).rstrip("/")).request(
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


COMMANDS = [login, whoami, logout]
