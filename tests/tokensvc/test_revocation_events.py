"""The revocation event log: ids become visible in the order they were handed out (PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from keystore import create_engine
from tokensvc.storage.migrate import upgrade
from tokensvc.tokens import events
from tokensvc.tokens.events import EventLog


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


async def test_a_later_append_waits_for_an_earlier_one_to_commit(engine: AsyncEngine) -> None:
    """While one revoking transaction is open, another's append waits: no reader can see id N+1
    before id N has committed (which would make a resume after N+1 skip N forever)."""
    now = datetime.now(UTC)
    log = EventLog(engine)
    first = await engine.connect()
    await first.begin()
    await events.append(first, events.KEY, events.key_event("k-first"), at=now)

    async def second() -> None:
        async with engine.begin() as conn:
            await events.append(conn, events.KEY, events.key_event("k-second"), at=now)

    later = asyncio.create_task(second())
    await asyncio.sleep(0.5)
    seen_while_open = await log.after(0, limit=10)
    waited = not later.done()
    await first.commit()
    await first.close()
    await asyncio.wait_for(later, 5)
    seen = await log.after(0, limit=10)

    assert waited
    assert seen_while_open == []
    assert [e.fields()["key_id"] for e in seen] == ["k-first", "k-second"]
    assert seen[0].id < seen[1].id


async def test_prune_keeps_the_newest_event(engine: AsyncEngine) -> None:
    """Pruning everything old still keeps the newest event, the floor of the id sequence."""
    log = EventLog(engine)
    async with engine.begin() as conn:
        for key in ("a", "b", "c"):
            await events.append(conn, events.KEY, events.key_event(key), at=datetime.now(UTC))

    pruned = await log.prune(datetime.now(UTC).replace(year=2100))
    oldest, newest = await log.bounds()

    assert pruned == 2
    assert oldest == newest
    assert [e.fields() for e in await log.after(0, limit=10)] == [{"key_id": "c"}]


async def test_prune_deletes_only_a_prefix_of_ids_when_times_are_out_of_order(
    engine: AsyncEngine,
) -> None:
    """Red team (helper-46): ids are the cursor, but pruning went by created_at, and the two need
    not agree (a transaction takes `now` before a long cascade, then waits for the append lock;
    replicas' clocks differ). An event with a later id and an earlier time was deleted while an
    earlier one was kept: a client resuming between them got neither it nor a reset. Only a
    prefix of ids goes, so `oldest` tells a resuming reader whether it missed anything."""
    from datetime import timedelta

    log = EventLog(engine)
    old = datetime.now(UTC) - timedelta(hours=25)
    times = [old, old + timedelta(seconds=2), old, datetime.now(UTC)]  # the third: out of order
    for n, at in enumerate(times):
        async with engine.begin() as conn:
            await events.append(conn, events.KEY, events.key_event(f"k{n}"), at=at)

    await log.prune(old + timedelta(seconds=1))
    kept = [e.fields()["key_id"] for e in await log.after(0, limit=10)]

    assert kept == ["k1", "k2", "k3"]  # k0 went; k2 (older than the bound) stays behind k1
