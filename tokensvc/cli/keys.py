"""`tokensvc keys …`: root-key metadata and rotation."""

from __future__ import annotations

from typing import Any

import click

from tokensvc.cli.common import emit, fail_on_errors, iso, local_runtime, operator, run


@click.group()
def keys() -> None:
    """Root keys: list and rotate."""


def _key_rows(infos: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": i.id,
            "created_at": iso(i.created_at),
            "expires_at": iso(i.expires_at),
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
@fail_on_errors
def keys_list(local: bool, url: str | None, as_json: bool) -> None:
    """List root keys (metadata only)."""
    if local:

        async def go() -> list[dict[str, Any]]:
            async with local_runtime() as built:
                return _key_rows(await built.services.keys.list(operator()))

        rows = run(go())
    else:
        from tokensvc.cli.client import Client

        rows = Client.from_saved(url).request("GET", "/v1/keys")["keys"]
    emit(rows, as_json, _key_table)


@keys.command("rotate")
@click.option("--local", is_flag=True, help="Write the configured database directly.")
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@fail_on_errors
def keys_rotate(local: bool, url: str | None, as_json: bool) -> None:
    """Make a new root key now; new tokens are minted on it."""
    if local:

        async def go() -> dict[str, Any]:
            async with local_runtime() as built:
                return _key_rows([await built.services.keys.rotate(operator())])[0]

        row = run(go())
    else:
        from tokensvc.cli.client import Client

        row = Client.from_saved(url).request("POST", "/v1/keys/rotate", {})
    emit(row, as_json, lambda r: f"new current key {r['id']}, expires {r['expires_at']}")


COMMANDS = [keys]
