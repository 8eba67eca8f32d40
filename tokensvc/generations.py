"""The current token generation of each subject, cached for the verify path.

A subject's generation goes up when its password changes, it is disabled or loses a role (the
users table), or it is deleted (the subject_generations floor; later also revoke-all). Tokens
carry the generation they were minted at and die once it is passed. Reading it from the database
on every verify would put queries on the hot path, so values are cached for `ttl` seconds: a
change made through this process is seen at once, one made through another replica within `ttl`
(the documented propagation bound).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from tokensvc.subjects import SubjectStore
from tokensvc.users import UserStore


class SubjectGenerations:
    def __init__(
        self,
        users: UserStore,
        subjects: SubjectStore,
        *,
        ttl: float = 5.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = users
        self._subjects = subjects
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def get_cached(self, subject: str) -> int | None:
        entry = self._cache.get(subject)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    async def fetch(self, subject: str) -> int:
        """Read the subject's current generation from the database and cache it."""
        user = await self._users.get(subject)
        from_user = user.generation if user is not None and user.name == subject else 0
        value = max(from_user, await self._subjects.generation(subject))
        self.remember(subject, value)
        return value

    def remember(self, subject: str, generation: int) -> None:
        """Record a value this process just wrote or read."""
        self._cache[subject] = (generation, self._clock() + self._ttl)
        self._cache.move_to_end(subject)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def forget(self, subject: str) -> None:
        self._cache.pop(subject, None)

    async def revoke_all(self, subject: str) -> int:
        """Kill every token of `subject` issued so far; returns the new generation."""
        current = await self.fetch(subject)
        value = await self._subjects.raise_floor(subject, at_least=current + 1)
        self.remember(subject, value)
        return value
