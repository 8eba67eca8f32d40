"""Revoked tokens and root keys, held in memory by every process for the verify path.

Revoking writes the database first (`tokens.revoked_at`, or a `revoked_keys` row and the key's
deletion), then applies the change in this process at once. Other replicas learn it two ways:

- polling: every `refresh_interval` (default 1 s) each process reads what was revoked since its
  last read (minus an `overlap` that absorbs clock skew between replicas), like
  tokensvc.tokens.generations does; this alone bounds propagation to about `refresh_interval` plus one
  query;
- Redis pub/sub, when Redis is configured: the revoking process publishes the id and every
  subscriber applies it as soon as the message arrives (milliseconds). A lost message costs
  nothing but speed: the poll still catches it.

The verify path asks `is_revoked(token_id)`, a dict lookup. Entries of expired tokens are
dropped (an expired token is refused anyway), so the set stays as small as the live revocations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

from sqlalchemy import String, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from tokensvc.operations.background import every, tasks_running
from tokensvc.operations.outages import Outage, Outages, is_outage
from tokensvc.storage.base import Base
from tokensvc.storage.db import run_db
from tokensvc.tokens import events
from tokensvc.tokens.registry import (
    Descendant,
    Revoked,
    TokenRecord,
    TokenRegistry,
    append_events,
    children_of_key,
    children_of_subject,
    revoke_descendants,
)
from tokensvc.tokens.subjects import SubjectStore

log = logging.getLogger("tokensvc.tokens.revocation")

CHANNEL_SUFFIX: Final = "revocations"
#: Longest wait for Redis to take a revocation's PUBLISH (seconds); then replicas learn it by
#: polling, within TOKENSVC_REVOCATION_REFRESH_INTERVAL.
PUBLISH_TIMEOUT: Final = 1.0


class RevokedKeyRow(Base):
    """A root key revoked by an admin (its root_keys row is deleted at the same time)."""

    __tablename__ = "revoked_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(index=True)
    revoked_by: Mapped[str] = mapped_column(String(255))


_KEYS: Final[Table] = RevokedKeyRow.__table__  # type: ignore[assignment]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _token_message(token_id: str, expires_at: float) -> str:
    return f"t {token_id} {int(expires_at)}"


def _generation_message(subject: str, generation: int) -> str:
    return f"g {generation} {subject}"


class Raised(NamedTuple):
    """A subject's generation raised: the new generation, and the tokens minted with the
    subject's tokens that died with it (Revocations.raise_generation)."""

    generation: int
    descendants: tuple[Descendant, ...]


class Revocations:
    """This process's view of what is revoked; refreshed in the background."""

    def __init__(
        self,
        engine: AsyncEngine,
        registry: TokenRegistry,
        subjects: SubjectStore,
        *,
        refresh_interval: float = 1.0,
        stale_after: float = 60.0,
        overlap: timedelta = timedelta(seconds=30),
        wall_clock: Callable[[], datetime] = _utc_now,
        redis: Any = None,
        channel: str = "tokensvc:" + CHANNEL_SUFFIX,
        outages: Outages | None = None,
    ) -> None:
        self._engine = engine
        # Where a dependency's outage is reported (one line per outage, not one per retry).
        self._outages = outages if outages is not None else Outages(dependencies=())
        self._registry = registry
        self._subjects = subjects
        self.refresh_interval = refresh_interval
        self.stale_after = stale_after
        self._overlap = overlap
        # Whether this process can learn of revocations: its last successful refresh
        # (time.monotonic()). `stale` once there was none for stale_after. Pub/sub does not
        # count: it is lossy (a frozen or restarted Redis delivers nothing, or drops what was
        # published meanwhile, while the subscription looks up), so only the database, which
        # has every revocation, can vouch that none was missed.
        self._refreshed_at = time.monotonic()
        self.stale = False
        # Called with the new value when `stale` changes (the verifier refuses while stale).
        self.on_staleness: list[Callable[[bool], None]] = []
        self._wall_clock = wall_clock
        self._redis = redis
        self._channel = channel
        # token id -> its expiry (unix seconds), for pruning.
        self.tokens: dict[str, float] = {}
        self.keys: set[str] = set()
        self._since: datetime | None = None
        self._keys_since: datetime | None = None
        # Called with a key id when a root key is revoked (evict it from caches).
        self.on_key_revoked: list[Callable[[str], None]] = []
        # Called with a token id when a token is revoked (forget a service key).
        self.on_token_revoked: list[Callable[[str], None]] = []
        # Called with (subject, generation) published by a revoke-all on another replica.
        self.on_generation: list[Callable[[str, int], None]] = []
        # Called when this process revoked something or heard of a revocation by pub/sub: the
        # revocation feed (tokensvc.tokens.feed) reads the event log at once.
        self.on_change: list[Callable[[], None]] = []
        # Deletes a service token's key in the revoking transaction (set by the app wiring).
        self.delete_service_key: Callable[[AsyncConnection, str], Awaitable[None]] | None = None

    async def revoke_token(
        self,
        token_id: str,
        *,
        register: TokenRecord | None = None,
        first: Callable[[AsyncConnection], Awaitable[None]] | None = None,
        also: Callable[[AsyncConnection, list[Descendant], bool], Awaitable[None]] | None = None,
    ) -> Revoked | None:
        """Revoke one token everywhere, and every token minted with it: the registry rows
        first, then this process, then the rest.

        Idempotent. None if the registry has no such token (and `register` was not given).
        `first` runs first in the registry's transaction (the revoker's check:
        Authorizer.confirm); `also` runs in it, when there is a row, with the descendants
        revoked along and whether this call revoked the token itself (the audit record).
        """
        drop_key = self.delete_service_key

        async def with_conn(
            conn: AsyncConnection, descendants: list[Descendant], newly: bool
        ) -> None:
            if drop_key is not None:
                await drop_key(conn, token_id)
            await self._drop_service_keys(conn, descendants)
            if also is not None:
                await also(conn, descendants, newly)

        revoked = await self._registry.revoke(
            token_id, register=register, first=first, with_conn=with_conn
        )
        if revoked is not None:
            expires_at = revoked.record.expires_at.timestamp()
            self.note_token(token_id, expires_at)
            await self._announce(revoked.descendants, _token_message(token_id, expires_at))
        return revoked

    async def raise_generation(self, conn: AsyncConnection, subject: str) -> Raised:
        """Raise `subject`'s generation in `conn`'s transaction: every token of the subject
        issued until now dies, and so does every token minted with one of them (recursively).
        Apply the result with `generation_raised` once the transaction has committed.

        The subject's live tokens are locked first, so a concurrent mint with one of them either
        is seen by the walk or waits and sees the new generation (TokenRegistry.lock_acting).
        """
        now = self._wall_clock()
        await self._registry.lock_parents(conn, now=now, subject=subject)
        descendants = await revoke_descendants(conn, children_of_subject(subject), now=now)
        await self._drop_service_keys(conn, descendants)
        generation = await self._subjects.raise_generation(subject, conn=conn)
        await append_events(conn, descendants, now=now)
        return Raised(generation, tuple(descendants))

    async def _drop_service_keys(self, conn: AsyncConnection, revoked: list[Descendant]) -> None:
        drop_key = self.delete_service_key
        if drop_key is None:
            return
        for token_id, _, kind in revoked:
            if kind == "service":
                await drop_key(conn, token_id)

    async def _announce(self, revoked: Sequence[Descendant], *first: str) -> None:
        """Apply tokens revoked by a cascade here, then tell the other replicas, after the
        `first` messages, in one bounded publish (however many descendants)."""
        for token_id, expires_at, _ in revoked:
            self.note_token(token_id, expires_at)
        await self._publish(*first, *(_token_message(t, e) for t, e, _ in revoked))

    def is_revoked(self, token_id: str) -> bool:
        """The verify-path check (no I/O)."""
        return token_id in self.tokens

    def note_token(self, token_id: str, expires_at: float) -> None:
        """Apply a token revocation in this process."""
        if token_id not in self.tokens:
            self.tokens[token_id] = expires_at
            for callback in self.on_token_revoked:
                callback(token_id)

    def note_key(self, key_id: str) -> None:
        """Apply a root-key revocation in this process."""
        if key_id not in self.keys:
            self.keys.add(key_id)
        for callback in self.on_key_revoked:
            callback(key_id)

    async def record_key(
        self,
        key_id: str,
        *,
        by: str,
        first: Callable[[AsyncConnection], Awaitable[None]] | None = None,
        also: Callable[[AsyncConnection, list[Descendant], bool], Awaitable[None]] | None = None,
    ) -> tuple[Descendant, ...]:
        """Write the revocation of root key `key_id` (idempotent), and revoke every token minted
        with a token it signed (recursively); those tokens, once committed, are applied here and
        published. `first` runs first in the transaction (the revoker's check:
        Authorizer.confirm); `also` runs in it with the descendants and whether this call
        recorded the revocation (the audit record: of requests revoking one key at once, one
        writes it; red team, helper-64: four did)."""
        now = self._wall_clock()

        async def run(conn: AsyncConnection) -> list[Descendant]:
            if first is not None:
                await first(conn)
            await self._registry.lock_parents(conn, now=now, key_id=key_id)
            descendants = await revoke_descendants(conn, children_of_key(key_id), now=now)
            await self._drop_service_keys(conn, descendants)
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            # A concurrent revocation's uncommitted row holds this insert until it commits.
            result = await conn.execute(
                insert(_KEYS)
                .values(key_id=key_id, revoked_at=now, revoked_by=by[:255])
                .on_conflict_do_nothing(index_elements=["key_id"])
            )
            newly = bool(result.rowcount)
            if newly:  # the stream's event, once
                await events.append(conn, events.KEY, events.key_event(key_id), at=now)
            if also is not None:
                await also(conn, descendants, newly)
            await append_events(conn, descendants, now=now)
            return descendants

        descendants = tuple(await run_db(self._engine, run, write=True))
        await self._announce(descendants)
        return descendants

    async def key_on_record(self, key_id: str) -> bool:
        """Whether tokens signed by root key `key_id` are on record, though the key may have
        expired and been purged: its revocation still has their descendants to reach."""
        return await self._registry.signed_with(key_id)

    async def key_revoked(self, key_id: str, *, conn: AsyncConnection | None = None) -> bool:
        """Whether root key `key_id` has been revoked, read from the database: in `conn`'s
        transaction (a mint's check of its parent, after the parent's row lock:
        TokenRegistry.lock_acting), or on its own (an admin call's fresh check)."""

        async def run(conn: AsyncConnection) -> bool:
            found = await conn.execute(select(_KEYS.c.key_id).where(_KEYS.c.key_id == key_id))
            return found.first() is not None

        if conn is not None:
            return await run(conn)
        return await run_db(self._engine, run, write=False)

    async def publish_key(self, key_id: str) -> None:
        await self._publish(f"k {key_id}")

    async def generation_raised(self, subject: str, raised: Raised) -> None:
        """Apply a generation this process just raised (`raise_generation`, committed), and the
        tokens it revoked along, then tell the other replicas."""
        for callback in self.on_generation:
            callback(subject, raised.generation)
        await self._announce(raised.descendants, _generation_message(subject, raised.generation))

    async def _publish(self, *messages: str) -> None:
        for callback in self.on_change:  # every local revocation publishes: wake the feed first
            callback()
        if self._redis is None or not messages:
            return
        try:
            # Bounded, all messages together: the revocation is committed and polling
            # propagates it whatever happens here, so a stalled Redis (the pub/sub client has
            # no socket timeout: it idles by design) must not hold the revoking request (red
            # team: 616 s behind a stall; then 1 s per descendant of a cascade).
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                if len(messages) == 1:
                    await self._redis.publish(self._channel, messages[0])
                else:  # one round trip
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for message in messages:
                            pipe.publish(self._channel, message)
                        await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - polling still propagates it
            if is_outage(exc):
                self._outages.failed(
                    "redis", exc, during="publishing a revocation; replicas learn it by polling"
                )
            else:
                log.warning("publishing a revocation failed; replicas learn it by polling")

    def _apply_message(self, data: bytes | str) -> None:
        # Subjects may be any printable text: UTF-8, as redis-py encodes what is published.
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        for wake in self.on_change:
            wake()
        parts = text.split()
        if len(parts) == 3 and parts[0] == "t" and parts[2].isdigit():
            self.note_token(parts[1][:64], float(parts[2]))
        elif len(parts) == 2 and parts[0] == "k":
            self.note_key(parts[1][:64])
        elif text.startswith("g "):
            # Split on single spaces: a subject may hold (and, minted before subjects were
            # refused them, end in) spaces, which `parts` would have dropped.
            head = text.split(" ", 2)
            if len(head) == 3 and head[1].isdigit() and head[2]:
                for callback in self.on_generation:
                    callback(head[2][:255], int(head[1]))

    async def refresh(self) -> None:
        """Read what was revoked since the last refresh (everything live, the first time)."""
        # Judged at every attempt, the failing ones included (no task of its own: nothing more
        # per tick than the poll itself).
        self.judge_staleness()
        started = self._wall_clock()
        for token_id, expires_at in await self._registry.revoked_since(self._since, now=started):
            self.note_token(token_id, expires_at.timestamp())

        async def run(conn: AsyncConnection) -> list[str]:
            query = select(_KEYS.c.key_id)
            if self._keys_since is not None:
                query = query.where(_KEYS.c.revoked_at > self._keys_since)
            return [row.key_id for row in await conn.execute(query)]

        for key_id in await run_db(self._engine, run, write=False):
            if key_id not in self.keys:
                self.note_key(key_id)
        self._since = self._keys_since = started - self._overlap
        self._refreshed_at = time.monotonic()
        self.judge_staleness()
        now = started.timestamp()
        for token_id in [t for t, exp in self.tokens.items() if exp <= now]:
            del self.tokens[token_id]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Load everything, then keep up (polling, and Redis pub/sub if configured)."""
        await self.refresh()
        jobs = [
            every(
                self.refresh_interval,
                self.refresh,
                what="refreshing revocations",
                outages=self._outages,
                dependency="database",
            ),
        ]
        if self._redis is not None:
            jobs.append(self._listen_forever())
        async with tasks_running(*jobs):
            yield

    def judge_staleness(self) -> None:
        """Set `stale`: no refresh has succeeded for `stale_after` seconds, so a revocation
        made elsewhere may not have reached this process (pub/sub may have lost it: red team,
        a frozen Redis, or one restarted after the publish). A verifier that answered on
        regardless would allow revoked tokens for as long as the outage lasts (red team: a
        replica cut off from its database kept allowing a token revoked on another replica);
        it answers 503 instead, as a zero-hop client whose stream is stale stops trusting its
        cache."""
        stale = time.monotonic() - self._refreshed_at > self.stale_after
        if stale == self.stale:
            return
        self.stale = stale
        if stale:
            log.error(
                "no revocation news for %.0f s (the database unreachable):"
                " /v1/verify answers 503 until they are back",
                self.stale_after,
            )
        else:
            log.warning("revocation news again: /v1/verify answers again")
        for callback in self.on_staleness:
            callback(stale)

    async def _listen_forever(self) -> None:
        # While Redis is down every retry fails: that is Redis's outage (one line per outage,
        # tokensvc.operations.outages), not a traceback per retry. Other failures are ours.
        own = Outage("the revocation subscription", logger=log, traceback=True)
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                own.recovered()
                self._outages.ok("redis")
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is not None and message.get("type") == "message":
                        self._apply_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried; polling covers the gap meanwhile
                if is_outage(exc):
                    self._outages.failed("redis", exc, during="revocation subscription")
                else:
                    own.failed(exc)
                await asyncio.sleep(self.refresh_interval)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
