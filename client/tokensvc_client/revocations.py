"""What the revocation stream has told this process: revoked tokens, subject generations, revoked
root keys, and how far the stream has been applied (its cursor).

Every cached decision consults this state (tokensvc_client.client), so a verdict fetched just
before a revocation arrived is refused as soon as the revocation is here, whether or not the
verdict was cached. Pure bookkeeping: no I/O, times come in as arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Revoked token ids are kept until their token expires; this many applied events between sweeps.
_PRUNE_EVERY = 1024


def cursor_reached(have: str | None, want: str) -> bool:
    """Whether a stream applied up to `have` has seen every event up to `want`.

    Event ids are opaque but increase monotonically; decimal ids compare as numbers, anything
    else as strings (the server's ids are one or the other, never mixed).
    """
    if have is None:
        return False
    if have.isdecimal() and want.isdecimal():
        return int(have) >= int(want)
    return have >= want


class RevocationState:
    """Revocation facts from the stream, checked on every local decision."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.revoked_tokens: dict[str, float] = {}  # token id -> unix time it expires anyway
        self.generations: dict[str, int] = {}  # subject -> newest generation announced
        self.revoked_keys: set[str] = set()
        #: The id of the newest event applied (or the server's cursor at hello when starting
        #: fresh): what Last-Event-ID resumes from, and what a verdict's cursor is compared to.
        self.cursor: str | None = None
        #: Where the stream started knowing (a fresh start's, or a reset's, cursor): events
        #: before it were never applied, so a verdict older than it may not be cached.
        self.start: str | None = None
        #: The time.monotonic() until which these facts are known to be complete: the revocation
        #: stream's liveness deadline (0.0: not connected, or not caught up), kept current by
        #: RevocationStream. A plain attribute: every cached decision reads it.
        self.trusted_until = 0.0
        #: Called on every change to the facts above (and by `invalidate`): nothing decided
        #: before it may be reused (TokensvcClient forgets its remembered allows).
        self._on_change = on_change
        self._since_prune = 0

    def invalidate(self) -> None:
        """Nothing decided before now may be reused (the stream lost events: a reset)."""
        self._on_change()

    def reached(self, cursor: str) -> bool:
        """Whether every event up to `cursor` has been applied."""
        return cursor_reached(self.cursor, cursor)

    def covers(self, cursor: str) -> bool:
        """Whether a verdict as of `cursor` may be cached: every event after it has been
        applied here (it is no newer than the stream, and no older than where the stream
        started knowing; red team: a fresh client cached a lagging replica's verdict, issued
        before a revocation the client's stream had started after)."""
        return self.reached(cursor) and (self.start is None or cursor_reached(cursor, self.start))

    def advance(self, event_id: str | None) -> None:
        """Note that the event `event_id` is applied (ids never move the cursor backwards)."""
        if event_id is not None and not cursor_reached(self.cursor, event_id):
            self.cursor = event_id

    def revoke_token(self, token_id: str, expires_at: float | None, *, now: float) -> None:
        """A revoked token id, remembered until the token would have expired anyway."""
        self.revoked_tokens[token_id] = float("inf") if expires_at is None else expires_at
        self._on_change()
        self._since_prune += 1
        if self._since_prune >= _PRUNE_EVERY:
            self.prune(now)

    def raise_generation(self, subject: str, generation: int) -> None:
        """A subject's generation went up: its tokens minted under older generations are revoked."""
        if generation > self.generations.get(subject, -1):
            self.generations[subject] = generation
            self._on_change()

    def revoke_key(self, key_id: str) -> None:
        """A revoked root key: every token signed by it is bad."""
        self.revoked_keys.add(key_id)
        self._on_change()

    def generation(self, subject: str, known: int) -> int:
        """The subject's current generation: the newest of the verdict's and the stream's."""
        streamed = self.generations.get(subject)
        return known if streamed is None or streamed < known else streamed

    def prune(self, now: float) -> None:
        """Forget revoked token ids whose tokens have expired (they fail on expiry anyway)."""
        self._since_prune = 0
        expired = [t for t, exp in self.revoked_tokens.items() if exp <= now]
        for token_id in expired:
            del self.revoked_tokens[token_id]

    def apply(self, kind: str, data: dict[str, Any], *, now: float) -> bool:
        """Apply one stream event of type `kind`; False if its data is not what the kind needs."""
        if kind == "token":
            token_id, expires_at = data.get("token_id"), data.get("expires_at")
            if not isinstance(token_id, str) or not (
                expires_at is None or isinstance(expires_at, int | float)
            ):
                return False
            self.revoke_token(token_id, expires_at, now=now)
            return True
        if kind == "generation":
            subject, generation = data.get("subject"), data.get("generation")
            if not isinstance(subject, str) or type(generation) is not int:
                return False
            self.raise_generation(subject, generation)
            return True
        if kind == "key":
            key_id = data.get("key_id")
            if not isinstance(key_id, str):
                return False
            self.revoke_key(key_id)
            return True
        return False
