"""`tokensvc keys …`: root-key metadata, rotation and revocation."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from tokensvc.cli import common
from tokensvc.cli.client import Client
from tokensvc.cli.common import emit, fail_on_errors, json_option, local_option, url_option
from tokensvc.cli.render import key_body, key_table


@click.group()
def keys() -> None:
    """Root keys: list, rotate, revoke."""


@keys.command("list")
@local_option
@url_option
@json_option
@fail_on_errors
def keys_list(local: bool, url: str | None, as_json: bool) -> None:
    """List root keys (metadata only)."""
    if local:

        async def go(services: Any, who: Any) -> list[dict[str, Any]]:
            return [key_body(i) for i in await services.keys.list(who)]

        rows = common.local(go)
    else:
        rows = Client.signed_in(url).request("GET", "/v1/keys")["keys"]
    emit(rows, as_json, key_table)


@keys.command("rotate")
@local_option
@url_option
@json_option
@fail_on_errors
def keys_rotate(local: bool, url: str | None, as_json: bool) -> None:
    """Make a new root key now; new tokens are minted on it."""
    if local:

        async def go(services: Any, who: Any) -> dict[str, Any]:
            return key_body(await services.keys.rotate(who))

        row = common.local(go)
    else:
        row = Client.signed_in(url).request("POST", "/v1/keys/rotate", {})
    emit(row, as_json, lambda r: f"new current key {r['id']}, expires {r['expires_at']}")


@keys.command("revoke")
@click.argument("key_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@local_option
@url_option
@json_option
@fail_on_errors
def keys_revoke(key_id: str, yes: bool, local: bool, url: str | None, as_json: bool) -> None:
    """Delete root key KEY_ID: every token it signed stops working; minting moves on."""
    if not yes:
        click.confirm(f"revoke root key {key_id}? every token it signed dies", abort=True, err=True)
    if local:

        async def go(services: Any, who: Any) -> None:
            await services.keys.revoke(who, key_id)

        common.local(go)
    else:
        Client.signed_in(url).request("POST", f"/v1/keys/{quote(key_id, safe='')}/revoke", {})
    emit({"revoked": key_id}, as_json, lambda r: f"revoked root key {r['revoked']}")


COMMANDS = [keys]
