"""What every command shares: configuration, options, output, the failure rule, the local runtime."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tokensvc.cli.errors import ConfigFailure, fail_on_errors
from tokensvc.operations.config import Config, ConfigError

if TYPE_CHECKING:
    from tokensvc.services.principals import LocalOperator

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "ConfigFailure",
    "config",
    "emit",
    "fail_on_errors",
    "iso",
    "json_option",
    "local_option",
    "local_runtime",
    "operator",
    "read_value",
    "run",
    "url_option",
]

URL_HELP = (
    "Service URL, e.g. https://tokens.example or 127.0.0.1:8080 (default: TOKENSVC_URL, else"
    " the server you last logged in to). Only the token stored for this URL is sent."
)


def url_option(fn: F) -> F:
    return click.option("--url", default=None, metavar="URL", help=URL_HELP)(fn)


def json_option(fn: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON for scripts (times in ISO 8601 UTC)."
    )(fn)


def local_option(fn: F) -> F:
    return click.option(
        "--local",
        is_flag=True,
        help="Act on the configured database directly, as the OS user (break-glass; audited).",
    )(fn)


def run(coro: Awaitable[T]) -> T:
    """Run one coroutine to completion in a fresh event loop."""

    async def main() -> T:
        return await coro

    return asyncio.run(main())


def config() -> Config:
    """The configuration from the environment; a bad one is a one-line error, exit status 2."""
    try:
        return Config.from_env()
    except ConfigError as exc:
        raise ConfigFailure(exc.message) from None


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    """`data` as indented JSON for scripts, else as `human` renders it."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human(data))


def iso(value: datetime | None) -> str | None:
    """RFC 3339 UTC, whole seconds, as the API writes times."""
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_value(value: str | None, what: str) -> str:
    """`value`, or a line of standard input when it is `-` or not given (and stdin is no terminal).

    Raises:
        click.UsageError: nothing given, or an empty line read.
    """
    if value is not None and value != "-":
        return value.strip()
    if value is None and sys.stdin.isatty():
        raise click.UsageError(f"give {what}, or `-` to read it from standard input")
    line = sys.stdin.readline().strip()
    if not line:
        raise click.UsageError(f"no {what} on standard input")
    return line


def operator() -> LocalOperator:
    """Who runs a `--local` command: the operating-system user, as the audit trail records it."""
    from tokensvc.services.principals import LocalOperator

    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        name = f"uid{os.getuid()}"
    return LocalOperator(name)


@asynccontextmanager
async def local_runtime() -> AsyncIterator[Any]:
    """The services over the configured database, built by the same composition root as
    `tokensvc serve` (the break-glass path: every action is authorised and audited alike)."""
    from tokensvc.composition import runtime
    from tokensvc.operations.logs import configure

    # Warnings and errors go to stderr as JSON lines; stdout stays the command's output. The
    # audit row, not a log line, is the durable record of what the operator did.
    configure("warning")
    async with runtime(config(), serving=False) as built:
        yield built


def local(action: Callable[[Any, LocalOperator], Awaitable[T]]) -> T:
    """Run `action(services, operator)` against the configured database (a `--local` command)."""

    async def go() -> T:
        async with local_runtime() as built:
            return await action(built.services, operator())

    return run(go())
