"""`tokensvc keys …`: root-key metadata and rotation; key-encryption key status and re-seal."""

from __future__ import annotations

from typing import Any

import click

from keystore.reseal import KekUsage, ResealResult
from tokensvc.cli.common import emit, fail_on_errors, iso, local_runtime, operator, run


@click.group()
def keys() -> None:
    """Root keys: list and rotate; key-encryption keys: status and re-seal."""


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
@click.option("--local", is_flag=True, help="Read the configured database directly.")
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@fail_on_errors
def keys_kek_status(local: bool, url: str | None, as_json: bool) -> None:
    """Which key-encryption key seals how many live keys; exit 1 while any is not the current.

    Run it before removing an old KEK from TOKENSVC_KEK_PREVIOUS: with --local it sees the KEKs
    of this environment; over the API, those of the replica that answers.
    """
    if local:

        async def go() -> dict[str, Any]:
            async with local_runtime() as built:
                usage: KekUsage = await built.services.keys.kek_status(operator())
                return usage.as_dict()

        status = run(go())
    else:
        from tokensvc.cli.client import Client

        status = Client.from_saved(url).request("GET", "/v1/kek")
    emit(status, as_json, _kek_table)
    if status["not_current"]:
        raise SystemExit(1)


@keys.command("reseal")
@click.option("--local", is_flag=True, help="Write the configured database directly.")
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@fail_on_errors
def keys_reseal(local: bool, url: str | None, as_json: bool) -> None:
    """Re-seal every live key under the current key-encryption key, while replicas serve.

    Exit 1 if some key was left (sealed under a KEK not configured here, or damaged).
    """
    if local:

        async def go() -> dict[str, Any]:
            async with local_runtime() as built:
                result: ResealResult = await built.services.keys.reseal(operator())
                return result.as_dict()

        result = run(go())
    else:
        from tokensvc.cli.client import Client

        result = Client.from_saved(url).request("POST", "/v1/kek/reseal", {})
    emit(result, as_json, _reseal_text)
    if result["unopened"] or result["damaged"]:
        raise SystemExit(1)


COMMANDS = [keys]
