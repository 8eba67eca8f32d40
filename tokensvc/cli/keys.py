"""`tokensvc keys …`: root-key metadata, rotation and revocation; key-encryption key status and
re-seal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import click

from tokensvc.cli import common
from tokensvc.cli.client import Client
from tokensvc.cli.common import emit, fail_on_errors, json_option, local_option, url_option
from tokensvc.cli.render import key_body, key_table

if TYPE_CHECKING:
    from keystore.reseal import KekUsage, ResealResult


@click.group()
def keys() -> None:
    """Root keys: list, rotate, revoke; key-encryption keys: status and re-seal."""


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


def _kek_table(status: dict[str, Any]) -> str:
    lines = [f"{'KEK':<10} {'ROLE':<9} {'KEYS':>5}  TABLES"]
    for kek in status["keks"]:
        tables = ", ".join(f"{name} {n}" for name, n in kek["tables"].items()) or "-"
        lines.append(f"{kek['id']:<10} {kek['role']:<9} {kek['keys']:>5}  {tables}")
    left = status["not_current"]
    if left:
        lines.append(
            f"{left} live key(s) not yet under the current KEK {status['current']}:"
            " run `tokensvc keys reseal` before removing the others"
        )
    else:
        lines.append(
            f"every live key is sealed under the current KEK {status['current']};"
            " the others can be removed"
        )
    return "\n".join(lines)


def _reseal_text(result: dict[str, Any]) -> str:
    tables = ", ".join(f"{name} {n}" for name, n in result["tables"].items() if n)
    lines = [
        f"re-sealed {result['resealed']} key(s) under KEK {result['current']}"
        + (f" ({tables})" if tables else "")
    ]
    for kek_id, counts in result["unopened"].items():
        detail = ", ".join(f"{name} {n}" for name, n in counts.items())
        lines.append(f"left under KEK {kek_id}, which this process does not hold: {detail}")
    lines += [f"damaged, left as is: {what}" for what in result["damaged"]]
    return "\n".join(lines)


@keys.command("kek-status")
@local_option
@url_option
@json_option
@fail_on_errors
def keys_kek_status(local: bool, url: str | None, as_json: bool) -> None:
    """Which key-encryption key seals how many live keys; exit 1 while any is not the current.

    Run it before removing an old KEK from TOKENSVC_KEK_PREVIOUS: with --local it sees the KEKs
    of this environment; over the API, those of the replica that answers.
    """
    if local:

        async def go(services: Any, who: Any) -> dict[str, Any]:
            usage: KekUsage = await services.keys.kek_status(who)
            return usage.as_dict()

        status = common.local(go)
    else:
        status = Client.signed_in(url).request("GET", "/v1/kek")
    emit(status, as_json, _kek_table)
    if status["not_current"]:
        raise SystemExit(1)


@keys.command("reseal")
@local_option
@url_option
@json_option
@fail_on_errors
def keys_reseal(local: bool, url: str | None, as_json: bool) -> None:
    """Re-seal every live key under the current key-encryption key, while replicas serve.

    Exit 1 if some key was left (sealed under a KEK not configured here, or damaged).
    """
    if local:

        async def go(services: Any, who: Any) -> dict[str, Any]:
            result: ResealResult = await services.keys.reseal(who)
            return result.as_dict()

        result = common.local(go)
    else:
        result = Client.signed_in(url).request("POST", "/v1/kek/reseal", {})
    emit(result, as_json, _reseal_text)
    if result["unopened"] or result["damaged"]:
        raise SystemExit(1)


COMMANDS = [keys]
