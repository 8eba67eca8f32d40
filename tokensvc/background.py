"""Background work of a process: periodic refreshes and the tasks that run them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("tokensvc.background")


async def every(seconds: float, job: Callable[[], Awaitable[object]], *, what: str) -> None:
    """Run `job` every `seconds` forever; a failing round is retried at the next one.

    While a dependency is down every round fails: the first failure is logged with its
    traceback, later ones as one line, and the recovery once.
    """
    failing = False
    while True:
        await asyncio.sleep(seconds)
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
