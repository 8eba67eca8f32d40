"""The service boundary: every service's public methods translate unavailability into 503s."""

from __future__ import annotations

import inspect

import pytest

from keystore import StoreUnavailable
from tokensvc.errors import Unavailable
from tokensvc.services.audit import AuditService
from tokensvc.services.boundary import is_wrapped, service
from tokensvc.services.discharge import DischargeService
from tokensvc.services.introspection import IntrospectionService
from tokensvc.services.keys import KeyService
from tokensvc.services.lockouts import LockoutService
from tokensvc.services.login import LoginService
from tokensvc.services.tokens import TokenService
from tokensvc.services.users import UserService
from tokensvc.storage.db import StorageUnavailable

SERVICES = [
    AuditService,
    DischargeService,
    IntrospectionService,
    KeyService,
    LockoutService,
    LoginService,
    TokenService,
    UserService,
]


@pytest.mark.parametrize("cls", SERVICES, ids=lambda c: c.__name__)
def test_every_public_coroutine_method_goes_through_the_boundary(cls: type) -> None:
    """No public service method can let a storage error escape as a 500."""
    methods = {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }

    assert methods, cls
    assert {name for name, m in methods.items() if not is_wrapped(m)} == set()


@pytest.mark.parametrize("error", [StorageUnavailable("db down"), StoreUnavailable("keys down")])
async def test_storage_and_key_store_unavailability_become_unavailable(error: Exception) -> None:
    """Both kinds of storage failure reach callers as Unavailable, with a Retry-After and the
    original failure kept as the cause for the logs."""

    @service
    class Failing:
        async def act(self) -> None:
            raise error

    with pytest.raises(Unavailable) as raised:
        await Failing().act()

    assert raised.value.retry_after >= 1
    assert raised.value.__cause__ is error
