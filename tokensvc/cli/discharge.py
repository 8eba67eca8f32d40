"""`tokensvc token discharge`: get the discharges a token needs, bind them, and verify the bundle.

Plain HTTP (the standard library), speaking the bakery's discharge protocol, so the CLI needs no
bakery package: each third-party caveat (and any caveat of a discharge, breadth first, bounded)
is sent to `{location}/discharge` as a bakery client sends it; each answer is bound to the token
as pymacaroons' `prepare_for_request` binds it; the token and its discharges go to /v1/verify.

Credentials are sent only to tokensvc's own discharger, `{service URL}/bakery` exactly (or the
service URL plus `TOKENSVC_BAKERY_PREFIX` when the server was given another prefix): the stored
login token as a bearer token, or HTTP Basic with `--user`. Other dischargers get nothing, so a
token naming a hostile location cannot harvest them. A location is a plain http(s) URL (no user
name, query, fragment, escape or dot segment) and redirects are never followed: red team
(helper-63), a location under the service URL ending in `#` or `?` turned `{location}/discharge`
into an authenticated POST to any admin endpoint (`/v1/subjects/bob/revoke-all#` revoked bob's
tokens as the admin running the command), and a hostile discharger could hand back such a
caveat inside its discharge.
"""

from __future__ import annotations

import base64
import json
import os
import re
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
from tokensvc.cli.credentials import opener, refuse_plain_http
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
DEFAULT_PREFIX: Final = "/bakery"
PREFIX_ENV: Final = "TOKENSVC_BAKERY_PREFIX"
# What may not appear in a location's path: an escape, a backslash, a control or a space.
_UNPLAIN: Final = re.compile(r"[%\\\x00-\x20\x7f]")


class DischargeFailed(TokensvcError):
    """A discharger refused, or answered something that is not a discharge."""

    code = "discharge_failed"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is a refusal: urllib would carry Authorization to any host


_OPENER: Final = opener(_NoRedirects())


def http_post_form(url: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, bytes]:
    """POST an urlencoded form with urllib, never following a redirect; the status and
    (bounded) body, errors included."""
    data = urllib.parse.urlencode(form).encode("ascii")
    request = urllib.request.Request(  # noqa: S310 - the caller allows only http(s) locations
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    try:
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as resp:
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
        location = plain_location((caveat.location or b"").decode("utf-8", "replace"))
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


def plain_location(location: str) -> str:
    """`location` without its trailing slashes, if it is a plain http(s) URL: a host, no user
    name, query or fragment, and a path of plain segments; else DischargeFailed. So
    `{location}/discharge` names a discharge endpoint and nothing else."""
    location = location.rstrip("/")
    try:
        parts = urllib.parse.urlsplit(location)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or "?" in location
        or "#" in location
        or _UNPLAIN.search(parts.path) is not None
        or any(segment in ("", ".", "..") for segment in parts.path.split("/")[1:])
    ):
        raise DischargeFailed(f"third-party location {location[:200]!r} is not a plain HTTP URL")
    return location


def _origin_and_path(url: str) -> tuple[str, str, int | None, str]:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname or "", parts.port or default, parts.path.rstrip("/")


def credentials_for(
    service_url: str, *, basic: tuple[str, str] | None, token: str | None
) -> Callable[[str], dict[str, str]]:
    """Authorization headers for tokensvc's own discharger, the service URL plus the bakery
    prefix (`/bakery`, or `TOKENSVC_BAKERY_PREFIX`) exactly; nothing for any other location."""
    scheme, host, port, path = _origin_and_path(service_url)
    own = (scheme, host, port, path + (os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX).rstrip("/"))

    def headers(location: str) -> dict[str, str]:
        try:
            if _origin_and_path(plain_location(location)) != own:
                return {}
        except DischargeFailed:
            return {}
        # As every other command: no credential over plain http to another machine unless
        # allowed (red team, helper-74: `--user` passwords and TOKENSVC_TOKEN went in clear).
        refuse_plain_http(location)
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
