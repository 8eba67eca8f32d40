"""`tokensvc lockout status|clear NAME`: an identity's failed-login lockout.

With --local the lockout store is the configured one, so --local needs TOKENSVC_REDIS_URL: the
embedded mode keeps lockouts in the serving process's memory, which no other process can see.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from tokensvc.cli import common
from tokensvc.cli.client import Client
from tokensvc.cli.common import emit, fail_on_errors, json_option, local_option, url_option
from tokensvc.cli.render import lockout_body, lockout_text


@click.group()
def lockout() -> None:
    """Failed-login lockouts: status, clear."""


def _path(name: str) -> str:
    return f"/v1/users/{quote(name, safe='')}/lockout"


def _need_shared_store() -> None:
    if common.config().redis_url is None:
        raise click.UsageError(
            "--local needs TOKENSVC_REDIS_URL: without Redis the lockout state lives in the"
            " server's memory; use the API (drop --local)"
        )


@lockout.command("status")
@click.argument("name")
@local_option
@url_option
@json_option
@fail_on_errors
def lockout_status(name: str, local: bool, url: str | None, as_json: bool) -> None:
    """Show NAME's failed-login counters and locks (any name: unknown ones are counted too)."""
    if local:
        _need_shared_store()

        async def go(services: Any, who: Any) -> dict[str, Any]:
            return lockout_body(name, await services.lockouts.status(who, name))

        status = common.local(go)
    else:
        status = Client.signed_in(url).request("GET", _path(name))
    emit(status, as_json, lockout_text)


def clear(name: str, local: bool, url: str | None, as_json: bool) -> None:
    if local:
        _need_shared_store()

        async def go(services: Any, who: Any) -> None:
            await services.lockouts.clear(who, name)

        common.local(go)
    else:
        Client.signed_in(url).request("DELETE", _path(name))
    emit({"cleared": name}, as_json, lambda c: f"lockout of {c['cleared']} cleared")


@lockout.command("clear")
@click.argument("name")
@local_option
@url_option
@json_option
@fail_on_errors
def lockout_clear(name: str, local: bool, url: str | None, as_json: bool) -> None:
    """Forget NAME's failed logins and locks."""
    clear(name, local, url, as_json)


COMMANDS = [lockout]
