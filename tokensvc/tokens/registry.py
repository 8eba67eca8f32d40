"""The token registry: one row per minted token, never a secret. TokenRegistry and the
functions below it are its only SQL.

A row is written before the token is handed out (in the same transaction as a service token's
key), so no token exists that the registry does not know. Revoking marks `revoked_at` (the row
stays, for the audit trail and the list); every replica picks revocations up by polling
`revoked_at` (tokensvc.tokens.revocation). `last_used_at` is written in batches (tokensvc.tokens.usage).

Lineage: a token minted with another records it (`parent_id`), and the key that signed it
(`key_id`). Revoking a token walks its descendants and revokes them in the same transaction
(`revoke_descendants`), as do a subject's and a root key's revocations from their tokens
(tokensvc.tokens.revocation); a mint locks its parent's row (`lock_acting`) so that a racing
revocation either sees the child or is seen by the mint (docs/security.md, §8).
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import (
    Boolean,
    String,
    Table,
    and_,
    bindparam,
    case,
    column,
    delete,
    exists,
    insert,
    or_,
    select,
    update,
    values,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import Select

from keystore.db import UTCDateTime
from tokensvc.accounts.users import spelling_of
from tokensvc.storage.base import Base
from tokensvc.storage.db import run_db
from tokensvc.tokens import events

KINDS: Final = ("rotating", "service")
_BATCH: Final = 500


class TokenRow(Base):
    __tablename__ = "tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), index=True)
    description: Mapped[str] = mapped_column(String(1024), default="")
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None] = mapped_column(index=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    kind: Mapped[str] = mapped_column(String(16), default="rotating")
    # The token whose authority minted this one (None: a login, an operator's mint, or minted
    # before lineage was recorded). Revoking a token revokes its descendants (`revoke`).
    parent_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # The root key that signed it: revoking the key revokes what its tokens minted.
    key_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # Minted by a token that could not mint past its own expiry: neither can this one (nor
    # create what outlives it), whatever its caveats (tokensvc.services.authorization).
    bounded: Mapped[bool] = mapped_column(Boolean, default=False)
    # The user name the subject is another spelling of (`Ledger`: `ledger`), for tokens minted
    # before the mint refused such subjects: making that name a user is making it theirs.
    spelling_of: Mapped[str | None] = mapped_column(String(64), index=True)


_TABLE: Final[Table] = TokenRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the registry knows about a token: metadata only."""

    token_id: str
    subject: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    description: str = ""
    admin: bool = False
    kind: str = "rotating"
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    parent_id: str | None = None
    key_id: str | None = None
    bounded: bool = False

    @property
    def spelling_of(self) -> str | None:
        """The user name the subject is another spelling of, if any (its registry column)."""
        return spelling_of(self.subject)

    def narrowed_in_time(self, presented_expiry: float) -> bool:
        """Whether a token of this id whose earliest expiry is `presented_expiry` (unix
        seconds) ends before the token as minted: a copy its holder narrowed in time, since
        offline attenuation keeps the id. The registered expiry may hold a fraction of a
        second the whole-second caveat does not: one second of slack."""
        return presented_expiry < self.expires_at.timestamp() - 1

    def public(self, *, now: datetime) -> dict[str, object]:
        """The record as the API and the CLI show it: no token, no key, nothing that verifies;
        times in RFC 3339 UTC, whole seconds."""
        if self.revoked_at is not None:
            status = "revoked"
        elif self.expires_at <= now:
            status = "expired"
        else:
            status = "active"
        return {
            "token_id": self.token_id,
            "subject": self.subject,
            "description": self.description,
            "created_by": self.created_by,
            "created_at": _rfc3339(self.created_at),
            "expires_at": _rfc3339(self.expires_at),
            "last_used_at": _rfc3339(self.last_used_at),
            "revoked_at": _rfc3339(self.revoked_at),
            "admin": self.admin,
            "kind": self.kind,
            "parent_id": self.parent_id,
            "status": status,
        }


def _rfc3339(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_RECORD_FIELDS: Final = tuple(f.name for f in dataclasses.fields(TokenRecord))


def _record(row: RowMapping) -> TokenRecord:
    return TokenRecord(**{name: row[name] for name in _RECORD_FIELDS})


def _utc_now() -> datetime:
    return datetime.now(UTC)


#: How long after its expiry a token's row is still locked by a revocation of its subject or
#: key (`lock_parents`): longer than any write's transaction (asyncpg's statement timeout is
#: 30 s), so one that began before the expiry is waited for.
LOCK_GRACE: Final = timedelta(hours=1)


class TokenRegistry:
    def __init__(self, engine: AsyncEngine, *, wall_clock: Callable[[], datetime] = _utc_now):
        self._engine = engine
        # Revocation times are compared across replicas by the pollers: always the wall clock.
        self._wall_clock = wall_clock

    async def add(
        self,
        record: TokenRecord,
        *,
        with_conn: Callable[[AsyncConnection], Awaitable[None]] | None = None,
    ) -> None:
        """Insert a row, and run `with_conn` (a service key's insert) in the same transaction."""

        async def run(conn: AsyncConnection) -> None:
            await conn.execute(
                insert(_TABLE).values({c.key: getattr(record, c.key) for c in _TABLE.columns})
            )
            if with_conn is not None:
                await with_conn(conn)

        await run_db(self._engine, run, write=True, retry=False, what="the token registry")

    async def issued_to(self, conn: AsyncConnection, subject: str) -> bool:
        """Whether the registry holds a row of any state for `subject` (a row is kept until
        TOKENSVC_TOKEN_RETENTION after its token expired): has the subject had live tokens.
        For a user name, another spelling of it counts too (review, helper-72: a `Ledger`
        service token minted before the mint refused that spelling, then a `users:write`
        delegate made `ledger` a user of its own)."""
        named = (_TABLE.c.subject == subject) | (_TABLE.c.spelling_of == subject)
        query = select(_TABLE.c.token_id).where(named).limit(1)
        return (await conn.execute(query)).first() is not None

    async def issuer_of(self, token_id: str) -> str | None:
        """Who the token was issued by (`created_by`), None for an id without a row."""
        record = await self.get(token_id)
        return None if record is None else record.created_by

    async def signed_with(self, key_id: str) -> bool:
        """Whether any token on record was signed by root key `key_id` (live or long expired):
        a key that may still have a lineage to revoke."""

        async def run(conn: AsyncConnection) -> bool:
            query = select(_TABLE.c.token_id).where(_TABLE.c.key_id == key_id).limit(1)
            return (await conn.execute(query)).first() is not None

        return await run_db(self._engine, run, write=False)

    async def get(self, token_id: str) -> TokenRecord | None:
        async def run(conn: AsyncConnection) -> TokenRecord | None:
            found = (
                (await conn.execute(select(_TABLE).where(_TABLE.c.token_id == token_id)))
                .mappings()
                .first()
            )
            return None if found is None else _record(found)

        return await run_db(self._engine, run, write=False)

    async def list(
        self,
        *,
        now: datetime,
        subject: str | None = None,
        include_revoked: bool = False,
        include_expired: bool = False,
        after: str | None = None,
        limit: int = 100,
    ) -> list[TokenRecord]:
        """Rows ordered by token id (stable paging with `after`), filtered as asked."""

        async def run(conn: AsyncConnection) -> list[TokenRecord]:
            query = select(_TABLE).order_by(_TABLE.c.token_id).limit(limit)
            if subject is not None:
                query = query.where(_TABLE.c.subject == subject)
            if not include_revoked:
                query = query.where(_TABLE.c.revoked_at.is_(None))
            if not include_expired:
                query = query.where(_TABLE.c.expires_at > now)
            if after is not None:
                query = query.where(_TABLE.c.token_id > after)
            return [_record(r) for r in (await conn.execute(query)).mappings()]

        return await run_db(self._engine, run, write=False)

    async def revoke(
        self,
        token_id: str,
        *,
        register: TokenRecord | None = None,
        first: Callable[[AsyncConnection], Awaitable[None]] | None = None,
        with_conn: Callable[[AsyncConnection, builtins.list[Descendant], bool], Awaitable[None]]
        | None = None,
    ) -> Revoked | None:
        """Mark the token revoked, and every token minted with it (recursively): its row and
        the descendants this call revoked, or None if the token is unknown.

        Idempotent: the first revocation time stays (a repeat still revokes any descendant left
        alive). `register` inserts the row first if it is missing (a genuine token minted before
        the registry existed). `first` runs first in the transaction (the revoking token's own
        check, before its row or a descendant's is touched). `with_conn` runs in the same
        transaction, with the descendants and whether this call revoked the token itself
        (deleting service keys, the audit record); so do the events of every token revoked here,
        last (an event append serialises the writers: no row lock may be taken after it).
        """
        now = self._wall_clock()

        async def run(conn: AsyncConnection) -> Revoked | None:
            if first is not None:
                await first(conn)
            changed = await conn.execute(
                update(_TABLE)
                .where(_TABLE.c.token_id == token_id, _TABLE.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            newly = bool(changed.rowcount)
            found = (
                (await conn.execute(select(_TABLE).where(_TABLE.c.token_id == token_id)))
                .mappings()
                .first()
            )
            if found is None and register is not None:
                values = {c.key: getattr(register, c.key) for c in _TABLE.columns}
                await conn.execute(insert(_TABLE).values({**values, "revoked_at": now}))
                newly = True
                found = (
                    (await conn.execute(select(_TABLE).where(_TABLE.c.token_id == token_id)))
                    .mappings()
                    .first()
                )
            if found is None:
                return None
            record = _record(found)
            descendants = await revoke_descendants(conn, children_of_token(token_id), now=now)
            if with_conn is not None:
                await with_conn(conn, descendants, newly)
            # The stream's events, last in the transaction (tokensvc.tokens.events).
            if newly:
                expires = record.expires_at.timestamp()
                await events.append(
                    conn, events.TOKEN, events.token_event(token_id, expires), at=now
                )
            await append_events(conn, descendants, now=now)
            return Revoked(record, tuple(descendants))

        return await run_db(self._engine, run, write=True, what="the token registry")

    async def lock_acting(self, conn: AsyncConnection, token_id: str) -> TokenRecord | None:
        """The row of `token_id`, the token a write acts with, locked until `conn`'s transaction
        ends (None if it has none): a revocation of it cannot pass the write unseen — either it
        committed first and is read here, or it waits for this transaction (and its walk then
        finds what a mint made with the token). Authorizer.confirm; docs/security.md, §8.

        PostgreSQL: FOR NO KEY UPDATE, exclusive: two writes with one token queue here instead
        of both share-locking the row and then deadlocking as each goes on to revoke or lock it
        (red team: a double-clicked self-revocation deadlocked 13 times in 14). SQLite: every
        write transaction already holds the one write lock (BEGIN IMMEDIATE).
        """
        found = (
            (
                await conn.execute(
                    select(_TABLE)
                    .where(_TABLE.c.token_id == token_id)
                    .with_for_update(key_share=True)
                )
            )
            .mappings()
            .first()
        )
        return None if found is None else _record(found)

    async def lock_parents(
        self,
        conn: AsyncConnection,
        *,
        now: datetime,
        subject: str | None = None,
        key_id: str | None = None,
    ) -> None:
        """Lock every live token of `subject`, or signed by `key_id`, until `conn`'s transaction
        ends: a revoke-all (any raise of the subject's generation) or a key's revocation takes
        these locks before its walk, so a concurrent write with one of them waits and then sees
        the revocation (`lock_acting`).

        "Live" includes tokens expired within LOCK_GRACE: a write that began with its token
        alive may still be in its transaction when the token expires, and must still be waited
        for (red team, helper-41: a mint whose parent expired mid-transaction committed a child
        after the parent's subject was revoked, and the child lived)."""
        whose = _TABLE.c.subject == subject if subject is not None else _TABLE.c.key_id == key_id
        await conn.execute(
            select(_TABLE.c.token_id)
            .where(
                whose,
                _TABLE.c.revoked_at.is_(None),
                _TABLE.c.expires_at > now - LOCK_GRACE,
            )
            .order_by(_TABLE.c.token_id)  # one lock order for every revoker: no deadlocks
            .with_for_update()
        )

    async def revoked_since(
        self, since: datetime | None, *, now: datetime
    ) -> builtins.list[tuple[str, datetime]]:
        """(token id, expires at) of unexpired tokens revoked after `since` (all for None)."""

        async def run(conn: AsyncConnection) -> builtins.list[tuple[str, datetime]]:
            query = select(_TABLE.c.token_id, _TABLE.c.expires_at).where(
                _TABLE.c.revoked_at.is_not(None), _TABLE.c.expires_at > now
            )
            if since is not None:
                query = query.where(_TABLE.c.revoked_at > since)
            return [(r.token_id, r.expires_at) for r in await conn.execute(query)]

        return await run_db(self._engine, run, write=False)

    async def prune_expired(self, before: datetime, *, batch: int = 1000, passes: int = 20) -> int:
        """Delete the rows of tokens that expired before `before` and have no child row left;
        how many went. A parent goes once its children have (a later pass, or a later call), so
        a token that outlives its parent keeps its lineage for a revocation to follow. A service
        token's key goes with its row (ON DELETE CASCADE). At most `passes` statements of
        `batch` rows each, so one call stays short; what is left waits for the next.

        Red team (helper-38): nothing deleted a row, so one account logging in again and again
        grew the table by ~0.5 GB a day.
        """
        child = _TABLE.alias("child")
        leaves = (
            select(_TABLE.c.token_id)
            .where(
                _TABLE.c.expires_at < before,
                ~exists().where(child.c.parent_id == _TABLE.c.token_id),
            )
            .limit(batch)
        )
        deleted = 0
        for _ in range(passes):

            async def run(conn: AsyncConnection) -> int:
                ids = [row[0] for row in await conn.execute(leaves)]
                if not ids:
                    return 0
                # Childless again at the delete: a mint may have committed a child of one of
                # these since the select (red team, helper-61), and its lineage must stay.
                result = await conn.execute(
                    delete(_TABLE).where(
                        _TABLE.c.token_id.in_(ids),
                        ~exists().where(child.c.parent_id == _TABLE.c.token_id),
                    )
                )
                return int(result.rowcount or 0)

            pruned = await run_db(self._engine, run, write=True, what="the token registry")
            deleted += pruned
            if pruned == 0:
                break
        return deleted

    async def touch(self, last_used: Mapping[str, datetime]) -> None:
        """Record last-use times: one UPDATE per batch of tokens, never moving a time backwards."""
        items = sorted(last_used.items())  # one lock order for every replica: no deadlocks
        for start in range(0, len(items), _BATCH):
            chunk = items[start : start + _BATCH]

            async def run(
                conn: AsyncConnection, chunk: builtins.list[tuple[str, datetime]] = chunk
            ) -> None:
                if conn.dialect.name != "postgresql":
                    # SQLite has one writer anyway (no row-lock contention to avoid) and no
                    # aliased VALUES: one executemany in one transaction.
                    await conn.execute(
                        update(_TABLE)
                        .where(
                            _TABLE.c.token_id == bindparam("tid"),
                            or_(
                                _TABLE.c.last_used_at.is_(None),
                                _TABLE.c.last_used_at < bindparam("ts", type_=UTCDateTime()),
                            ),
                        )
                        .values(last_used_at=bindparam("ts", type_=UTCDateTime())),
                        [{"tid": tid, "ts": ts} for tid, ts in chunk],
                    )
                    return
                used = values(
                    column("id", String(32)), column("ts", UTCDateTime()), name="used"
                ).data(chunk)
                await conn.execute(
                    update(_TABLE)
                    .where(_TABLE.c.token_id == used.c.id)
                    .values(
                        last_used_at=case(
                            (
                                or_(
                                    _TABLE.c.last_used_at.is_(None),
                                    and_(_TABLE.c.last_used_at < used.c.ts),
                                ),
                                used.c.ts,
                            ),
                            else_=_TABLE.c.last_used_at,
                        )
                    )
                )

            await run_db(self._engine, run, write=True, what="the token registry")


#: A token revoked because an ancestor was: (token id, expires at as unix seconds, kind).
Descendant = tuple[str, float, str]


@dataclass(frozen=True, slots=True)
class Revoked:
    """What one revocation changed: the token's row, and the descendants it revoked with it."""

    record: TokenRecord
    descendants: tuple[Descendant, ...]


def children_of_token(token_id: str) -> Select[tuple[str]]:
    """The ids of the tokens minted with `token_id` (the seed of a cascade)."""
    return select(_TABLE.c.token_id).where(_TABLE.c.parent_id == token_id)


def children_of_key(key_id: str) -> Select[tuple[str]]:
    """The ids of the tokens minted with any token signed by root key `key_id`."""
    parents = select(_TABLE.c.token_id).where(_TABLE.c.key_id == key_id)
    return select(_TABLE.c.token_id).where(_TABLE.c.parent_id.in_(parents.scalar_subquery()))


def children_of_subject(subject: str) -> Select[tuple[str]]:
    """The ids of the tokens minted with any token of `subject` (a revoke-all's cascade)."""
    parents = select(_TABLE.c.token_id).where(_TABLE.c.subject == subject)
    return select(_TABLE.c.token_id).where(_TABLE.c.parent_id.in_(parents.scalar_subquery()))


async def revoke_descendants(
    conn: AsyncConnection, seed: Select[tuple[str]], *, now: datetime
) -> list[Descendant]:
    """Revoke `seed`'s tokens and all their descendants, in `conn`'s transaction; the ones this
    call revoked (unexpired and not revoked before). Their stream events are the caller's to
    append (`append_events`), last in the transaction.

    The walk goes through revoked and expired tokens too: a child that outlives its expired
    parent still descends from it. It repeats until a pass revokes nothing: on PostgreSQL a
    pass may wait for a mint that holds its parent's row (TokenRegistry.lock_acting);
    the child that mint commits is the next pass's to find.
    """
    revoked: list[Descendant] = []
    while True:
        tree = seed.cte("descendants", recursive=True)
        tree = tree.union(select(_TABLE.c.token_id).where(_TABLE.c.parent_id == tree.c.token_id))
        live = (
            select(_TABLE.c.token_id, _TABLE.c.expires_at, _TABLE.c.kind)
            .where(
                _TABLE.c.token_id.in_(select(tree.c.token_id)),
                _TABLE.c.revoked_at.is_(None),
                _TABLE.c.expires_at > now,
            )
            .order_by(_TABLE.c.token_id)  # one lock order for every revoker: no deadlocks
            .with_for_update()
        )
        rows = [(r.token_id, r.expires_at.timestamp(), r.kind) for r in await conn.execute(live)]
        if not rows:
            return revoked
        await conn.execute(
            update(_TABLE)
            .where(_TABLE.c.token_id.in_([token_id for token_id, _, _ in rows]))
            .values(revoked_at=now)
        )
        revoked.extend(rows)


async def append_events(
    conn: AsyncConnection, revoked: builtins.list[Descendant], *, now: datetime
) -> None:
    """The stream's event of each token in `revoked` (tokensvc.tokens.events)."""
    for token_id, expires, _ in revoked:
        await events.append(conn, events.TOKEN, events.token_event(token_id, expires), at=now)
