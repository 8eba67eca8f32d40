"""How every CLI command fails: a one-line message and exit status 1, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from keystore import KeystoreError
from tokensvc.errors import TokensvcError


def fail_on_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our typed errors (service and keystore) into click's one-line failure."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TokensvcError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None
        except KeystoreError as exc:
            raise click.ClickException(f"keystore: {exc}") from None

    return wrapper
