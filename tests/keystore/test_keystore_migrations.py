"""Alembic migrations: idempotent, safe when several processes start at once, matching the models."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from keystore_fakes import StatementLog
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from keystore import Base, StoreUnavailable
from tokensvc.storage import migrate


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


def test_the_history_is_one_linear_chain_starting_at_root_keys() -> None:
    """0001_root_keys is the base, there is one head, and ids fit alembic_version's 32 chars."""
    script = ScriptDirectory.from_config(migrate.alembic_config())

    revisions = list(script.walk_revisions())

    assert len(script.get_heads()) == 1
    assert revisions[-1].revision == "0001_root_keys"
    assert revisions[-1].down_revision is None
    assert all(len(revision.revision) <= 32 for revision in revisions)
    assert migrate.head_revision() == script.get_current_head()


async def test_upgrade_creates_the_schema_and_records_the_head(
    db_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """An empty database ends up with root_keys and alembic_version at the head revision."""
    engine = make_engine(db_url)

    await migrate.upgrade(engine)

    assert {"root_keys", "alembic_version"} <= await _tables(engine)
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_upgrade_twice_is_a_no_op_the_second_time(
    db_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """Running the migrations again changes nothing and issues no DDL."""
    engine = make_engine(db_url)
    await migrate.upgrade(engine)
    log = StatementLog(engine)

    await migrate.upgrade(engine)

    log.close()
    ddl = [s for s in log.statements if s.lstrip().upper().startswith(("CREATE", "ALTER", "DROP"))]
    assert ddl == []
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_three_processes_migrating_at_once_all_succeed(
    db_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """Three engines (separate pools, as separate processes have) upgrading together all succeed."""
    engines = [make_engine(db_url) for _ in range(3)]

    results = await asyncio.gather(
        *(migrate.upgrade(engine) for engine in engines), return_exceptions=True
    )

    # The causes, if any: "the database is unavailable" alone does not say what SQLite refused.
    assert results == [None, None, None], [repr(getattr(r, "__cause__", r)) for r in results]
    assert await migrate.current_revision(engines[0]) == migrate.head_revision()
    assert "root_keys" in await _tables(engines[0])


async def test_upgrade_waits_for_the_postgres_advisory_lock(
    pg_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """While another session holds the migration lock, upgrade waits instead of racing it."""
    holder_engine, engine = make_engine(pg_url), make_engine(pg_url)

    async with holder_engine.connect() as holder, holder.begin():
        await holder.exec_driver_sql(f"SELECT pg_advisory_xact_lock({migrate.MIGRATION_LOCK_KEY})")
        pending = asyncio.create_task(migrate.upgrade(engine))
        await asyncio.sleep(0.3)
        waited = not pending.done()
    await pending

    assert waited
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_the_migrated_schema_matches_the_models(
    db_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """Autogenerate finds no difference between the migrated root_keys and the model."""
    engine = make_engine(db_url)
    await migrate.upgrade(engine)

    def differences(sync: Connection) -> list[object]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
        return [diff for diff in diffs if "root_keys" in repr(diff)]

    async with engine.connect() as conn:
        diffs = await conn.run_sync(differences)

    assert diffs == []


async def test_downgrade_to_base_removes_the_schema_and_upgrade_restores_it(
    db_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """The migration is reversible: base drops root_keys, a new upgrade brings it back."""
    engine = make_engine(db_url)
    await migrate.upgrade(engine)

    await migrate.downgrade(engine, "base")
    tables_at_base = await _tables(engine)
    revision_at_base = await migrate.current_revision(engine)
    await migrate.upgrade(engine)

    assert "root_keys" not in tables_at_base
    assert revision_at_base is None
    assert "root_keys" in await _tables(engine)


async def test_the_alembic_command_line_path_builds_its_own_engine(
    sqlite_url: str, make_engine: Callable[[str], AsyncEngine]
) -> None:
    """Without a connection in the config, env.py migrates from the sqlalchemy.url option."""
    config = migrate.alembic_config(sqlite_url)
    engine = make_engine(sqlite_url)

    # env.py runs its own event loop then, as under the `alembic` command: keep it off this one.
    await asyncio.to_thread(command.upgrade, config, "head")

    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_upgrade_of_an_unreachable_database_is_store_unavailable(
    make_engine: Callable[[str], AsyncEngine],
) -> None:
    """A database that cannot be reached fails the migration with StoreUnavailable."""
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")

    with pytest.raises(StoreUnavailable):
        await migrate.upgrade(engine)
