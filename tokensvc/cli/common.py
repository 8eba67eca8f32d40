"""What every command shares: configuration, output, the failure rule, and the local runtime."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from tokensvc.cli.errors import fail_on_errors
from tokensvc.operations.config import Config, ConfigError
from tokensvc.services.principals import LocalOperator

T = TypeVar("T")

__all__ = [
    "ConfigFailure",
    "config",
    "emit",
    "fail_on_errors",
    "iso",
    "local_runtime",
    "operator",
    "run",
    "service_url",
]


def run(coro: Awaitable[T]) -> T:
    """Run one coroutine to completion in a fresh event loop."""

    async def main() -> T:
        return await coro

    return asyncio.run(main())


class ConfigFailure(click.ClickException):
    """A bad setting: one line on stderr naming the variable, exit status 2 (as for bad usage)."""

    exit_code = 2


def config() -> Config:
    """The configuration from the environment; a bad one is a one-line error, exit status 2."""
    try:
        return Config.from_env()
    except ConfigError as exc:
        raise ConfigFailure(exc.message) from None


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    """`data` as indented JSON for scripts, else as `human` renders it."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human(data))


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def operator() -> LocalOperator:
    """Who runs a `--local` command: the operating-system user, as the audit trail records it."""
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


def service_url(url: str | None) -> str:
    from tokensvc.cli.client import DEFAULT_URL

    return (url or os.environ.get("TOKENSVC_URL") or DEFAULT_URL).rstrip("/")
