"""A fair order for scarce password checks: a bounded, timed priority queue in front of the slots.

A credential-stuffing storm sends more password checks than argon2 can run; a plain FIFO queue
then refuses everyone alike, and an attacker who cannot guess a password still locks every user
out of the front door. Here each check comes with a `CheckPriority`:

- `SECOND_FACTOR`: kept first for callers that prove more than a trusted login does; a login's
  second step does not use it (anyone can send one with a decoy challenge: it queues as
  `NORMAL`, tokensvc.accounts.secondfactor.SecondFactors.check);
- `TRUSTED`: an identity from an address it recently logged in from (the lockout store knows);
- `NORMAL`: nothing known either way — every unknown identity, and every known one from a new
  address (the two must look alike, or the queue would tell who exists);
- `SUSPECT`: the address, the identity or the pair has recent failures.

`reserved` slots more are kept for `TRUSTED` and `SECOND_FACTOR` checks alone: however many
anonymous guesses are running, a trusted login never waits for one of them to finish.

A free slot goes to the best waiter, first come first served within a priority. When the queue
is full, a newcomer displaces the newest waiter of a strictly worse priority (who is refused at
once), or is refused itself; every waiter is refused once it has waited `timeout` seconds. So
shedding starts with suspects, then anonymous guesses, and a trusted login waits at most for the
trusted and second-factor logins ahead of it and the checks already running.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque

from tokensvc.errors import Unavailable

__all__ = ["OVERLOADED", "CheckPriority", "PriorityAdmission"]

OVERLOADED = "too many password checks in progress"


class CheckPriority(enum.IntEnum):
    """Who goes first for a password check: lower values first (see the module docstring)."""

    SECOND_FACTOR = 0
    TRUSTED = 1
    NORMAL = 2
    SUSPECT = 3


class _Shed(Exception):
    """Set on a waiter that a better-placed newcomer displaced."""


class PriorityAdmission:
    """`slots` permits; up to `max_waiting` waiters in priority order, each for `timeout` s."""

    def __init__(self, *, slots: int, max_waiting: int, timeout: float, reserved: int = 0) -> None:
        if slots < 1 or max_waiting < 0 or timeout <= 0 or reserved < 0:
            raise ValueError("need slots >= 1, max_waiting >= 0, reserved >= 0 and timeout > 0")
        self._slots = slots
        self._reserved = reserved
        self._busy = 0
        self._max_waiting = max_waiting
        self._timeout = timeout
        self._queues: dict[CheckPriority, deque[asyncio.Future[None]]] = {
            priority: deque() for priority in CheckPriority
        }
        #: Refusals by reason and priority, for tests and the benchmark's explanation.
        self.refused: dict[tuple[str, CheckPriority], int] = {}

    @property
    def capacity(self) -> int:
        """Slots in all, the reserved ones included."""
        return self._slots + self._reserved

    @property
    def waiting(self) -> int:
        """How many callers are queued."""
        return sum(len(queue) for queue in self._queues.values())

    def has_room(self, priority: CheckPriority) -> bool:
        """Whether a check of `priority` asked for now would be queued or run, not refused."""
        if self._busy < self._limit(priority) or self.waiting < self._max_waiting:
            return True
        return any(
            not waiter.done()
            for worse in CheckPriority
            if worse > priority
            for waiter in self._queues[worse]
        )

    def check(self, priority: CheckPriority) -> None:
        """Raise Unavailable if a check of `priority` asked for now would be refused.

        Raises:
            Unavailable: every slot busy and the queue full of checks at least as well placed.
        """
        if not self.has_room(priority):
            self._refuse("queue_full", priority)

    async def acquire(self, priority: CheckPriority) -> None:
        """Wait for a slot in `priority` order; give it back with `release`.

        Raises:
            Unavailable: the queue is full of better-placed checks, a better-placed newcomer
                displaced this one, or no slot came within the timeout.
        """
        if self._busy < self._limit(priority) and not any(
            self._queues[better] for better in CheckPriority if better <= priority
        ):
            self._busy += 1
            return
        if self.waiting >= self._max_waiting:
            victim = self._worst_below(priority)
            if victim is None:
                self._refuse("queue_full", priority)
            else:
                victim.set_exception(_Shed())
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        queue = self._queues[priority]
        queue.append(waiter)
        timer = loop.call_later(self._timeout, _expire, waiter)
        try:
            await waiter
        except _Shed:
            self._refuse("displaced", priority)
        except TimeoutError:
            self._discard(queue, waiter)
            self._refuse("timeout", priority)
        except BaseException:
            # Cancelled: a slot handed over meanwhile goes on to the next waiter.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()
            else:
                self._discard(queue, waiter)
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        """Give the slot back, and hand one to the best waiter that may have it."""
        self._busy -= 1
        for priority, queue in self._queues.items():  # in priority order (insertion order)
            while queue and self._busy < self._limit(priority):
                waiter = queue.popleft()
                if not waiter.done():
                    self._busy += 1
                    waiter.set_result(None)
                    return
            if queue:
                return  # the best waiters may not have this slot: no worse one may either

    def _limit(self, priority: CheckPriority) -> int:
        """How many slots may be busy for a check of `priority` to take one."""
        if priority <= CheckPriority.TRUSTED:
            return self._slots + self._reserved
        return self._slots

    def _worst_below(self, priority: CheckPriority) -> asyncio.Future[None] | None:
        """Take the newest waiter of the worst priority worse than `priority` out of its queue."""
        for worse in sorted(CheckPriority, reverse=True):
            if worse <= priority:
                return None
            queue = self._queues[worse]
            while queue:
                waiter = queue.pop()
                if not waiter.done():
                    return waiter
        return None

    def _refuse(self, reason: str, priority: CheckPriority) -> None:
        key = (reason, priority)
        self.refused[key] = self.refused.get(key, 0) + 1
        raise Unavailable(OVERLOADED, retry_after=1)

    @staticmethod
    def _discard(queue: deque[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
        try:
            queue.remove(waiter)
        except ValueError:
            pass


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
