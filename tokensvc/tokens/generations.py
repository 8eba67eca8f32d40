"""The current token generation of every subject, held in memory for the verify path.

A subject's one generation (tokensvc.tokens.subjects) goes up on every event that must revoke its
earlier tokens: revoke-all, a password change, disabling, losing a role, deleting the user. Tokens
carry the generation they were minted at and die once it is passed.

Nearly every subject is at generation 0, and the few that are not are few: so each process keeps
all raised generations in a dict and refreshes it in the background, and a verify never waits on
the database. Changes made through this process apply at once; changes made through another
replica apply within `refresh_interval` (plus the `overlap` that absorbs clock skew between
replicas when reading `updated_at`): that is the documented propagation bound.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from tokensvc.operations.background import every, tasks_running
from tokensvc.operations.outages import Outages
from tokensvc.tokens.subjects import SubjectStore

log = logging.getLogger("tokensvc.tokens.generations")


class SubjectGenerations:
    def __init__(
        self,
        subjects: SubjectStore,
        *,
        refresh_interval: float = 2.0,
        overlap: timedelta = timedelta(seconds=30),
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        outages: Outages | None = None,
    ) -> None:
        self._subjects = subjects
        self._outages = outages
        self.refresh_interval = refresh_interval
        self._overlap = overlap
        self._wall_clock = wall_clock
        self._raised: dict[str, int] = {}
        self._since: datetime | None = None

    def current(self, subject: str) -> int:
        """The subject's generation as this process knows it (no I/O)."""
        return self._raised.get(subject, 0)

    def _merge(self, subject: str, generation: int) -> None:
        # Generations only go up; a stale read never lowers what we know.
        if generation > self._raised.get(subject, 0):
            self._raised[subject] = generation

    async def refresh(self) -> None:
        """Read what changed since the last refresh (everything, the first time)."""
        started = self._wall_clock()
        for subject, generation in await self._subjects.generations_since(self._since):
            self._merge(subject, generation)
        self._since = started - self._overlap

    async def fetch(self, subject: str) -> int:
        """The subject's generation read fresh from the database (for minting)."""
        self._merge(subject, await self._subjects.generation(subject))
        return self.current(subject)

    def remember(self, subject: str, generation: int) -> None:
        """Record a value this process just wrote (or heard another replica wrote)."""
        self._merge(subject, generation)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Load everything, then keep refreshing in the background until the block exits."""
        await self.refresh()
        refreshing = every(
            self.refresh_interval,
            self.refresh,
            what="refreshing subject generations",
            outages=self._outages,
            dependency="database",
        )
        async with tasks_running(refreshing):
            yield
