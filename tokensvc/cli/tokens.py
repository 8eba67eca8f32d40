"""`tokensvc token …`: mint, list, inspect, attenuate, revoke, check and discharge tokens."""

from __future__ import annotations

import sys
from typing import Any

import click

from tokensvc.cli.common import (
    emit,
    fail_on_errors,
    iso,
    local_runtime,
    operator,
    run,
    service_url,
)
from tokensvc.cli.discharge import discharge_command
from tokensvc.operations.config import ConfigError, parse_duration


@click.group()
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
@fail_on_errors
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
    if local:
        from tokensvc.bakery.thirdparty import parse_third_party
        from tokensvc.tokens.minting import MintRequest

        if not subject:
            raise click.UsageError("--subject is required with --local")
        try:
            lifetime = parse_duration(ttl) if ttl else None
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--ttl") from None
        asked = MintRequest(
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
        )

        async def go() -> dict[str, Any]:
            async with local_runtime() as built:
                minted = await built.services.tokens.mint(operator(), asked)
            return {
                "token": minted.token,
                "token_id": minted.token_id,
                "subject": minted.subject,
                "key_id": minted.key_id,
                "admin": minted.admin,
                "expires_at": iso(minted.expires_at),
                "kind": minted.kind,
            }

        result = run(go())
    else:
        from tokensvc.cli.client import Client

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
    emit(result, as_json, lambda r: r["token"])


@token.command("inspect")
@click.argument("token_string", metavar="TOKEN", required=False)
@click.option("--json", "as_json", is_flag=True)
@fail_on_errors
def token_inspect(token_string: str | None, as_json: bool) -> None:
    """Show what a token says, offline (reads TOKEN or standard input). Nothing is verified."""
    from tokensvc.macaroons.describe import describe

    raw = token_string or sys.stdin.readline().strip()
    info = describe(raw)

    def human(i: dict[str, Any]) -> str:
        lines = [f"{k}: {v}" for k, v in i.items() if k != "caveats"]
        lines += [f"caveat: {c}" for c in i["caveats"]]
        return "\n".join(lines)

    emit(info, as_json, human)


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
@fail_on_errors
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

    from tokensvc.cli.client import Client

    query: dict[str, str] = {"limit": str(limit)}
    if subject:
        query["subject"] = subject
    if after:
        query["after"] = after
    if include_all:
        query.update(include_revoked="true", include_expired="true")
    result = Client.from_saved(url).request("GET", "/v1/tokens?" + urlencode(query))
    emit(result["tokens"], as_json, _token_rows_table)


@token.command("revoke")
@click.argument("token_id", required=False)
@click.option(
    "--token", "presented", default=None, help="Revoke by presenting the token ('-': stdin)."
)
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True)
@fail_on_errors
def token_revoke(
    token_id: str | None, presented: str | None, url: str | None, as_json: bool
) -> None:
    """Revoke a token by id (admin or its owner), or by presenting it with --token (anyone)."""
    from tokensvc.cli.client import Client, load_credentials

    if (token_id is None) == (presented is None):
        raise click.UsageError("give a TOKEN_ID or --token, not both")
    if presented is not None:
        raw = sys.stdin.readline().strip() if presented == "-" else presented.strip()
        saved = load_credentials() or {}
        base = service_url(url or saved.get("url"))
        Client(url=base).request("POST", "/v1/tokens/revoke", {"token": raw})
        info = {"revoked": "presented token", "note": "the service answers 204 to anything"}
        emit(info, as_json, lambda i: "revocation sent (a genuine token is now revoked)")
        return
    Client.from_saved(url).request("DELETE", f"/v1/tokens/{token_id}")
    emit({"revoked": token_id}, as_json, lambda i: f"revoked {i['revoked']}")


@token.command("attenuate")
@click.argument("token_string", metavar="TOKEN", required=False)
@click.option("--op", "operations", multiple=True, help="Allowed operation (repeatable).")
@click.option("--resource", "resources", multiple=True, help="Allowed resource (repeatable).")
@click.option("--audience", "audiences", multiple=True, help="Service the token is for.")
@click.option("--ttl", default=None, help="Expire this much from now, e.g. 10m.")
@click.option("--json", "as_json", is_flag=True)
@fail_on_errors
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
    from tokensvc.macaroons.attenuation import attenuate

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
    emit({"token": narrowed}, as_json, lambda r: r["token"])


@token.command("check")
@click.argument("token_string", metavar="TOKEN", required=False)
@click.option("--json", "as_json", is_flag=True)
def token_check(token_string: str | None, as_json: bool) -> None:
    """Check a token's format and checksum offline; exit 1 if it is bad. Verifies no signature."""
    from tokensvc.macaroons.attenuation import check_format

    raw = token_string or sys.stdin.readline().strip()
    result = check_format(raw)
    emit(result, as_json, lambda r: "ok" if r["ok"] else f"bad token: {r['problem']}")
    if not result["ok"]:
        sys.exit(1)


token.add_command(discharge_command)

COMMANDS = [token]
