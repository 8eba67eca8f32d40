"""`tokensvc token verify` and `token introspect`: ask the service what it makes of a token.

Both send the token to check as the request's data; `verify` sends no login at all (/v1/verify
is for services, unauthenticated), `introspect` sends yours for the server (it needs
`tokens:introspect`).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click

from tokensvc.cli.common import emit, fail_on_errors, iso, json_option, read_value, url_option
from tokensvc.cli.render import shown


@click.command("verify")
@click.argument("token_string", metavar="TOKEN", required=False)
@click.option("--op", "operation", default=None, help="The operation to verify for.")
@click.option("--resource", default=None, help="The resource to verify for.")
@click.option("--audience", default=None, help="The audience (service) to verify for.")
@click.option("--client-ip", default=None, help="The client address to verify for.")
@url_option
@json_option
@fail_on_errors
def verify_command(
    token_string: str | None,
    operation: str | None,
    resource: str | None,
    audience: str | None,
    client_ip: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Ask the service whether TOKEN (or `-`) is valid for a request, as /v1/verify answers it.

    Sends no stored token: the token to check is the request. Exit 1 if it is not valid.
    """
    from tokensvc.cli.client import ApiError, Client

    raw = read_value(token_string, "TOKEN")
    context = {
        name: value
        for name, value in (
            ("operation", operation),
            ("resource", resource),
            ("audience", audience),
            ("client_ip", client_ip),
        )
        if value is not None
    }
    body: dict[str, Any] = {"token": raw}
    if context:
        body["context"] = context
    try:
        result = Client.anonymous(url).request("POST", "/v1/verify", body)
    except ApiError as exc:
        if exc.status not in (401, 403):
            raise
        result = {"valid": False, "reason": exc.message}
    if as_json:
        emit(result, True, str)
    elif result.get("valid"):
        subject, expires = shown(str(result["subject"])), shown(str(result["expires_at"]))
        click.echo(f"valid: subject {subject}, expires {expires}")
    else:
        click.echo(f"Error: not valid: {shown(str(result.get('reason')))}", err=True)
    if not result.get("valid"):
        sys.exit(1)


@click.command("introspect")
@click.argument("token_string", metavar="TOKEN", required=False)
@url_option
@json_option
@fail_on_errors
def introspect_command(token_string: str | None, url: str | None, as_json: bool) -> None:
    """RFC 7662 introspection of TOKEN (or `-`): is it live, whose, until when.

    Needs your login to allow `tokens:introspect` (an admin's does).
    """
    from tokensvc.cli.client import Client

    raw = read_value(token_string, "TOKEN")
    result = Client.signed_in(url).request("POST", "/v1/introspect", form={"token": raw})

    def human(r: dict[str, Any]) -> str:
        if not r.get("active"):
            return "not active (unknown, expired, revoked or not ours)"
        return (
            f"active: subject {shown(str(r['sub']))},"
            f" expires {iso(datetime.fromtimestamp(r['exp'], UTC))}"
            + (f", scope {shown(str(r['scope']))}" if r.get("scope") else "")
        )

    emit(result, as_json, human)
