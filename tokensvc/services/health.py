"""Readiness: whether this process can do its main job, verifying tokens, and what is degraded.

A process is ready while it can verify: its database answers (any root key can be read), or,
with the database down, the root key it mints with is still in memory and unexpired (tokens
minted on it, which is every token minted since the last rotation, verify without I/O). Redis
is never needed to verify, so Redis down leaves the process ready and *degraded*: logins fail
closed (503) and revocations reach other replicas by polling. A readiness probe that said 503
then would take every healthy verifier out of its load balancer at once.

Each dependency's state is also probed in the background every `MONITOR_INTERVAL` seconds, so
`tokensvc_dependency_up` and the outage log lines (tokensvc.operations.outages) follow it even
when nothing asks /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystore import Keyring
from tokensvc.operations import metrics
from tokensvc.operations.background import every, tasks_running
from tokensvc.operations.outages import Outages
from tokensvc.storage.db import run_db

#: Seconds between background probes of the dependencies (a `SELECT 1` and a Redis PING).
MONITOR_INTERVAL: Final = 5.0
#: The longest a probe may take before its dependency counts as unavailable. A blackholed
#: database host would otherwise hold /readyz for the driver's 5 s connect timeout, past a
#: readiness probe's own timeout: the process would be taken out of service for a slow answer
#: about a dependency that verifying does not even need.
PROBE_TIMEOUT: Final = 1.0

#: What stops working while a dependency is down, as /readyz says it.
IMPACT: Final = {
    "database": "minting, logins and admin calls answer 503; /v1/verify serves tokens whose "
    "root key this process holds in memory, for TOKENSVC_REVOCATION_STALE_AFTER (then 503)",
    "redis": "logins answer 503 (lockout fails closed); revocations reach other replicas by "
    "polling instead of pub/sub",
}


@dataclass(frozen=True, slots=True)
class Readiness:
    """The answer of /readyz: ready to verify or not, and each dependency's state."""

    ready: bool
    checks: dict[str, str]
    # How /v1/verify is served: "ok", "cached keys" (database down) or "unavailable".
    verify: str
    degraded: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if not self.ready:
            return "not ready"
        return "degraded" if self.degraded else "ready"


class HealthService:
    """Never raises: a dependency that does not answer is reported, not thrown."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        probes: Mapping[str, Callable[[], Awaitable[object]]],
        keyring: Keyring | None = None,
        clock: Callable[[], datetime] | None = None,
        outages: Outages | None = None,
    ) -> None:
        self._engine = engine
        self._probes = probes
        self._keyring = keyring
        self._clock = clock
        self._outages = outages if outages is not None else Outages(dependencies=())

    async def readiness(self) -> Readiness:
        """Probe every dependency now; whether this process can verify, and what is degraded."""

        async def ping(conn: AsyncConnection) -> None:
            await conn.execute(text("SELECT 1"))

        async def database() -> None:
            await run_db(self._engine, ping, write=False, retry=False, what="the database")

        probes = {"database": database, **self._probes}
        # Concurrently, each bounded: /readyz answers within PROBE_TIMEOUT whatever is down.
        results = await asyncio.gather(*(self._run(probe) for probe in probes.values()))
        checks: dict[str, str] = {}
        for name, failure in zip(probes, results, strict=True):
            if failure is None:
                checks[name] = "ok"
                self._outages.ok(name)
            else:
                checks[name] = "unavailable"
                self._outages.failed(name, failure, during="health probe")

        if checks["database"] == "ok":
            verify = "ok"
        elif self._signing_key_in_memory():
            verify = "cached keys"
        else:
            verify = "unavailable"
        ready = verify != "unavailable"
        metrics.READY.set(1 if ready else 0)
        degraded = {name: IMPACT.get(name, "") for name, state in checks.items() if state != "ok"}
        return Readiness(ready=ready, checks=checks, verify=verify, degraded=degraded)

    @staticmethod
    async def _run(probe: Callable[[], Awaitable[object]]) -> BaseException | None:
        """None if `probe` answered within PROBE_TIMEOUT, else why not."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await probe()
        except TimeoutError:
            return TimeoutError(f"no answer within {PROBE_TIMEOUT:g}s")
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means unavailable
            return exc
        return None

    def _signing_key_in_memory(self) -> bool:
        """Whether the key this process mints with (the newest it knows) is held and unexpired."""
        if self._keyring is None or self._clock is None:
            return False
        created = self._keyring.current_created_at
        if created is None:
            return False
        return self._keyring.policy.expires_at(created) > self._clock()

    async def _probe(self) -> None:
        await self.readiness()

    @contextlib.asynccontextmanager
    async def monitoring(self) -> AsyncIterator[None]:
        """Probe the dependencies every MONITOR_INTERVAL seconds while the block runs."""
        async with tasks_running(every(MONITOR_INTERVAL, self._probe, what="health probes")):
            yield
