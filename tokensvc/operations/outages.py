"""Outages, logged at a bounded rate: once when one starts, with its cause; at most once a minute
while it lasts, with a count; once when it ends.

A dependency that is down makes every background round and every probe fail, several times a
second across a server's processes. Logging each one (with a traceback, as the revocation
subscription used to) wrote ~3 KB every half second for as long as Redis was down: the cause
drowned in repeats and log storage paid for it. Here an outage is a state, and only its changes
(and a periodic reminder) are written.

`Outages` keeps one such state per dependency ("database", "redis"): whoever sees a dependency fail
reports it here (the health monitor, the revocation subscription, the background refreshes), so
one outage is one log line however many parts of the process notice it, and the
`tokensvc_dependency_up` gauge follows the same state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from keystore.errors import StoreUnavailable
from tokensvc.operations import metrics

log = logging.getLogger("tokensvc.outages")

#: The longest quiet time while an outage lasts: one "still failing" line per this many seconds.
REPEAT_EVERY: Final = 60.0

# What "the dependency is down" looks like, wherever in a cause chain it appears. Anything else
# (a bug, bad data) is not an outage and keeps its traceback.
_OUTAGE_TYPES: Final = (
    StoreUnavailable,
    OSError,  # includes ConnectionRefusedError
    TimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
    InterfaceError,
)


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    seen = 0
    while exc is not None and seen < 8:
        yield exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says a dependency cannot be reached, not that we erred."""
    if type(exc).__name__ == "StorageUnavailable":  # tokensvc.storage's, without importing it
        return True
    return any(isinstance(cause, _OUTAGE_TYPES) for cause in _causes(exc))


def cause_of(exc: BaseException) -> str:
    """One line naming what failed: the innermost cause's type and message, trimmed."""
    innermost = exc
    for cause in _causes(exc):
        innermost = cause
    message = " ".join(str(innermost).split())[:200]
    return f"{type(innermost).__name__}: {message}" if message else type(innermost).__name__


class Outage:
    """One thing that can fail repeatedly (a dependency, a background job), logged sparingly.

    `traceback`: the first failure of an outage is logged with its traceback (for jobs whose
    failure may be a bug); otherwise with a one-line cause (a dependency that is simply down).
    """

    def __init__(
        self,
        what: str,
        *,
        logger: logging.Logger = log,
        repeat_every: float = REPEAT_EVERY,
        traceback: bool = False,
        words: tuple[str, str, str] = ("failed", "still failing", "recovered"),
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.what = what
        self._log = logger
        self._repeat_every = repeat_every
        self._traceback = traceback
        self._words = words
        self._clock = clock
        self._on_change = on_change
        self.down = False
        self._since = 0.0
        self._failures = 0  # since the last line written
        self._total = 0  # in this outage
        self._last_line = -repeat_every  # when a start or reminder was last written
        self._announced = False  # whether this outage's start was written (so its end is too)

    def failed(self, exc: BaseException, *, during: str | None = None) -> None:
        """Record a failure: written if it starts an outage (at most once per `repeat_every`),
        else counted into the next reminder."""
        now = self._clock()
        self._failures += 1
        self._total += 1
        if not self.down:
            self.down = True
            self._since = now
            self._total = 1
            if self._on_change is not None:
                self._on_change(False)
            # A dependency that flaps starts a new outage every few seconds: its starts are held
            # to the same rate as reminders, and the ones held back are counted in the next line.
            self._announced = now - self._last_line >= self._repeat_every
            if self._announced:
                self._write_start(exc, during, now)
            return
        if now - self._last_line >= self._repeat_every:
            self._log.warning(
                "%s %s after %.0fs: %d failures since the last report; last: %s",
                self.what,
                self._words[1],
                now - self._since,
                self._failures,
                cause_of(exc),
            )
            self._failures = 0
            self._last_line = now
            self._announced = True

    def recovered(self) -> None:
        """Record a success: ends an outage, written once if its start was."""
        if not self.down:
            return
        now = self._clock()
        self.down = False
        if self._on_change is not None:
            self._on_change(True)
        if self._announced:
            self._log.warning(
                "%s %s after %.0fs (%d failures)",
                self.what,
                self._words[2],
                now - self._since,
                self._total,
            )
        self._failures = 0

    def _write_start(self, exc: BaseException, during: str | None, now: float) -> None:
        where = f" ({during})" if during else ""
        info = exc if self._traceback else None
        self._log.warning(
            "%s %s%s: %s; retrying", self.what, self._words[0], where, cause_of(exc), exc_info=info
        )
        self._failures = 0
        self._last_line = now


#: How a dependency's outage reads: "redis unavailable (…)", "redis still unavailable after 60s",
#: "redis available again after 75s".
DEPENDENCY_WORDS: Final = ("unavailable", "still unavailable", "available again")


class Outages:
    """This process's view of its dependencies: up or down, logged as outages, exported as gauges."""

    def __init__(
        self,
        *,
        dependencies: tuple[str, ...] = ("database",),
        repeat_every: float = REPEAT_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._watches: dict[str, Outage] = {}
        for name in dependencies:
            gauge = metrics.DEPENDENCY_UP.labels(name)
            gauge.set(1)

            def on_change(up: bool, gauge: Gauge = gauge) -> None:
                gauge.set(1 if up else 0)

            self._watches[name] = Outage(
                name,
                words=DEPENDENCY_WORDS,
                repeat_every=repeat_every,
                clock=clock,
                on_change=on_change,
            )

    def failed(self, dependency: str, exc: BaseException, *, during: str) -> None:
        """`dependency` failed while doing `during`."""
        watch = self._watches.get(dependency)
        if watch is not None:
            watch.failed(exc, during=during)

    def ok(self, dependency: str) -> None:
        """`dependency` answered."""
        watch = self._watches.get(dependency)
        if watch is not None:
            watch.recovered()

    def is_down(self, dependency: str) -> bool:
        watch = self._watches.get(dependency)
        return watch is not None and watch.down
