"""The attack suite's fixtures: the app in both production shapes (helpers: tests/security/attack.py).

`shaped` serves the real app factory (as `tokensvc serve` serves it, fast /v1/verify path
included) on the embedded shape (SQLite, in-process lockout) and on the production shape
(PostgreSQL, Redis lockout and revocation pub/sub), each with its own database and key prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, make_config

SHAPES = ("sqlite", "postgres+redis")


@pytest.fixture(params=SHAPES)
def shape_config(request: pytest.FixtureRequest, data_dir: Path, sqlite_url: str) -> Any:
    """The app's configuration in each shape."""
    if request.param == "sqlite":
        return make_config(database_url=sqlite_url, data_dir=data_dir)
    return make_config(
        database_url=request.getfixturevalue("pg_url"),
        data_dir=data_dir,
        redis_url=request.getfixturevalue("redis_url"),
        redis_prefix=request.getfixturevalue("redis_prefix"),
    )


@pytest.fixture
async def shaped(aiohttp_client: Any, shape_config: Any, clock: FakeClock) -> Any:
    """A client of the app in each shape."""
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    return await aiohttp_client(ServedTestServer(create_app(shape_config, clock=clock)))


@pytest.fixture
async def root(shaped: Any) -> str:
    """The bootstrap admin's full token, from a password login."""
    from tests.security.attack import login

    return await login(shaped, "admin", ADMIN_PASSWORD)
