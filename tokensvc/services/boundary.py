"""The service boundary: the one place a dependency's unavailability becomes `Unavailable`.

Stores raise storage errors (tokensvc.storage.db.StorageUnavailable), the key store its own
(keystore.StoreUnavailable); neither means anything to a caller but "ask again later". Every public
coroutine method of a class decorated with `@service` translates them into
`tokensvc.errors.Unavailable` (503 + Retry-After on the web, a one-line message in the CLI), so no
handler, command or SQLSTATE list has to. tests/tokensvc/test_services_boundary.py checks that
every service's public methods are wrapped.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, ParamSpec, TypeVar

from keystore import KeyDecryptionError, StoreUnavailable
from tokensvc.errors import Unavailable
from tokensvc.storage.db import StorageUnavailable

_log = logging.getLogger("tokensvc")

_P = ParamSpec("_P")
_R = TypeVar("_R")
_C = TypeVar("_C", bound=type)

#: Seconds a client is asked to wait before trying again after a storage outage.
RETRY_AFTER: Final = 2

#: The marker `@service` sets on each method it wraps.
WRAPPED: Final = "__tokensvc_service_boundary__"


def translated(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """`method`, with storage and key-store unavailability raised as `Unavailable`."""

    @functools.wraps(method)
    async def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except (StorageUnavailable, StoreUnavailable) as exc:
            raise Unavailable(
                "a storage dependency is unavailable; try again shortly", retry_after=RETRY_AFTER
            ) from exc
        except KeyDecryptionError as exc:
            # A key sealed under a KEK this process lacks (or damaged): the operator's to fix
            # (docs/security.md, KEK rotation); the caller hears 503, the log says which key.
            _log.error("a stored key cannot be opened: %s", exc)
            raise Unavailable(
                "a stored key cannot be opened by this replica", retry_after=RETRY_AFTER
            ) from exc

    setattr(call, WRAPPED, True)
    return call


def service(cls: _C) -> _C:
    """Wrap every public coroutine method of `cls` with `translated`."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") or not inspect.iscoroutinefunction(member):
            continue
        setattr(cls, name, translated(member))
    return cls


def is_wrapped(method: Any) -> bool:
    """Whether `method` goes through the boundary (for the architecture test)."""
    return bool(getattr(method, WRAPPED, False))
