"""The request governor: a cap on requests in progress and a bounded, timed queue behind it.

Two budgets, so a login storm (argon2, deliberately slow) cannot take the slots /v1/verify needs:
`login` (POST /v1/login, and a bakery discharge that carries HTTP Basic credentials) and `default`
(everything else). Liveness, readiness and metrics are exempt: an overloaded replica must still
answer its orchestrator and its scraper.

Under the cap the cost is a counter check; only the overflow touches the queue. What is refused
is refused at once and as JSON, with Retry-After:
- the queue is full → 503 at once. Also for the login budget: on /v1/login a 429 means "locked
  out" (and clients such as the CLI say so), and the hasher's own overload is already a 503, so
  an overloaded login must not look like a lockout;
- a queued request still has no slot after `queue_timeout` → 503. No request waits longer.

The request pipeline (tokensvc.web.pipeline) applies the budget around the handler, inside
its logging and headers, so refusals are still logged and carry the usual headers.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Final

from aiohttp import web

from tokensvc.operations.config import Config
from tokensvc.web.jsonio import json_response

# The revocation stream is long-lived by design and bounds its own subscribers
# (TOKENSVC_REVOCATION_STREAM_MAX_SUBSCRIBERS): a slot held for hours would starve the budget.
EXEMPT: Final = frozenset(("/healthz", "/readyz", "/metrics", "/v1/revocations/stream"))
LOGIN_PATH: Final = "/v1/login"


@dataclass
class BudgetStats:
    """What a budget refused and how long its queue made anyone wait (for tests and metrics)."""

    queue_full: int = 0
    timeout: int = 0
    queued: int = 0
    max_wait: float = 0.0


@dataclass
class Budget:
    """`max_concurrent` requests at once, up to `max_queue` more waiting, each for `timeout`."""

    name: str
    max_concurrent: int
    max_queue: int
    timeout: float
    overload_status: int = 503
    active: int = 0
    stats: BudgetStats = field(default_factory=BudgetStats)
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    _in_flight: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if _metrics is None:
            return
        gauge = _metrics.GOVERNOR_IN_FLIGHT.labels(pool=self.name)
        if _metrics.MULTIPROCESS:
            # Workers write their own values to files; the gauge must be set as it changes.
            self._in_flight = gauge
        else:
            # One process: read at scrape time, so the hot path touches no metric at all.
            gauge.set_function(lambda: self.active)

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued ahead; the hot path."""
        if self.active < self.max_concurrent and not self._waiters:
            self.active += 1
            if self._in_flight is not None:
                self._in_flight.set(self.active)
            return True
        return False

    async def wait(self) -> str | None:
        """Queue for a slot; None once holding one, else why not ("queue_full", "timeout")."""
        if len(self._waiters) >= self.max_queue:
            self.stats.queue_full += 1
            return "queue_full"
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        self.stats.queued += 1
        _observe_depth(self)
        started = loop.time()
        expiry = loop.call_later(self.timeout, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            self.stats.timeout += 1
            self._discard(waiter)
            return "timeout"
        except BaseException:
            # Cancelled (the client went away): a slot handed over meanwhile goes to the next one.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()
            else:
                self._discard(waiter)
            raise
        finally:
            expiry.cancel()
            waited = loop.time() - started
            self.stats.max_wait = max(self.stats.max_wait, waited)
        if _metrics is not None:
            _metrics.GOVERNOR_QUEUE_WAIT.labels(pool=self.name).observe(waited)
        return None

    def release(self) -> None:
        """Hand the slot to the longest waiter still waiting, or give it back."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                _observe_depth(self)
                return
        self.active -= 1
        if self._in_flight is not None:
            self._in_flight.set(self.active)

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass
        _observe_depth(self)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


@dataclass
class Governor:
    default: Budget
    login: Budget
    bakery_discharge_path: str = "/bakery/discharge"

    def budget_for(self, request: web.Request) -> Budget | None:
        path = request.path
        if path in EXEMPT:
            return None
        if request.method == "POST" and (
            path == LOGIN_PATH
            or (
                path == self.bakery_discharge_path
                and request.headers.get("Authorization", "")[:6].lower() == "basic "
            )
        ):
            return self.login
        return self.default

    @classmethod
    def from_config(cls, config: Config) -> Governor:
        timeout = config.queue_timeout.total_seconds()
        return cls(
            default=Budget("default", config.max_concurrent, config.max_queue, timeout),
            login=Budget("login", config.login_max_concurrent, config.login_max_queue, timeout),
            bakery_discharge_path=config.bakery.prefix.rstrip("/") + "/discharge",
        )


GOVERNOR: Final = web.AppKey("governor", Governor)

_MESSAGES: Final = {
    "queue_full": "server busy: too many requests in progress, try again shortly",
    "timeout": "server busy: no capacity within the queue timeout, try again shortly",
}


def refusal(request: web.Request, budget: Budget, reason: str, governor: Governor) -> web.Response:
    """The answer to a request the budget could not take (`reason` as `Budget.wait` gives it)."""
    status = budget.overload_status if reason == "queue_full" else 503
    retry_after = str(max(1, math.ceil(budget.timeout)))
    _count_overload(budget, reason)
    if request.path == governor.bakery_discharge_path:
        # The bakery client reads {"Code", "Message"}, as every other discharger answer.
        code = "too many requests" if status == 429 else "service unavailable"
        body: dict[str, object] = {"Code": code, "Message": _MESSAGES[reason]}
    else:
        code = "too_many_requests" if status == 429 else "overloaded"
        body = {"error": {"code": code, "message": _MESSAGES[reason]}}
    return json_response(body, status=status, headers={"Retry-After": retry_after})


# ---- metrics hooks ---------------------------------------------------------------------------


# Queue depth, waits and refusals are recorded off the hot path; under the cap a request costs
# two sets of a pre-bound in-flight gauge.


def _observe_depth(budget: Budget) -> None:
    if _metrics is not None:
        _metrics.GOVERNOR_QUEUE_DEPTH.labels(pool=budget.name).set(len(budget._waiters))


def _count_overload(budget: Budget, reason: str) -> None:
    if _metrics is not None:
        _metrics.GOVERNOR_REJECTIONS.labels(pool=budget.name, reason=reason).inc()


_metrics: ModuleType | None
try:  # the hooks are no-ops in a build without tokensvc.operations.metrics
    from tokensvc.operations import metrics as _metrics
except ImportError:  # pragma: no cover
    _metrics = None
