"""`tokensvc token discharge`: get the discharges a token needs, bind them, and verify the bundle.

Plain HTTP (the standard library), speaking the bakery's discharge protocol, so the CLI needs no
bakery package: each third-party caveat (and any caveat of a discharge, breadth first, bounded)
is sent to `{location}/discharge` as a bakery client sends it; each answer is bound to the token
as pymacaroons' `prepare_for_request` binds it; the token and its discharges go to /v1/verify.

Credentials are sent only to tokensvc's own discharger (a location under the service URL): the
stored login token as a bearer token, or HTTP Basic with `--user`. Other dischargers get nothing,
so a token naming a hostile location cannot harvest them.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, Final

import click

from tokensvc.bakery.codec import LATEST_VERSION
from tokensvc.bakery.jsonmacaroon import from_bakery_json
from tokensvc.cli.common import json_option, url_option
from tokensvc.cli.errors import fail_on_errors
from tokensvc.errors import TokensvcError
from tokensvc.macaroons import chain
from tokensvc.macaroons.macaroon import Macaroon, serialize_v2
from tokensvc.macaroons.tokenformat import decode_token

MAX_DISCHARGES: Final = 16
MAX_RESPONSE_BYTES: Final = 1 << 20
TIMEOUT_SECONDS: Final = 30

# (url, form fields, headers) → (HTTP status, body)
Post = Callable[[str, dict[str, str], dict[str, str]], tuple[int, bytes]]


class DischargeFailed(TokensvcError):
    """A discharger refused, or answered something that is not a discharge."""

    code = "discharge_failed"


def http_post_form(url: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, bytes]:
    """POST an urlencoded form with urllib; the status and (bounded) body, errors included."""
    data = urllib.parse.urlencode(form).encode("ascii")
    request = urllib.request.Request(  # noqa: S310 - the caller allows only http(s) locations
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as resp:  # noqa: S310 - the caller allows only http(s) locations
            return resp.status, resp.read(MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(MAX_RESPONSE_BYTES)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DischargeFailed(f"cannot reach {url}: {reason}") from None


def _refusal(location: str, status: int, body: bytes) -> DischargeFailed:
    try:
        data = json.loads(body)
        message = data.get("Message") or data.get("message") or data["error"]["message"]
    except (ValueError, KeyError, TypeError, AttributeError):
        message = f"HTTP {status}"
    return DischargeFailed(f"the discharger at {location} refused: {str(message)[:500]}")


def acquire_discharges(
    token: Macaroon,
    *,
    post: Post,
    headers_for: Callable[[str], dict[str, str]],
    max_discharges: int = MAX_DISCHARGES,
) -> list[Macaroon]:
    """Discharges for every third-party caveat of `token` (and of those discharges), bound to it."""
    pending = [c for c in token.caveats if c.vid is not None]
    discharges: list[Macaroon] = []
    while pending:
        caveat = pending.pop(0)
        if len(discharges) >= max_discharges:
            raise DischargeFailed(f"more than {max_discharges} discharges needed")
        location = (caveat.location or b"").decode("utf-8", "replace").rstrip("/")
        if not location.startswith(("https://", "http://")):
            raise DischargeFailed(f"third-party location {location[:200]!r} is not an HTTP URL")
        form: dict[str, str] = {}
        try:
            form["id"] = caveat.cid.decode("utf-8")
        except UnicodeDecodeError:
            form["id64"] = base64.b64encode(caveat.cid).decode("ascii")
        headers = {"Bakery-Protocol-Version": str(LATEST_VERSION), **headers_for(location)}

        status, body = post(location + "/discharge", form, headers)

        if status != 200:
            raise _refusal(location, status, body)
        try:
            discharge = from_bakery_json(json.loads(body)["Macaroon"])
        except (ValueError, KeyError, TypeError, TokensvcError):
            raise DischargeFailed(f"the discharger at {location} sent no discharge") from None
        if discharge.identifier != caveat.cid:
            raise DischargeFailed(f"the discharger at {location} answered for another caveat")
        discharges.append(
            Macaroon(
                discharge.identifier,
                discharge.caveats,
                chain.bind_signature(token.signature, discharge.signature),
                discharge.location,
            )
        )
        pending.extend(c for c in discharge.caveats if c.vid is not None)
    return discharges


def encode_discharge(macaroon: Macaroon) -> str:
    """A discharge as /v1/verify takes it: base64url of binary v2, as pymacaroons serializes."""
    return base64.urlsafe_b64encode(serialize_v2(macaroon)).rstrip(b"=").decode("ascii")


def credentials_for(
    service_url: str, *, basic: tuple[str, str] | None, token: str | None
) -> Callable[[str], dict[str, str]]:
    """Authorization headers for tokensvc's own discharger; nothing for any other location."""
    base = service_url.rstrip("/")

    def headers(location: str) -> dict[str, str]:
        if location != base and not location.startswith(base + "/"):
            return {}
        if basic is not None:
            raw = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode("ascii")
            return {"Authorization": f"Basic {raw}"}
        if token:
            return {"Authorization": f"Bearer {token}"}
        return {}

    return headers


_fail_on_errors = fail_on_errors


@click.command("discharge")
@click.argument("token_string", metavar="[TOKEN]", required=False)
@url_option
@click.option("--user", default=None, help="Authenticate to tokensvc's discharger as USER (Basic).")
@click.option("--password-stdin", is_flag=True, help="Read --user's password from standard input.")
@click.option("--op", "operation", default=None, help="Verify for this operation.")
@click.option("--resource", default=None, help="Verify for this resource.")
@click.option("--audience", default=None, help="Verify for this audience.")
@click.option("--no-verify", is_flag=True, help="Only print the bound discharges.")
@json_option
@_fail_on_errors
def discharge_command(
    token_string: str | None,
    url: str | None,
    user: str | None,
    password_stdin: bool,
    operation: str | None,
    resource: str | None,
    audience: str | None,
    no_verify: bool,
    as_json: bool,
) -> None:
    """Get the discharges TOKEN (default: your stored token) needs, and verify the bundle."""
    from tokensvc.cli.client import Client
    from tokensvc.cli.credentials import credential_for, target_url

    service_url = target_url(url)
    # Only the token stored for this very server (or TOKENSVC_TOKEN) may go to its discharger.
    own = credential_for(service_url)
    if token_string == "-":  # noqa: S105 - "-" means stdin, not a password
        token_string = sys.stdin.readline().strip()
    token_string = token_string or (own.token if own else None)
    if not token_string:
        raise click.UsageError(
            f"give a TOKEN (or `-`), or run `tokensvc login --url {service_url}` first"
        )
    basic = None
    if user is not None:
        password = (
            sys.stdin.readline().rstrip("\n")
            if password_stdin
            else click.prompt("Password", hide_input=True)
        )
        basic = (user, str(password))
    token = decode_token(token_string, max_bytes=1 << 20, max_caveats=1024)

    discharges = acquire_discharges(
        token,
        post=http_post_form,
        headers_for=credentials_for(service_url, basic=basic, token=own.token if own else None),
    )

    encoded = [encode_discharge(d) for d in discharges]
    if no_verify:
        if as_json:
            click.echo(json.dumps({"discharges": encoded}, indent=2))
        else:
            click.echo("\n".join(encoded))
        return
    context = {
        name: value
        for name, value in (
            ("operation", operation),
            ("resource", resource),
            ("audience", audience),
        )
        if value is not None
    }
    body: dict[str, Any] = {"token": token_string, "discharges": encoded}
    if context:
        body["context"] = context
    result = Client(url=service_url).request("POST", "/v1/verify", body)
    if as_json:
        click.echo(json.dumps({"discharges": encoded, "verify": result}, indent=2))
        return
    declared = " ".join(f"{k}={v}" for k, v in sorted((result.get("declared") or {}).items()))
    click.echo(
        f"valid: subject {result['subject']}, {len(encoded)} discharge(s)"
        + (f", declared {declared}" if declared else "")
    )
