"""Background work of a process: periodic refreshes and the tasks that run them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from tokensvc.operations.outages import Outage, Outages, is_outage

log = logging.getLogger("tokensvc.operations.background")


async def every(
    seconds: float,
    job: Callable[[], Awaitable[object]],
    *,
    what: str,
    outages: Outages | None = None,
    dependency: str | None = None,
) -> None:
    """Run `job` every `seconds` forever; a failing round is retried at the next one.

    Rounds start at a fixed rate (a round's own duration does not push the next one back), so a
    refresh documented as "every 1 s" sees a change at most 1 s plus one round after it is made;
    a round that overruns its slot is followed by the next a whole interval later, never at once.

    While a round keeps failing the log gets one line when the failures start, at most one a
    minute while they last and one when they end (tokensvc.operations.outages). A failure that is
    `dependency` being down is reported to `outages` instead, so one outage is one line however
    many jobs notice it; any other failure is this job's own, logged with its traceback once.
    """
    loop = asyncio.get_running_loop()
    own = Outage(what, logger=log, traceback=True)
    next_round = loop.time() + seconds
    while True:
        await asyncio.sleep(max(0.0, next_round - loop.time()))
        next_round += seconds
        try:
            await job()
        except Exception as exc:  # noqa: BLE001 - a failed round is logged (sparingly) and retried
            if outages is not None and dependency is not None and is_outage(exc):
                outages.failed(dependency, exc, during=what)
            else:
                own.failed(exc)
        else:
            own.recovered()
            if outages is not None and dependency is not None:
                outages.ok(dependency)
        if next_round <= loop.time():  # overran: wait a whole interval from now
            next_round = loop.time() + seconds


@contextlib.asynccontextmanager
async def tasks_running(*jobs: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `jobs` as tasks for the duration of the block; cancel and await them after it."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
