"""Users' TOTP secrets, sealed under the KEK like every other key at rest.

A TOTP secret is as sensitive as a password hash is not: whoever reads it computes the user's
codes. So it is sealed exactly as root keys are (`keystore.sealing`), bound to its row by the
associated data, listed in `keystore.reseal.SEALED_TABLES` so a KEK rotation re-seals it, and
only ever opened in memory.

One row per user (`id` is the user name): `active` is false while an enrolment waits for its
first correct code and true once it has been confirmed. Starting a new enrolment replaces a
pending one; the service decides whether an active one may be replaced. `created_at` names the
enrolment, so an activation can only confirm the secret it was shown (compare-and-set).

Not exported from `keystore/__init__.py`: import it by module path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

from sqlalchemy import Boolean, LargeBinary, String, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from keystore.crypto import KeyEncryptionKey, SecretBytes
from keystore.db import Base
from keystore.db import run as run_database
from keystore.sealing import Sealed, Sealer, as_sealer

__all__ = ["TotpSecret", "TotpSecretRow", "TotpSecrets", "totp_secret_aad"]

_T = TypeVar("_T")


class TotpSecretRow(Base):
    """One user's TOTP secret (by user name), sealed under the KEK named by `kek_id`."""

    __tablename__ = "totp_secrets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]
    activated_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"TotpSecretRow(id={self.id!r}, kek_id={self.kek_id!r}, active={self.active!r})"


_TABLE: Final[Table] = TotpSecretRow.__table__  # type: ignore[assignment]


def totp_secret_aad(user: str) -> bytes:
    """The associated data a TOTP secret is bound to: its table and user."""
    return b"totp_secrets/" + user.encode("utf-8")


@dataclass(frozen=True, slots=True)
class TotpSecret:
    """An opened TOTP secret; the secret stays out of repr."""

    user: str
    secret: SecretBytes = field(repr=False)
    active: bool
    created_at: datetime
    activated_at: datetime | None


class TotpSecrets:
    """Reads and writes `totp_secrets` rows, sealing on the way in and opening on the way out."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        kek: KeyEncryptionKey | Sealer,
        clock: Callable[[], datetime],
    ) -> None:
        self._engine = engine
        self._sealer = as_sealer(kek)
        self._clock = clock

    def __repr__(self) -> str:
        return "TotpSecrets()"

    async def get(self, user: str) -> TotpSecret | None:
        """The user's secret, pending or active; None without one.

        Raises:
            UnknownKek, KeyDecryptionError: sealed under a KEK not given, or tampered.
            StoreUnavailable: the database cannot be reached.
        """

        async def read(conn: AsyncConnection) -> dict[str, Any] | None:
            found = (await conn.execute(select(_TABLE).where(_TABLE.c.id == user))).mappings()
            row = found.first()
            return None if row is None else dict(row)

        row = await self._run(read, write=False)
        if row is None:
            return None
        plaintext = self._sealer.open(
            Sealed(row["kek_id"], bytes(row["ciphertext"])),
            aad=totp_secret_aad(user),
            what=f"the TOTP secret of {user}",
        )
        return TotpSecret(
            user=user,
            secret=SecretBytes(plaintext),
            active=bool(row["active"]),
            created_at=row["created_at"],
            activated_at=row["activated_at"],
        )

    async def put_pending(
        self, user: str, secret: bytes, *, conn: AsyncConnection | None = None
    ) -> datetime | None:
        """Store `secret` as the user's pending enrolment, replacing a pending one; returns the
        enrolment's `created_at` (what `activate` confirms), or None when the user has an active
        enrolment (never replaced here, even by a call racing its activation) or another
        enrolment was stored meanwhile. In `conn`'s transaction if given (the caller then owns
        the IntegrityError of an enrolment inserted meanwhile).

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        sealed = self._sealer.seal(secret, aad=totp_secret_aad(user))
        created_at = self._clock()

        async def write(conn: AsyncConnection) -> bool:
            # Only a pending row goes: an active one (maybe activated a moment ago, after the
            # caller looked) stays, and the insert below is not made. An activation racing this
            # delete either sees its row gone (activate() is False) or keeps it active.
            await conn.execute(
                delete(_TABLE).where(_TABLE.c.id == user, _TABLE.c.active.is_(False))
            )
            if (await conn.execute(select(_TABLE.c.id).where(_TABLE.c.id == user))).first():
                return False
            await conn.execute(
                insert(_TABLE).values(
                    id=user,
                    kek_id=sealed.kek_id,
                    ciphertext=sealed.ciphertext,
                    active=False,
                    created_at=created_at,
                    activated_at=None,
                )
            )
            return True

        if conn is not None:
            return created_at if await write(conn) else None
        try:
            stored = await self._run(write, write=True)
        except IntegrityError:  # another enrolment inserted its row between our delete and insert
            return None
        return created_at if stored else None

    async def activate(
        self, user: str, *, created_at: datetime, conn: AsyncConnection | None = None
    ) -> bool:
        """Make the pending enrolment made at `created_at` active; False if it is not (any
        more) the user's pending one. In `conn`'s transaction if given.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        now = self._clock()

        async def write(conn: AsyncConnection) -> int:
            result = await conn.execute(
                update(_TABLE)
                .where(
                    _TABLE.c.id == user,
                    _TABLE.c.created_at == created_at,
                    _TABLE.c.active.is_(False),
                )
                .values(active=True, activated_at=now)
            )
            return int(result.rowcount)

        if conn is not None:
            return await write(conn) == 1
        return await self._run(write, write=True) == 1

    async def delete(self, user: str, *, conn: AsyncConnection | None = None) -> bool:
        """Forget the user's secret, pending or active; whether there was one.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """

        async def write(c: AsyncConnection) -> int:
            return int((await c.execute(delete(_TABLE).where(_TABLE.c.id == user))).rowcount)

        if conn is not None:
            return await write(conn) > 0
        return await self._run(write, write=True) > 0

    async def _run(self, op: Callable[[AsyncConnection], Awaitable[_T]], *, write: bool) -> _T:
        # Every write here is idempotent (a replace, a compare-and-set, a delete): one retry on
        # a connection the server closed meanwhile is safe.
        return await run_database(self._engine, op, write=write, what="the TOTP secret database")
