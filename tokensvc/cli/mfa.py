"""`tokensvc mfa enroll|status|disable|recovery-codes`: your own second factor, through the API
with your token for the server (an admin resets someone else's with `tokensvc user mfa-reset`)."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

import click

from tokensvc.cli.client import Client
from tokensvc.cli.common import emit, fail_on_errors, json_option, url_option


@click.group()
def mfa() -> None:
    """Your second factor (TOTP): enroll, status, disable, recovery-codes."""


def _otp_option(fn: Any) -> Any:
    return click.option(
        "--otp",
        default=None,
        help="A current code (or a recovery code); asked for when not given.",
    )(fn)


#: The environment variable `tokensvc mfa enroll` reads the current password from (scripts).
PASSWORD_ENV = "TOKENSVC_PASSWORD"  # noqa: S105 - a variable's name


def _password(password_stdin: bool) -> str:
    """The user's current password: stdin's first line, TOKENSVC_PASSWORD, or a hidden prompt."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    return str(click.prompt("Current password", hide_input=True, err=True))


def _code(otp: str | None, what: str) -> str:
    if otp:
        return otp.strip()
    return str(click.prompt(what, err=True)).strip()


def qr_text(uri: str) -> str:
    """The otpauth:// URI as a QR code drawn with terminal characters."""
    import segno  # only when a QR code is drawn

    out = io.StringIO()
    segno.make(uri, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue()


def _codes_text(codes: list[str]) -> str:
    return "\n".join(f"  {c}" for c in codes)


@mfa.command("enroll")
@click.option(
    "--password-stdin",
    is_flag=True,
    help=f"Read your current password from standard input (else {PASSWORD_ENV}, else a prompt).",
)
@_otp_option
@url_option
@json_option
@fail_on_errors
def mfa_enroll(password_stdin: bool, otp: str | None, url: str | None, as_json: bool) -> None:
    """Set up an authenticator app: asks for your current password (a token alone cannot
    enrol), shows the otpauth:// URI and a QR code, asks for the first code, then shows ten
    single-use recovery codes once — keep them somewhere safe."""
    client = Client.signed_in(url)
    password = _password(password_stdin)

    started = client.request("POST", "/v1/mfa/enroll", {"password": password})
    if not as_json:
        click.echo(qr_text(started["uri"]))
        click.echo(f"otpauth URI: {started['uri']}")
        click.echo(f"secret (to type in by hand): {started['secret']}")
    code = _code(otp, "Code shown by the app")
    activated = client.request("POST", "/v1/mfa/activate", {"otp": code})

    emit(
        {"user": started["user"], "uri": started["uri"], **activated},
        as_json,
        lambda r: (
            "second factor active. Recovery codes (each works once; shown only now):\n"
            + _codes_text(r["recovery_codes"])
        ),
    )


def _status_text(status: dict[str, Any]) -> str:
    if status["enrolled"]:
        text = f"{status['user']}: second factor active, {status['recovery_codes_remaining']}"
        text += " recovery codes left"
    elif status["pending"]:
        text = f"{status['user']}: enrolment started, not confirmed (run `tokensvc mfa enroll`)"
    else:
        text = f"{status['user']}: no second factor"
    if status["required"] and not status["enrolled"]:
        text += "\nyour role requires one: until you enrol, your tokens can only enrol"
    return text


@mfa.command("status")
@url_option
@json_option
@fail_on_errors
def mfa_status(url: str | None, as_json: bool) -> None:
    """Whether your second factor is active, and how many recovery codes are left."""
    status = Client.signed_in(url).request("GET", "/v1/mfa")
    emit(status, as_json, _status_text)


@mfa.command("disable")
@_otp_option
@url_option
@json_option
@fail_on_errors
def mfa_disable(otp: str | None, url: str | None, as_json: bool) -> None:
    """Switch your second factor off (needs a current code or a recovery code)."""
    client = Client.signed_in(url)
    code = _code(otp, "Current code (or a recovery code)")

    client.request("POST", "/v1/mfa/disable", {"otp": code})

    emit({"disabled": True}, as_json, lambda _: "second factor disabled")


@mfa.command("recovery-codes")
@click.option("--regenerate", is_flag=True, help="Replace every recovery code with ten new ones.")
@_otp_option
@url_option
@json_option
@fail_on_errors
def mfa_recovery_codes(regenerate: bool, otp: str | None, url: str | None, as_json: bool) -> None:
    """How many recovery codes you have left; --regenerate for ten new ones (needs a code)."""
    client = Client.signed_in(url)
    if not regenerate:
        status = client.request("GET", "/v1/mfa")
        emit(
            {"remaining": status["recovery_codes_remaining"], "enrolled": status["enrolled"]},
            as_json,
            lambda r: (
                f"{r['remaining']} recovery codes left"
                if r["enrolled"]
                else "no second factor: no recovery codes"
            ),
        )
        return
    code = _code(otp, "Current code (or a recovery code)")
    fresh = client.request("POST", "/v1/mfa/recovery-codes", {"otp": code})
    emit(
        fresh,
        as_json,
        lambda r: (
            "new recovery codes (every earlier one is void; shown only now):\n"
            + _codes_text(r["recovery_codes"])
        ),
    )


COMMANDS = [mfa]
