"""The discharger's key pair in the keystore: made once, the same for every replica, sealed at rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from nacl.bindings import crypto_scalarmult_base
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from keystore import Base, KeyDecryptionError, KeyEncryptionKey, create_engine
from keystore.discharger_key import DischargerKey, load_discharger_key
from tokensvc.storage import migrate

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def clock() -> datetime:
    return NOW


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database: real PostgreSQL, then embedded SQLite."""
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))


@pytest.fixture
async def engines(db_url: str) -> AsyncIterator[Callable[[], AsyncEngine]]:
    """A factory of engines on the migrated database (separate pools, as replicas have)."""
    made: list[AsyncEngine] = []

    def make() -> AsyncEngine:
        engine = create_engine(db_url)
        made.append(engine)
        return engine

    await migrate.upgrade(make())
    yield make
    for engine in made:
        await engine.dispose()


async def test_first_load_creates_the_key_and_later_loads_return_it(
    engines: Callable[[], AsyncEngine],
) -> None:
    """The first load makes a valid X25519 pair; a later load (another process) returns the same pair."""
    kek = KeyEncryptionKey.generate()

    first = await load_discharger_key(engines(), kek=kek, clock=clock)
    again = await load_discharger_key(engines(), kek=kek, clock=clock)

    assert first == again
    assert again.private == first.private
    assert crypto_scalarmult_base(first.private.reveal()) == first.public
    assert first.created_at == NOW


async def test_replicas_racing_at_first_start_agree_on_one_key(
    engines: Callable[[], AsyncEngine],
) -> None:
    """Six engines loading at once on an empty table all get the same key, and one row exists."""
    kek = KeyEncryptionKey.generate()

    keys = await asyncio.gather(
        *(load_discharger_key(engines(), kek=kek, clock=clock) for _ in range(6))
    )

    assert len({key.public for key in keys}) == 1
    async with engines().connect() as conn:
        rows = (await conn.execute(text("SELECT count(*) FROM discharger_keys"))).scalar_one()
    assert rows == 1


async def test_the_private_key_is_not_stored_in_the_clear(
    engines: Callable[[], AsyncEngine],
) -> None:
    """The row holds the public key and a ciphertext; the private key's bytes appear nowhere in it."""
    engine = engines()
    key = await load_discharger_key(engine, kek=KeyEncryptionKey.generate(), clock=clock)

    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM discharger_keys"))).mappings().one()

    stored = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values())
    assert key.private.reveal() not in stored
    assert key.private.reveal().hex().encode() not in stored
    assert bytes(row["public_key"]) == key.public


async def test_another_kek_cannot_load_the_key(engines: Callable[[], AsyncEngine]) -> None:
    """With a different key-encryption key the load fails loudly instead of making a second key."""
    await load_discharger_key(engines(), kek=KeyEncryptionKey.generate(), clock=clock)

    with pytest.raises(KeyDecryptionError, match="key-encryption key"):
        await load_discharger_key(engines(), kek=KeyEncryptionKey.generate(), clock=clock)


async def test_tampered_rows_do_not_load(engines: Callable[[], AsyncEngine]) -> None:
    """A swapped public key or a ciphertext moved from another row is refused, not served."""
    kek = KeyEncryptionKey.generate()
    engine = engines()
    await load_discharger_key(engine, kek=kek, clock=clock)
    await load_discharger_key(engine, kek=kek, clock=clock, key_id="other")
    other_public = DischargerKey.generate().public

    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE discharger_keys SET public_key = :pk WHERE id = 'other'"),
            {"pk": other_public},
        )
    with pytest.raises(KeyDecryptionError, match="public key does not match"):
        await load_discharger_key(engine, kek=kek, clock=clock, key_id="other")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE discharger_keys SET ciphertext ="
                " (SELECT ciphertext FROM discharger_keys WHERE id = 'bakery-x25519')"
                " WHERE id = 'other'"
            )
        )
    with pytest.raises(KeyDecryptionError, match="does not decrypt"):
        await load_discharger_key(engine, kek=kek, clock=clock, key_id="other")


def test_the_key_pair_hides_its_private_half() -> None:
    """repr and str of a key pair show the public key only."""
    key = DischargerKey.generate()

    shown = repr(key) + str(key)

    assert key.private.reveal().hex() not in shown
    assert repr(key.private.reveal()) not in shown
    assert "private" not in shown
    assert key.public.hex() in shown or repr(key.public) in shown


async def test_the_migrated_table_matches_the_model(engines: Callable[[], AsyncEngine]) -> None:
    """Autogenerate finds no difference between the migrated discharger_keys and the model."""

    def differences(sync: Connection) -> list[object]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        return [d for d in compare_metadata(context, Base.metadata) if "discharger" in repr(d)]

    async with engines().connect() as conn:
        diffs = await conn.run_sync(differences)

    assert diffs == []


async def test_the_migration_downgrades_and_upgrades_again(
    engines: Callable[[], AsyncEngine],
) -> None:
    """Going back to 0003 drops discharger_keys; upgrading brings it back at the head revision."""
    engine = engines()

    async def tables() -> set[str]:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda s: inspect(s).get_table_names()))

    await migrate.downgrade(engine, "0003_subject_generations")
    after_downgrade = await tables()
    await migrate.upgrade(engine)

    assert "discharger_keys" not in after_downgrade
    assert "discharger_keys" in await tables()
    assert await migrate.current_revision(engine) == migrate.head_revision()
