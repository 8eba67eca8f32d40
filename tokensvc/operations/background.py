"""Background work of a process: periodic refreshes and the tasks that run them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("tokensvc.operations.background")


async def every(seconds: float, job: Callable[[], Awaitable[object]], *, what: str) -> None:
    """Run `job` every `seconds` forever; a failing round is retried at the next one.

    Rounds start at a fixed rate (a round's own duration does not push the next one back), so a
    refresh documented as "every 1 s" sees a change at most 1 s plus one round after it is made;
    a round that overruns its slot is followed by the next a whole interval later, never at once.
    While a dependency is down every round fails: the first failure is logged with its
    traceback, later ones as one line, and the recovery once.
    """
    loop = asyncio.get_running_loop()
    failing = False
    next_round = loop.time() + seconds
    while True:
        await asyncio.sleep(max(0.0, next_round - loop.time()))
        next_round += seconds
        try:
            await job()
        except Exception as exc:
            if not failing:
                log.warning("%s failed; retrying every %.0fs", what, seconds, exc_info=True)
            else:
                log.warning("%s still failing: %s", what, type(exc).__name__)
            failing = True
        else:
            if failing:
                log.info("%s recovered", what)
            failing = False
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
