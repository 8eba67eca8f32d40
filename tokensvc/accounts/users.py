"""Users: the `users` table, and UserStore, the only code issuing SQL against it.

The store persists; it does not hash. Callers hash with `tokensvc.accounts.passwords.PasswordHasher` and
hand the store the argon2 string, which is checked to look like one, so a plaintext password can
never be stored by mistake.

The store does not revoke either: whether a change must kill the user's earlier tokens (a new
password, disabling, a lost role, deletion) is the user service's decision, which raises the
subject's one generation (tokensvc.tokens.subjects) in the same transaction. Every method takes an
optional `conn` to run inside such a caller's transaction; without one it runs on its own.
"""

from __future__ import annotations

import builtins
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    String,
    Table,
    delete,
    false,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from tokensvc.accounts.lockout.store import normalise_identity
from tokensvc.errors import BadRequest, Conflict, NotFound
from tokensvc.storage.base import Base
from tokensvc.storage.db import run_db

__all__ = [
    "ADMIN_ROLE",
    "NAME_MAX_LENGTH",
    "User",
    "UserRow",
    "UserStore",
    "canonical_name",
    "user_name_or_none",
]

ADMIN_ROLE: Final = "admin"
NAME_MAX_LENGTH: Final = 64
MAX_ROLES: Final = 32

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_ROLE = re.compile(r"[a-z][a-z0-9_.-]{0,31}")

_T = TypeVar("_T")


class UserRow(Base):
    """One user; `name` is lowercase and the primary key."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint("name = lower(name)", name="name_lowercase"),)

    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(512))
    roles: Mapped[list[str]] = mapped_column(JSON, server_default=text("'[]'"))
    disabled: Mapped[bool] = mapped_column(Boolean, server_default=false())
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"UserRow(name={self.name!r}, roles={self.roles!r}, disabled={self.disabled!r})"


_TABLE: Final[Table] = UserRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class User:
    """A user as the services see it; the password hash stays out of repr."""

    name: str
    roles: tuple[str, ...]
    disabled: bool
    created_at: datetime
    updated_at: datetime
    password_hash: str = field(repr=False)

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


def canonical_name(name: str) -> str:
    """The stored form of a user name (lowercase); BadRequest unless 1–64 of [a-z0-9._-]."""
    lowered = name.lower()
    if not _NAME.fullmatch(lowered):
        raise BadRequest(
            "a user name is 1 to 64 characters of a-z, 0-9, '.', '_' and '-',"
            " starting with a letter or digit"
        )
    return lowered


def spelling_of(subject: str) -> str | None:
    """The user name `subject` is another spelling of, or None (the name itself, or a subject
    no user could be called): read as loosely as a collation compares, case, width, accents
    and invisible characters aside (tokensvc.services.tokens refuses to mint such a subject;
    the registry keeps it for older tokens, so user creation sees them)."""
    spelled = user_name_or_none(_skeleton(subject))
    return spelled if spelled != subject else None


#: Characters a loose comparison ignores that NFKC keeps: Unicode's default-ignorable code
#: points outside the format category (Cf, dropped by category): the combining grapheme
#: joiner, Hangul fillers, Khmer inherent vowels, Mongolian variation selectors, variation
#: selectors.
_IGNORABLE: Final = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
)


def _skeleton(subject: str) -> str:
    """`subject` as a case-, width- and accent-insensitive collation sees it: compatibility
    forms folded, combining marks and invisible (default-ignorable) characters dropped."""
    decomposed = unicodedata.normalize("NFKD", _IGNORABLE.sub("", subject))
    kept = "".join(c for c in decomposed if unicodedata.category(c) not in ("Mn", "Me", "Cf"))
    return normalise_identity(kept)


def user_name_or_none(name: str) -> str | None:
    """The stored form of `name` if some user could be called that, else None."""
    try:
        return canonical_name(name)
    except BadRequest:
        return None


def _canonical_roles(roles: Iterable[str]) -> list[str]:
    unique = sorted(set(roles))
    if len(unique) > MAX_ROLES:
        raise BadRequest(f"a user has at most {MAX_ROLES} roles")
    for role in unique:
        if not _ROLE.fullmatch(role):
            raise BadRequest("a role is 1 to 32 characters of a-z, 0-9, '.', '_' and '-'")
    return unique


def _check_hash(password_hash: str) -> None:
    # A programming error, not a client's: say so loudly, and never echo the value.
    if not password_hash.startswith("$argon2") or len(password_hash) > 512:
        raise ValueError("password_hash must be an argon2 hash string from PasswordHasher")


class UserStore:
    """Reads and writes `users` rows; returns `User` values, raises Conflict / NotFound."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))

    async def create(
        self,
        name: str,
        *,
        password_hash: str,
        roles: Iterable[str] = (),
        disabled: bool = False,
        conn: AsyncConnection | None = None,
    ) -> User:
        """Add a user; Conflict if the name is taken."""
        _check_hash(password_hash)
        now = self._clock()
        values = {
            "name": canonical_name(name),
            "password_hash": password_hash,
            "roles": _canonical_roles(roles),
            "disabled": disabled,
            "created_at": now,
            "updated_at": now,
        }

        async def run(conn: AsyncConnection) -> User:
            try:
                await conn.execute(insert(_TABLE).values(values))
            except sa_exc.IntegrityError:
                raise Conflict(f"user {values['name']!r} already exists") from None
            return _user(values)

        # Not retried: had a lost connection committed the row, the retry would say Conflict.
        return await self._run(run, write=True, retry=False, conn=conn)

    async def get(
        self, name: str, *, for_update: bool = False, conn: AsyncConnection | None = None
    ) -> User | None:
        """The user called `name`, or None (also for a name no user could have).

        `for_update` locks the row until the caller's transaction ends (PostgreSQL; on SQLite the
        write transaction, begun IMMEDIATE, already holds the database's write lock).
        """
        key = user_name_or_none(name)
        if key is None:
            return None

        async def run(conn: AsyncConnection) -> User | None:
            query = select(_TABLE).where(_TABLE.c.name == key)
            if for_update and conn.dialect.name == "postgresql":
                query = query.with_for_update()
            found = (await conn.execute(query)).mappings().first()
            return None if found is None else _user(found)

        return await self._run(run, write=False, conn=conn)

    async def list(self, *, after: str | None = None, limit: int = 100) -> builtins.list[User]:
        """Up to `limit` users in name order, starting after the name `after` (keyset paging)."""
        if not 1 <= limit <= 1000:
            raise BadRequest("limit must be between 1 and 1000")

        async def run(conn: AsyncConnection) -> builtins.list[User]:
            query = select(_TABLE).order_by(_TABLE.c.name).limit(limit)
            if after is not None:
                query = query.where(_TABLE.c.name > after.lower())
            result = await conn.execute(query)
            return [_user(found) for found in result.mappings()]

        return await self._run(run, write=False)

    async def set_password(
        self, name: str, password_hash: str, *, conn: AsyncConnection | None = None
    ) -> User:
        """Store a new password hash."""
        _check_hash(password_hash)
        return await self._update(name, {"password_hash": password_hash}, conn=conn)

    async def rehash(self, name: str, *, old_hash: str, new_hash: str) -> bool:
        """Replace `old_hash` by a rehash of the same password.

        For the upgrade on login when the hashing parameters changed: the password did not
        change, so nothing is revoked. Only if the row still holds `old_hash` (a concurrent
        password change wins); True if it was replaced.
        """
        _check_hash(new_hash)
        key = canonical_name(name)

        async def run(conn: AsyncConnection) -> bool:
            result = await conn.execute(
                update(_TABLE)
                .where(_TABLE.c.name == key, _TABLE.c.password_hash == old_hash)
                .values(password_hash=new_hash)
            )
            return bool(result.rowcount == 1)

        return await self._run(run, write=True)

    async def set_disabled(
        self, name: str, disabled: bool, *, conn: AsyncConnection | None = None
    ) -> User:
        """Disable or re-enable a user."""
        return await self._update(name, {"disabled": disabled}, conn=conn)

    async def set_roles(
        self, name: str, roles: Iterable[str], *, conn: AsyncConnection | None = None
    ) -> User:
        """Replace the user's roles."""
        return await self._update(name, {"roles": _canonical_roles(roles)}, conn=conn)

    async def delete(self, name: str, *, conn: AsyncConnection | None = None) -> None:
        """Remove the user; NotFound if there is none."""
        key = canonical_name(name)

        async def run(conn: AsyncConnection) -> None:
            result = await conn.execute(delete(_TABLE).where(_TABLE.c.name == key))
            if result.rowcount != 1:
                raise NotFound(f"no user {key!r}")

        await self._run(run, write=True, retry=False, conn=conn)

    async def _update(
        self, name: str, values: dict[str, Any], *, conn: AsyncConnection | None
    ) -> User:
        key = canonical_name(name)
        values = {**values, "updated_at": self._clock()}

        async def run(conn: AsyncConnection) -> User:
            result = await conn.execute(
                update(_TABLE).where(_TABLE.c.name == key).values(values).returning(*_TABLE.c)
            )
            found = result.mappings().first()
            if found is None:
                raise NotFound(f"no user {key!r}")
            return _user(found)

        return await self._run(run, write=True, conn=conn)

    async def _run(
        self,
        op: Callable[[AsyncConnection], Awaitable[_T]],
        *,
        write: bool,
        retry: bool = True,
        conn: AsyncConnection | None = None,
    ) -> _T:
        if conn is not None:  # part of the caller's unit of work
            return await op(conn)
        return await run_db(self._engine, op, write=write, retry=retry, what="the user database")


def _user(found: RowMapping | dict[str, Any]) -> User:
    return User(
        name=found["name"],
        roles=tuple(found["roles"]),
        disabled=bool(found["disabled"]),
        created_at=found["created_at"],
        updated_at=found["updated_at"],
        password_hash=found["password_hash"],
    )
