"""This process's tail of the revocation event log, and the stream subscriptions it feeds.

One reader per process follows the log (tokensvc.tokens.events) by id: it wakes when this process
revokes something and when Redis pub/sub delivers another replica's revocation (both through
Revocations' `on_change`), and polls every `poll_interval` otherwise (no Redis; SQLite embedded
mode; a lost message). Each event it reads is first applied to this process's in-memory view
(revoked ids, keys, generations: `on_event`), then `cursor` moves past it. So a verdict computed
after reading `cursor` reflects every event up to it: the contract of the verdict's `cursor`.

Subscribers never get a queue of their own: each keeps only its position (an id) and reads what
is after it from a shared ring of recent events, or from the database in pages if it fell behind
the ring. A slow subscriber therefore costs no memory, only its own socket buffer; the number of
subscribers is bounded (`max_subscribers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from typing import Final

from tokensvc.errors import Unavailable
from tokensvc.operations import metrics
from tokensvc.operations.background import every, tasks_running
from tokensvc.operations.outages import Outages, is_outage
from tokensvc.tokens.events import EventLog, RevocationEvent

log = logging.getLogger("tokensvc.tokens.feed")

#: Events read per query, and the most a subscriber is sent per write.
PAGE: Final = 500
#: How many recent events the shared ring holds (subscribers further behind read the database).
RING: Final = 4096
#: How often (seconds) a waiting stream looks whether its subscriber is still connected.
PRESENCE_CHECK: Final = 1.0
#: How often old events are pruned.
PRUNE_EVERY: Final = 3600.0

RESET_UNKNOWN: Final = "unknown cursor: not an event id of this deployment's log"
RESET_PRUNED: Final = "cursor older than the retained event log"


class FeedClosed(Exception):
    """The process is shutting down: subscriptions end."""


class RevocationFeed:
    def __init__(
        self,
        log_: EventLog,
        *,
        poll_interval: float,
        retention: timedelta,
        clock: Callable[[], datetime],
        max_subscribers: int,
        max_per_subject: int,
        heartbeat: float,
        outages: Outages | None = None,
    ) -> None:
        self._log = log_
        self.poll_interval = poll_interval
        self.retention = retention
        self.max_subscribers = max_subscribers
        self.max_per_subject = max_per_subject
        self.heartbeat = heartbeat
        self._clock = clock
        self._outages = outages
        #: The newest event id this process has read and applied.
        self.cursor = 0
        self.on_event: list[Callable[[RevocationEvent], None]] = []
        self.subscribers = 0
        self._by_subject: dict[str, int] = {}
        self._recent: deque[RevocationEvent] = deque(maxlen=RING)
        # The ring holds every event with an id above this one (up to `cursor`).
        self._floor = 0
        self._wake = asyncio.Event()
        self._reading = asyncio.Lock()
        self._advanced: asyncio.Future[None] | None = None
        self._closed = False
        # loop.time() of the last read of the log that succeeded (events or none): `fresh`.
        self._read_at = float("-inf")

    def wake(self) -> None:
        """Something was revoked (here, or another replica said so): read the log now."""
        self._wake.set()

    async def catch_up(self) -> None:
        """Read and apply every event after `cursor`."""
        async with self._reading:
            advanced = False
            while True:
                batch = await self._log.after(self.cursor, limit=PAGE)
                for event in batch:
                    for callback in self.on_event:
                        try:
                            callback(event)
                        except Exception:  # a bad event must not stop the tail
                            log.exception("applying revocation event %d failed", event.id)
                    if len(self._recent) == RING:
                        self._floor = self._recent[0].id
                    self._recent.append(event)
                    self.cursor = event.id
                    advanced = True
                if batch:
                    metrics.STREAM_EVENTS.inc(len(batch))
                if len(batch) < PAGE:
                    break
            self._read_at = asyncio.get_running_loop().time()
            if advanced:
                self._notify()

    def fresh(self) -> bool:
        """Whether this process has read the log lately (within a heartbeat and two polls): what
        it tells subscribers and verdicts covers every revocation but the last moments. Not
        fresh (its database is unreachable), it may not vouch that nothing was revoked: the
        stream sends no heartbeat and ends, new subscriptions and verdicts get 503, and clients
        stop trusting their caches after their bound (red team: a replica that could not read
        the log kept its subscribers live with pings, and they allowed a revoked token)."""
        age = asyncio.get_running_loop().time() - self._read_at
        return age <= self.heartbeat + 2 * self.poll_interval

    def check_fresh(self) -> None:
        """Unavailable (503) unless `fresh`."""
        if not self.fresh():
            raise Unavailable(
                "revocation events cannot be read now", retry_after=max(1, int(self.poll_interval))
            )

    def _notify(self) -> None:
        waiter, self._advanced = self._advanced, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _tail(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            try:
                await self.catch_up()
            except Exception as exc:  # retried at the next wake or poll
                if self._outages is not None and is_outage(exc):
                    self._outages.failed("database", exc, during="reading revocation events")
                else:
                    log.exception("reading revocation events failed")
                await asyncio.sleep(self.poll_interval)

    async def _prune(self) -> None:
        await self._log.prune(self._clock() - self.retention)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start at the newest event, then follow the log until the block exits.

        Enter it before the in-memory view is loaded (Revocations.refresh, the generations'
        refresh): what committed before the starting id is in that load, what comes after is
        read here.
        """
        self.cursor = self._floor = (await self._log.bounds())[1]
        self._read_at = asyncio.get_running_loop().time()
        pruning = every(
            PRUNE_EVERY,
            self._prune,
            what="pruning revocation events",
            outages=self._outages,
            dependency="database",
        )
        async with tasks_running(self._tail(), pruning):
            try:
                yield
            finally:
                self.close()

    def close(self) -> None:
        """End every subscription (at shutdown; aiohttp waits for open handlers)."""
        self._closed = True
        self._notify()

    async def wait_beyond(self, position: int, seconds: float) -> None:
        """Return once `cursor` is past `position`, or after `seconds`; FeedClosed at shutdown."""
        if self._closed:
            raise FeedClosed
        if self.cursor > position:
            return
        if self._advanced is None:
            self._advanced = asyncio.get_running_loop().create_future()
        # asyncio.wait never cancels the shared future, whatever happens to this waiter.
        await asyncio.wait([self._advanced], timeout=seconds)
        if self._closed:
            raise FeedClosed

    async def _wait_while_connected(
        self, position: int, connected: Callable[[], bool] | None
    ) -> bool:
        """wait_beyond for a heartbeat, looking every PRESENCE_CHECK seconds whether the
        subscriber is still `connected`; False as soon as it is not. A stream whose client left
        must give its slot back now, not at its next write a heartbeat away (red team,
        helper-59: a fleet reconnecting after a network blip got 503s that long), and the
        limits count every slot held (helper-60: not counting departed ones let a client that
        connects and leaves in a loop pile up streams without bound)."""
        if connected is None:
            await self.wait_beyond(position, self.heartbeat)
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.heartbeat
        while (left := deadline - loop.time()) > 0:
            await self.wait_beyond(position, min(left, PRESENCE_CHECK))
            if not connected():
                return False
            if self.cursor > position:
                break
        return True

    async def events_after(self, position: int) -> list[RevocationEvent]:
        """Up to PAGE events after `position` that this process has applied, in id order."""
        newest = self.cursor
        if position >= newest:
            return []
        if position >= self._floor:
            out: list[RevocationEvent] = []
            for event in reversed(self._recent):
                if event.id <= position:
                    break
                out.append(event)
            out.reverse()
            return out[:PAGE]
        return [e for e in await self._log.after(position, limit=PAGE) if e.id <= newest]

    async def start(self, cursor: int | None) -> tuple[int, str | None]:
        """Where a subscriber resuming from `cursor` starts, and why it must reset (or None);
        Unavailable while this process cannot read the log (`fresh`).

        None: from now. An id this log never had (ahead of it, or not a number: -1), or one
        whose successors were pruned, means the client cannot know what it missed: it starts
        from now after a `reset`.
        """
        self.check_fresh()
        if cursor is None:
            return self.cursor, None
        if cursor > self.cursor:
            await self.catch_up()  # another replica may be a few milliseconds ahead of us
        if cursor < 0 or cursor > self.cursor:
            return self.cursor, RESET_UNKNOWN
        if cursor >= self._floor:
            return cursor, None
        oldest, _newest = await self._log.bounds()
        if oldest and cursor < oldest - 1:
            return self.cursor, RESET_PRUNED
        return cursor, None

    @contextlib.contextmanager
    def slot(self, subject: str) -> Iterator[None]:
        """Hold one of the `max_subscribers` stream slots, at most `max_per_subject` of them for
        one subject (so one service, or one leaked service token, cannot take them all);
        Unavailable (503) when none is free."""
        if self.subscribers >= self.max_subscribers:
            raise Unavailable("too many revocation stream subscribers", retry_after=5)
        held = self._by_subject.get(subject, 0)
        if held >= self.max_per_subject:
            raise Unavailable("too many revocation streams for this subject", retry_after=5)
        self.subscribers += 1
        self._by_subject[subject] = held + 1
        metrics.STREAM_SUBSCRIBERS.inc()
        try:
            yield
        finally:
            self.subscribers -= 1
            left = self._by_subject[subject] - 1
            if left:
                self._by_subject[subject] = left
            else:
                del self._by_subject[subject]
            metrics.STREAM_SUBSCRIBERS.dec()

    async def follow(
        self,
        position: int,
        *,
        until: int | None = None,
        connected: Callable[[], bool] | None = None,
    ) -> AsyncGenerator[list[RevocationEvent], None]:
        """Batches of events after `position` as they are applied here; an empty batch when
        `heartbeat` seconds pass without one (the caller sends a ping), if the feed is `fresh`:
        otherwise it ends, so the subscriber reconnects (to a replica that can read the log,
        or to a 503). Ends at shutdown, or once past `until` when it is given (a catch-up that
        does not wait)."""
        while True:
            if until is not None and position >= until:
                return
            batch = await self.events_after(position)
            if until is not None:
                batch = [e for e in batch if e.id <= until]
                if not batch:
                    return
            if batch:
                position = batch[-1].id
                yield batch
                continue
            try:
                if not await self._wait_while_connected(position, connected):
                    return
            except FeedClosed:
                return
            if self.cursor <= position:
                if not self.fresh():
                    return
                yield []
