"""argon2's working memory goes back to the system after each hash (operations.memory).

Measured in fresh processes, since what the allocator keeps depends on everything the process
allocated before: two threads hash three times each at the default profile (19 MiB), and the
process's RSS growth is compared with and without `return_large_blocks`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

_SCRIPT = """
import sys, threading
from argon2.low_level import Type, hash_secret_raw
from tokensvc.operations.memory import return_large_blocks

def rss_kib():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])

fixed = sys.argv[1] == "fixed" and return_large_blocks()
before = rss_kib()

def hash_three():
    for _ in range(3):
        hash_secret_raw(b"password", b"saltsaltsalt", time_cost=1, memory_cost=19456,
                        parallelism=1, hash_len=32, type=Type.ID)

threads = [threading.Thread(target=hash_three) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(fixed, (rss_kib() - before) // 1024)
"""


def _growth_mib(mode: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc")
def test_hashing_threads_keep_no_argon2_memory_once_large_blocks_are_returned() -> None:
    fixed, growth = _growth_mib("fixed")
    assert fixed, "mallopt was not applied"
    assert growth < 8  # one 19 MiB block would be held per hashing thread otherwise
    _, kept = _growth_mib("default")
    assert kept >= 19  # what it saves: glibc's dynamic threshold keeps a block per thread


def test_serving_imports_no_migration_tooling_and_head_is_alembics() -> None:
    """A database at HEAD is found so by one SELECT, so a serving process whose database is up
    to date (a restart, a verify worker) never imports alembic and mako (~10 MiB of RSS); HEAD
    must be the newest revision in migrations/versions."""
    script = (
        "import sys\n"
        "from tokensvc import composition\n"
        "from tokensvc.web import app, server\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    from tokensvc.storage.migrate import HEAD, head_revision

    assert head_revision() == HEAD


async def test_at_head_reads_the_version_and_knows_a_new_database(tmp_path: object) -> None:
    from pathlib import Path

    from keystore import create_engine
    from tokensvc.storage.migrate import at_head, downgrade, upgrade

    assert isinstance(tmp_path, Path)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        assert not await at_head(engine)  # never migrated: no version table
        await upgrade(engine)
        assert await at_head(engine)
        await downgrade(engine, "0008_mfa")
        assert not await at_head(engine)
        await upgrade(engine)
        assert await at_head(engine)
    finally:
        await engine.dispose()


async def test_serving_without_auto_migration_refuses_a_database_behind_this_release(
    tmp_path: object,
) -> None:
    """Deploy review: with TOKENSVC_AUTO_MIGRATE=false (Kubernetes, compose: migrations are a
    step of their own) pods came up Ready on a database never migrated, and failed request by
    request. `serve` refuses to start behind this release's head, in one line; at the head,
    or at a revision it does not know (a newer release's, in a rolling update), it starts, and
    `migrate` (each pod's init container) leaves such a database alone (code review: alembic
    refused it, and a rollback's pods never started)."""
    from pathlib import Path

    from sqlalchemy import text

    from keystore import create_engine
    from tests.conftest import make_config
    from tokensvc.composition import preflight
    from tokensvc.operations.config import ConfigError
    from tokensvc.storage.migrate import behind_head, downgrade, upgrade

    assert isinstance(tmp_path, Path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    config = make_config(database_url=url, data_dir=tmp_path / "data", auto_migrate=False)
    engine = create_engine(url)
    try:
        with pytest.raises(ConfigError, match="tokensvc migrate"):
            await preflight(config)  # never migrated
        await upgrade(engine)
        await downgrade(engine, "0008_mfa")
        with pytest.raises(ConfigError, match="tokensvc migrate"):
            await preflight(config)  # an older revision of ours
        await upgrade(engine)
        await preflight(config)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
        assert not await behind_head(engine)
        await preflight(config)
        await upgrade(engine)  # a newer release's revision: nothing to do, no "Can't locate"
    finally:
        await engine.dispose()


async def test_upgrade_in_child_migrates_there_and_reports_an_unreachable_database(
    tmp_path: object,
) -> None:
    """`tokensvc serve`'s first start migrates in a spawned process: the database ends at HEAD,
    this process imports no alembic for it, and a database that cannot be reached is the
    StoreUnavailable it would have been here."""
    import asyncio
    from pathlib import Path

    from keystore import create_engine
    from keystore.errors import StoreUnavailable
    from tokensvc.storage.migrate import at_head, upgrade_in_child

    assert isinstance(tmp_path, Path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    await asyncio.to_thread(upgrade_in_child, url)
    engine = create_engine(url)
    try:
        assert await at_head(engine)
    finally:
        await engine.dispose()
    unreachable = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    with pytest.raises(StoreUnavailable):
        await asyncio.to_thread(upgrade_in_child, unreachable)
