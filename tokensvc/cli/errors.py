"""How every CLI command fails: a one-line message on stderr and exit status 1, never a traceback.

The CLI's own errors (CliError and below) are about the caller's side: which server, which
stored login. The service's errors come back as ApiError (tokensvc.cli.client).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from tokensvc.errors import TokensvcError
from tokensvc.operations.configvalues import ConfigError


class CliError(TokensvcError):
    """Root of the CLI's own errors; never raised itself."""

    code = "cli_error"


class BadUrl(CliError):
    """The service URL is not an http(s) URL with a host."""

    code = "bad_url"


class NotLoggedIn(CliError):
    """No usable token for the server a command talks to."""

    code = "not_logged_in"


class CredentialsUnreadable(CliError):
    """The credentials file exists but cannot be read or understood."""

    code = "credentials_unreadable"


class BadToken(CliError):
    """A token (TOKENSVC_TOKEN, a stored one, a login's answer) that cannot be one of ours: it
    holds whitespace, a control character or non-ASCII text. Never printed."""

    code = "bad_token"


class InsecureUrl(CliError):
    """A plain-http URL to a host that is not this machine: passwords and tokens would cross
    the network readable."""

    code = "insecure_url"


class Refused(CliError):
    """The CLI will not do what was asked, and says why (e.g. a caveat that would do nothing)."""

    code = "refused"


class ConfigFailure(click.ClickException):
    """A bad setting: one line on stderr naming the variable, exit status 2 (as for bad usage)."""

    exit_code = 2


def fail_on_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our typed errors (service and keystore) into click's one-line failure."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:  # found once running (helper-69: an uncreatable data dir)
            raise ConfigFailure(exc.message) from None
        except TokensvcError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None
        except Exception as exc:
            if _is_keystore_error(exc):
                raise click.ClickException(f"keystore: {exc}") from None
            raise

    return wrapper


def _is_keystore_error(exc: Exception) -> bool:
    # keystore is imported by the commands that use it (--local, serve), not here: it brings
    # SQLAlchemy, most of a second of every CLI call. A KeystoreError can only have been raised
    # by a loaded keystore, so one that is not loaded raised nothing of its own.
    keystore = sys.modules.get("keystore")
    return keystore is not None and isinstance(exc, keystore.KeystoreError)
