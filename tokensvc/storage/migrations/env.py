"""Alembic environment for tokensvc: async engines, one transaction, PostgreSQL and SQLite.

`tokensvc.storage.migrate.upgrade()` passes its connection in `config.attributes["connection"]` (already
inside a locked transaction). Run by the `alembic` command instead, this builds its own async
engine from the `sqlalchemy.url` option and takes the same lock.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

# Every module that declares a table, so both metadatas are complete for autogenerate.
import keystore.deployment_key
import keystore.discharger_key
import keystore.models
import keystore.service_keys  # noqa: F401
import tokensvc.accounts.users
import tokensvc.storage.audit
import tokensvc.tokens.events
import tokensvc.tokens.registry
import tokensvc.tokens.revocation
import tokensvc.tokens.subjects  # noqa: F401
from keystore.db import Base as KeystoreBase
from keystore.db import create_engine
from tokensvc.storage.base import Base
from tokensvc.storage.migrate import run_locked

# Modules that add tables import their models above, so autogenerate can compare against them:
# keystore's tables and tokensvc's, each on its own base, in one migration history.
target_metadata: list[MetaData] = [KeystoreBase.metadata, Base.metadata]

config = context.config


def run_migrations_offline() -> None:
    """Emit SQL for the `--sql` mode instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        await run_locked(engine, do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and no sqlalchemy.url configured")
    asyncio.run(run_async_migrations(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
