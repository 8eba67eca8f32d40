"""Run the Alembic migrations programmatically: idempotent, and safe from several processes at once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystore.db import SQLITE_BEGIN_IMMEDIATE
from keystore.db import run as run_database
from keystore.errors import StoreUnavailable

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR: Final[Path] = Path(__file__).resolve().parent / "migrations"

# The newest revision in migrations/versions (a test checks it is alembic's head). A database at
# this revision needs nothing, and finding that out takes one SELECT: alembic (and mako, ~10 MiB
# of a verify worker's RSS, issue 17's bound) is imported only when there is work to do.
HEAD: Final = "0011_subject_spellings"

# pg_advisory_xact_lock key for migrations: the bytes "tokensvc" as a signed 64-bit integer.
MIGRATION_LOCK_KEY: Final[int] = int.from_bytes(b"tokensvc", "big", signed=True)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config for tokensvc's migrations, without any alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest revision the code ships."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to `revision` (default: the newest); a no-op when already there, and
    at a revision this release does not know: a newer release's, met by a pod of this one in a
    rolling update or a rollback, which alembic would refuse ("Can't locate revision")."""
    if revision == "head" and not await behind_head(engine):
        return
    from alembic import command

    await run_locked(engine, partial(_run_command, command.upgrade, revision))


def upgrade_in_child(url: str) -> None:
    """Bring the database at `url` to HEAD in a child process (blocking: run it in a thread).

    For `tokensvc serve`'s first start on a new or older database: the serving process then
    never imports alembic and mako, which it would hold for its whole life (~10 MiB of a verify
    worker's RSS, issue 17's bound). A start on an up-to-date database starts nothing. A plain
    child (not multiprocessing's, whose resource tracker would outlive it by a process); the URL,
    which may hold a password, goes over its stdin, never its command line.

    Raises:
        StoreUnavailable: the database could not be reached (the child's words).
        RuntimeError: the migration failed otherwise (its error, as the child saw it).
    """
    done = subprocess.run(  # noqa: S603 - our own interpreter and module, no outside input
        [sys.executable, "-m", __name__],
        input=url,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return
    try:
        unavailable, message = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError, TypeError):
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise RuntimeError(
            f"the migration process ended with exit code {done.returncode}: {tail}"
        ) from None
    raise StoreUnavailable(message) if unavailable else RuntimeError(message)


def _upgrade_main() -> int:
    """The child: upgrade the database whose URL is on stdin; on failure one JSON line saying
    whether it was unreachable, and what went wrong."""
    from keystore import create_engine

    url = sys.stdin.read()

    async def go() -> None:
        engine = create_engine(url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(go())
    except StoreUnavailable as exc:
        print(json.dumps([True, str(exc)]))
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        print(json.dumps([False, f"{type(exc).__name__}: {exc}"]))
        return 1
    return 0


async def _versions(engine: AsyncEngine) -> list[str]:
    """The database's alembic revisions, by one SELECT (none when it was never migrated)."""

    async def read(conn: AsyncConnection) -> list[str]:
        try:
            version = await conn.execute(text("SELECT version_num FROM alembic_version"))
        except DBAPIError as exc:
            if _no_version_table(exc):
                return []  # a new database
            raise
        return [str(row[0]) for row in version]

    return await run_database(engine, read, write=False, what="the database (migrations)")


async def at_head(engine: AsyncEngine) -> bool:
    """Whether the database is at HEAD, by one SELECT (False when it was never migrated)."""
    return await _versions(engine) == [HEAD]


async def behind_head(engine: AsyncEngine) -> bool:
    """Whether the database lacks migrations of this release, by one SELECT: never migrated,
    or at one of this release's older revisions. False at HEAD, and at a revision this release
    does not know: a newer release's, whose migrations this one runs beside in a rolling
    update (or a rollback)."""
    current = await _versions(engine)
    if current == [HEAD]:
        return False
    return not current or set(current) <= _our_revisions()


async def unknown_revisions(engine: AsyncEngine) -> list[str]:
    """The revisions the database is at that this release does not ship (a newer release's)."""
    ours = _our_revisions()
    return [version for version in await _versions(engine) if version not in ours]


def _our_revisions() -> set[str]:
    """The revisions this release ships."""
    return {path.stem for path in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py")}


def _no_version_table(exc: DBAPIError) -> bool:
    """The SELECT found no alembic_version table (SQLite's or PostgreSQL's words for it)."""
    return "no such table" in str(exc) or "does not exist" in str(exc)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the database back to `revision` ("base" removes every table)."""
    from alembic import command

    await run_locked(engine, partial(_run_command, command.downgrade, revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


# How long a migration on SQLite keeps trying while the database is locked. A time, not a count:
# on a loaded host the process that holds the lock can take seconds to finish (eight tries,
# 1.8 s in all, once ran out in CI).
_SQLITE_LOCKED_PATIENCE: Final = 15.0


async def run_locked(engine: AsyncEngine, fn: Callable[[Connection], None]) -> None:
    """Run `fn` on one connection inside one transaction that holds the migration lock.

    PostgreSQL: a transaction-scoped advisory lock, so concurrent callers queue, and each finds
    the work done when its turn comes (DDL is transactional there). SQLite: BEGIN IMMEDIATE takes
    the database's write lock up front, with the same effect. An unreachable database raises
    `keystore.StoreUnavailable`, as the keystore does everywhere else.

    SQLite can still refuse at once with "database is locked" while processes opening a new
    database switch it to WAL together (SQLite skips the busy handler where waiting could
    deadlock); that attempt is repeated, briefly, since a migration finds done work done.
    """
    deadline = time.monotonic() + _SQLITE_LOCKED_PATIENCE
    attempt = 0
    while True:
        try:
            await _run_locked_once(engine, fn)
            return
        except StoreUnavailable as exc:
            locked = engine.dialect.name == "sqlite" and "is locked" in str(exc.__cause__)
            if not locked or time.monotonic() >= deadline:
                raise
            attempt += 1
            await asyncio.sleep(min(0.05 * attempt, 0.5))


async def _run_locked_once(engine: AsyncEngine, fn: Callable[[Connection], None]) -> None:
    async def migrate(conn: AsyncConnection) -> None:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        await conn.run_sync(fn)

    await run_database(
        engine,
        migrate,
        write=True,
        retry=False,
        what="the database (migrations)",
        options={SQLITE_BEGIN_IMMEDIATE: True},
    )


def _run_command(
    action: Callable[[Config, str], None], revision: str, connection: Connection
) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    action(config, revision)


if __name__ == "__main__":
    sys.exit(_upgrade_main())
