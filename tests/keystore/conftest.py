"""Fixtures for the keystore tests: a fake clock, a KEK, and migrated databases of both kinds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from keystore_fakes import START, FakeClock
from sqlalchemy.ext.asyncio import AsyncEngine

from keystore import KeyEncryptionKey, Keyring, create_engine
from tokensvc.storage.migrate import upgrade


@pytest.fixture
def clock() -> FakeClock:
    """A clock standing at the start of an interval."""
    return FakeClock(START)


@pytest.fixture
def kek() -> KeyEncryptionKey:
    """A fresh random key-encryption key."""
    return KeyEncryptionKey.generate()


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL: real PostgreSQL, then embedded SQLite."""
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[[str], AsyncEngine]]:
    """A factory of engines that are all disposed of after the test."""
    engines: list[AsyncEngine] = []

    def make(url: str) -> AsyncEngine:
        engine = create_engine(url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.dispose()


@pytest.fixture
async def engine(db_url: str, make_engine: Callable[[str], AsyncEngine]) -> AsyncEngine:
    """A migrated engine on the database of `db_url`."""
    engine = make_engine(db_url)
    await upgrade(engine)
    return engine


@pytest.fixture
async def pg_engine(pg_url: str, make_engine: Callable[[str], AsyncEngine]) -> AsyncEngine:
    """A migrated engine on a fresh PostgreSQL database."""
    engine = make_engine(pg_url)
    await upgrade(engine)
    return engine


@pytest.fixture
def keyring(engine: AsyncEngine, kek: KeyEncryptionKey, clock: FakeClock) -> Keyring:
    """A keyring with the default policy on `engine`, driven by the fake clock."""
    return Keyring(engine, kek=kek, clock=clock)
