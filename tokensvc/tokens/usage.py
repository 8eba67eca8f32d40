"""Token last-use times: recorded in memory on every verify, written to the registry in batches.

A verify must not wait on the database or contend for a row lock (a hot token is verified
thousands of times a second across replicas), so it only sets `pending[token_id] = now` — one
dict store. A background task swaps the dict out every `flush_interval` seconds and writes it with
one UPDATE per batch that never moves a time backwards (replicas flush in any order). Listing
`last_used_at` therefore lags by up to `flush_interval`; a failed flush keeps its entries for the
next round, and the last batch is flushed when the process stops.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from tokensvc.operations.background import every, tasks_running
from tokensvc.operations.outages import Outages
from tokensvc.tokens.registry import TokenRegistry

log = logging.getLogger("tokensvc.tokens.usage")

# Past this many distinct tokens waiting, further ones are dropped until the next flush: usage
# is best effort, memory is not (~200 bytes a token: 20,000 are ~4 MB of a verify worker's RSS,
# 200,000 were 40 MB). A flush is not started early when it fills: a stream of distinct tokens
# would then write tens of thousands of rows a second instead of one batch a minute.
MAX_PENDING = 20_000


class UsageRecorder:
    def __init__(
        self,
        registry: TokenRegistry,
        *,
        flush_interval: float = 60.0,
        outages: Outages | None = None,
    ) -> None:
        self._registry = registry
        self._outages = outages
        self.flush_interval = flush_interval
        self.pending: dict[str, float] = {}

    def record(self, token_id: str, now: float) -> None:
        """Note a use (no I/O)."""
        pending = self.pending
        if len(pending) < MAX_PENDING or token_id in pending:
            pending[token_id] = now

    async def flush(self) -> int:
        """Write what was recorded since the last flush; how many tokens."""
        batch, self.pending = self.pending, {}
        if not batch:
            return 0
        try:
            await self._registry.touch(
                {tid: datetime.fromtimestamp(ts, UTC) for tid, ts in batch.items()}
            )
        except BaseException:
            # Put the batch back (newer uses recorded meanwhile win) for the next round.
            for tid, ts in batch.items():
                if ts > self.pending.get(tid, 0.0):
                    self.pending[tid] = ts
            raise
        return len(batch)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        flushing = every(
            self.flush_interval,
            self.flush,
            what="flushing token last-use times",
            outages=self._outages,
            dependency="database",
        )
        async with tasks_running(flushing):
            yield
        try:
            await self.flush()
        except Exception:
            log.warning("final flush of token last-use times failed", exc_info=True)
