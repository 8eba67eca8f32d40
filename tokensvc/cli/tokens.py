"""`tokensvc token …`: mint, list, inspect, attenuate, revoke, check and discharge tokens."""

from __future__ import annotations

import sys
from typing import Any

import click

from tokensvc.cli import common
from tokensvc.cli.common import (
    emit,
    fail_on_errors,
    iso,
    json_option,
    local_option,
    local_runtime,
    operator,
    read_value,
    run,
    url_option,
)
from tokensvc.cli.discharge import discharge_command
from tokensvc.cli.errors import Refused
from tokensvc.cli.render import record_body, shown, token_table
from tokensvc.cli.verification import introspect_command, verify_command
from tokensvc.operations.config import ConfigError, parse_duration
from tokensvc.operations.durations import format_duration


@click.group()
def token() -> None:
    """Tokens: mint, list, revoke, inspect, attenuate, check, verify, introspect, discharge."""


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
@local_option
@url_option
@json_option
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
        result = Client.signed_in(url).request("POST", "/v1/tokens", body)
    emit(result, as_json, lambda r: r["token"])


@token.command("inspect")
@click.argument("token_string", metavar="TOKEN", required=False)
@json_option
@fail_on_errors
def token_inspect(token_string: str | None, as_json: bool) -> None:
    """Show what a token says, offline (TOKEN, or `-` for standard input). Nothing is verified."""
    from tokensvc.macaroons.describe import caveat_text, describe

    info = describe(read_value(token_string, "TOKEN"))

    # The token may be anyone's (one to be judged): whatever its holder wrote in a caveat or
    # its location is escaped, so it can neither drive the terminal nor forge a line (red team).
    def human(i: dict[str, Any]) -> str:
        lines = [
            f"{k}: {str(v).lower() if isinstance(v, bool) else shown(str(v))}"
            for k, v in i.items()
            if k != "caveats"
        ]
        lines += [f"caveat: {shown(caveat_text(c))}" for c in i["caveats"]]
        return "\n".join(lines)

    emit(info, as_json, human)


@token.command("list")
@click.option("--subject", default=None, help="Only this subject's tokens.")
@click.option("--all", "include_all", is_flag=True, help="Include revoked and expired tokens.")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="At most this many (1-1000).",
)
@click.option("--after", default=None, help="Paging cursor: list after this token id.")
@local_option
@url_option
@json_option
@fail_on_errors
def token_list(
    subject: str | None,
    include_all: bool,
    limit: int,
    after: str | None,
    local: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """List registered tokens (metadata only, never a token)."""
    if local:
        from datetime import UTC, datetime

        from tokensvc.services.tokens import TokenFilter

        query = TokenFilter(
            subject=subject,
            include_revoked=include_all,
            include_expired=include_all,
            after=after,
            limit=limit,
        )

        async def go(services: Any, who: Any) -> list[dict[str, Any]]:
            now = datetime.now(UTC)
            return [record_body(r, now=now) for r in await services.tokens.list(who, query)]

        rows = common.local(go)
    else:
        from urllib.parse import urlencode

        from tokensvc.cli.client import Client

        params: dict[str, str] = {"limit": str(limit)}
        if subject:
            params["subject"] = subject
        if after:
            params["after"] = after
        if include_all:
            params.update(include_revoked="true", include_expired="true")
        rows = Client.signed_in(url).request("GET", "/v1/tokens?" + urlencode(params))["tokens"]
    emit(rows, as_json, token_table)


@token.command("revoke")
@click.argument("token_id", required=False)
@click.option(
    "--token", "presented", default=None, help="Revoke by presenting the token ('-': stdin)."
)
@local_option
@url_option
@json_option
@fail_on_errors
def token_revoke(
    token_id: str | None, presented: str | None, local: bool, url: str | None, as_json: bool
) -> None:
    """Revoke a token by TOKEN_ID (admin or its owner), or by presenting it with --token (anyone)."""
    from urllib.parse import quote

    from tokensvc.cli.client import Client

    if token_id is None and presented is None:
        raise click.UsageError("give the TOKEN_ID to revoke, or --token TOKEN (`-`: stdin)")
    if token_id is not None and presented is not None:
        raise click.UsageError("give a TOKEN_ID or --token, not both")
    if presented is not None:
        raw = read_value(presented, "--token")
        if local:

            async def burn(services: Any, who: Any) -> None:
                await services.tokens.revoke_presented(raw, operator=who)

            common.local(burn)
        else:
            # Anonymous on purpose: presenting the token is what authorises burning it.
            Client.anonymous(url).request("POST", "/v1/tokens/revoke", {"token": raw})
        info = {"revoked": "presented token", "note": "the service answers 204 to anything"}
        emit(info, as_json, lambda i: "revocation sent (a genuine token is now revoked)")
        return
    assert token_id is not None  # noqa: S101 - checked above
    if local:

        async def by_id(services: Any, who: Any) -> None:
            await services.tokens.revoke(who, token_id)

        common.local(by_id)
    else:
        Client.signed_in(url).request("DELETE", f"/v1/tokens/{quote(token_id, safe='')}")
    emit({"revoked": token_id}, as_json, lambda i: f"revoked {i['revoked']}")


@token.command("attenuate")
@click.argument("token_string", metavar="TOKEN", required=False)
@click.option("--op", "operations", multiple=True, help="Allowed operation (repeatable).")
@click.option("--resource", "resources", multiple=True, help="Allowed resource (repeatable).")
@click.option("--audience", "audiences", multiple=True, help="Service the token is for.")
@click.option("--ttl", default=None, help="Expire this much from now, e.g. 10m.")
@json_option
@fail_on_errors
def token_attenuate(
    token_string: str | None,
    operations: tuple[str, ...],
    resources: tuple[str, ...],
    audiences: tuple[str, ...],
    ttl: str | None,
    as_json: bool,
) -> None:
    """Narrow a token offline (TOKEN or `-`): append caveats; no key, no network needed.

    A --ttl ending after the token's own expiry would add a caveat that restricts nothing: it
    is left out with a warning (and refused when it is all there was to add).
    """
    import time
    from datetime import UTC, datetime

    from caveats import Audience, CaveatError, Expiry, Operations, Resources, encode
    from tokensvc.macaroons.attenuation import attenuate
    from tokensvc.macaroons.describe import earliest_expiry

    raw = read_value(token_string, "TOKEN")
    predicates = []
    try:
        if operations:
            predicates.append(encode(Operations(tuple(operations))))
        if resources:
            predicates.append(encode(Resources(tuple(resources))))
        if audiences:
            predicates.append(encode(Audience(tuple(audiences))))
    except CaveatError as exc:  # an empty or otherwise impossible value (red team: a traceback)
        raise click.UsageError(f"cannot add that caveat: {exc}") from None
    if ttl:
        try:
            seconds = parse_duration(ttl).total_seconds()
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--ttl") from None
        now = time.time()
        own = earliest_expiry(raw)
        if own is not None and now + seconds >= own:
            why = (
                f"--ttl {ttl} ends after the token's own expiry"
                f" ({iso(datetime.fromtimestamp(own, UTC))}, in {format_duration(max(0.0, own - now))}),"
                " so it would restrict nothing"
            )
            if not predicates:
                raise Refused(why + ": give a shorter --ttl")
            click.echo(f"warning: {why}; not added", err=True)
        else:
            predicates.append(encode(Expiry(int(now + seconds))))
    if not predicates:
        raise click.UsageError("nothing to add: give --op, --resource, --audience or --ttl")
    narrowed = attenuate(raw, predicates)
    emit({"token": narrowed}, as_json, lambda r: r["token"])


@token.command("check")
@click.argument("token_string", metavar="TOKEN", required=False)
@json_option
def token_check(token_string: str | None, as_json: bool) -> None:
    """Check a token's format and checksum offline (TOKEN or `-`); exit 1 if it is bad.

    Verifies no signature. The verdict goes to standard output with --json, else a bad token's
    problem goes to standard error.
    """
    from tokensvc.macaroons.attenuation import check_format

    result = check_format(read_value(token_string, "TOKEN"))
    if as_json:
        emit(result, as_json, str)
    elif result["ok"]:
        click.echo("ok")
    else:
        click.echo(f"Error: bad token: {result['problem']}", err=True)
    if not result["ok"]:
        sys.exit(1)


token.add_command(discharge_command)
token.add_command(verify_command)
token.add_command(introspect_command)

COMMANDS = [token]
