"""`tokensvc audit` and `tokensvc subject revoke-all`: the audit trail, and a subject's tokens."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import click

from tokensvc.cli import common
from tokensvc.cli.client import Client
from tokensvc.cli.common import emit, fail_on_errors, json_option, local_option, url_option
from tokensvc.cli.render import audit_body, audit_table


@click.command()
@click.option("--actor", default=None, help="Only actions by this actor (e.g. admin, local:root).")
@click.option("--action", default=None, help="Only this action (e.g. token_minted, user_deleted).")
@click.option("--target", default=None, help="Only actions on this target.")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="At most this many (1-1000).",
)
@click.option("--before", type=int, default=None, help="Paging cursor: entries older than this id.")
@local_option
@url_option
@json_option
@fail_on_errors
def audit(
    actor: str | None,
    action: str | None,
    target: str | None,
    limit: int,
    before: int | None,
    local: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """Recent admin actions, newest first (--json adds the paging cursor `next_before`)."""
    if local:
        from tokensvc.services.audit import AuditQuery

        query = AuditQuery(limit=limit, before=before, actor=actor, action=action, target=target)

        async def go(services: Any, who: Any) -> dict[str, Any]:
            entries = await services.audit.recent(who, query)
            return {
                "entries": [audit_body(e) for e in entries],
                "next_before": entries[-1].id if len(entries) == limit else None,
            }

        result = common.local(go)
    else:
        params = {
            k: str(v)
            for k, v in (
                ("limit", limit),
                ("before", before),
                ("actor", actor),
                ("action", action),
                ("target", target),
            )
            if v is not None
        }
        result = Client.signed_in(url).request("GET", "/v1/audit?" + urlencode(params))
    emit(result, as_json, lambda r: audit_table(r["entries"]))


@click.group()
def subject() -> None:
    """Subjects (users or anything tokens are minted for): revoke-all."""


@subject.command("revoke-all")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@local_option
@url_option
@json_option
@fail_on_errors
def subject_revoke_all(name: str, yes: bool, local: bool, url: str | None, as_json: bool) -> None:
    """Revoke every token of NAME issued until now; tokens minted later work."""
    if not yes:
        click.confirm(f"revoke every token of {name}?", abort=True, err=True)
    if local:

        async def go(services: Any, who: Any) -> dict[str, Any]:
            return {"subject": name, "generation": await services.tokens.revoke_all(who, name)}

        result = common.local(go)
    else:
        result = Client.signed_in(url).request(
            "POST", f"/v1/subjects/{quote(name, safe='')}/revoke-all", {}
        )
    emit(result, as_json, lambda r: f"every token of {r['subject']} issued until now is revoked")


COMMANDS = [audit, subject]
