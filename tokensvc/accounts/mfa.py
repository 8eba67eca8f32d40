"""The second factor's pieces that are not sealed: TOTP codes (RFC 6238, via pyotp) and
recovery codes (argon2 hashes in `recovery_codes`, RecoveryCodes the only code issuing SQL on it).

TOTP: 6 digits, 30-second steps, SHA-1 (what every authenticator app reads from an
`otpauth://` URI), ±1 step of clock skew. `match_step` says which step a code belongs to, so
the caller can refuse a step it has already accepted (tokensvc.accounts.otpstate): a code is
never accepted twice.

Recovery codes: ten, each 60 random bits written as `xxxx-xxxx-xxxx` (base32, lowercase), shown
once, stored as argon2 hashes made by the PasswordHasher (same profile and pepper as passwords),
each usable once. A few hex digits of an unkeyed hash of the code (`hint`) pick the row to run
argon2 on, so a code costs one argon2 run rather than ten; 16 bits of a 60-bit secret help
nobody who reads the table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar

import pyotp
from sqlalchemy import BigInteger, Integer, String, Table, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from tokensvc.storage.base import Base
from tokensvc.storage.db import run_db

__all__ = [
    "RECOVERY_CODE_COUNT",
    "STEP_SECONDS",
    "RecoveryCodeRow",
    "RecoveryCodes",
    "is_totp_code",
    "match_step",
    "new_recovery_codes",
    "new_totp_secret",
    "normalise_recovery_code",
    "provisioning_uri",
    "recovery_hint",
    "totp_at",
]

STEP_SECONDS: Final = 30
DIGITS: Final = 6
#: Steps either side of now a code may come from (clock skew between phone and server).
SKEW_STEPS: Final = 1
RECOVERY_CODE_COUNT: Final = 10
SECRET_BYTES: Final = 20  # 160 bits: RFC 4226's recommendation for HMAC-SHA-1

_TOTP_CODE = re.compile(r"[0-9]{6}")
_RECOVERY_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_RECOVERY_CODE = re.compile(r"[a-z2-7]{12}")

_T = TypeVar("_T")


def new_totp_secret() -> bytes:
    """A fresh random TOTP secret."""
    return secrets.token_bytes(SECRET_BYTES)


def _totp(secret: bytes) -> pyotp.TOTP:
    return pyotp.TOTP(base64.b32encode(secret).decode("ascii"), digits=DIGITS, interval=30)


def provisioning_uri(secret: bytes, *, user: str, issuer: str) -> str:
    """The `otpauth://totp/...` URI an authenticator app reads (from a QR code or by hand)."""
    return _totp(secret).provisioning_uri(name=user, issuer_name=issuer)


def totp_at(secret: bytes, when: float) -> str:
    """The code for the step that contains unix time `when` (for tests and the CLI's checks)."""
    return str(_totp(secret).at(int(when)))


def is_totp_code(otp: str) -> bool:
    """Whether `otp` is shaped like a TOTP code (six digits) rather than a recovery code."""
    return _TOTP_CODE.fullmatch(otp) is not None


def match_step(secret: bytes, otp: str, *, now: float) -> int | None:
    """The time step (now ±1) whose code `otp` is, compared in constant time; None if none is."""
    if not is_totp_code(otp):
        return None
    totp = _totp(secret)
    current = int(now) // STEP_SECONDS
    found = None
    # Every candidate is compared (no early exit), so the time does not say which step matched.
    for step in range(current - SKEW_STEPS, current + SKEW_STEPS + 1):
        if hmac.compare_digest(str(totp.at(step * STEP_SECONDS)), otp):
            found = step
    return found


def new_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> list[str]:
    """Fresh recovery codes as shown to the user: `xxxx-xxxx-xxxx`."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(12))
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
    return codes


def normalise_recovery_code(otp: str) -> str | None:
    """The 12 characters of a recovery code as typed (any case, dashes and spaces), or None
    when `otp` cannot be one."""
    text = otp.replace("-", "").replace(" ", "").strip().lower()
    return text if _RECOVERY_CODE.fullmatch(text) else None


def recovery_hint(normalised: str) -> str:
    """Four hex digits naming which row a recovery code belongs to."""
    digest = hashlib.blake2b(normalised.encode("ascii"), digest_size=2, person=b"tokensvc-rc")
    return digest.hexdigest()


class RecoveryCodeRow(Base):
    """One recovery code of a user: its argon2 hash, and when it was used (None: unused)."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    username: Mapped[str] = mapped_column(String(64), index=True)
    hint: Mapped[str] = mapped_column(String(8))
    code_hash: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime]
    used_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"RecoveryCodeRow(id={self.id!r}, username={self.username!r})"


_TABLE: Final[Table] = RecoveryCodeRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class StoredCode:
    """A candidate row for a typed recovery code."""

    id: int
    code_hash: str


class RecoveryCodes:
    """Reads and writes `recovery_codes` rows."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._clock = clock

    async def replace(
        self, user: str, hashes: Sequence[tuple[str, str]], *, conn: AsyncConnection | None = None
    ) -> None:
        """Make `hashes` ((hint, argon2 hash) pairs) the user's codes; earlier ones die. In
        `conn`'s transaction if given.

        Raises:
            StorageUnavailable: the database cannot be reached.
        """
        now = self._clock()

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(delete(_TABLE).where(_TABLE.c.username == user))
            if hashes:
                await conn.execute(
                    insert(_TABLE),
                    [
                        {"username": user, "hint": hint, "code_hash": h, "created_at": now}
                        for hint, h in hashes
                    ],
                )

        if conn is not None:
            await write(conn)
            return
        await self._run(write, write=True)

    async def candidates(self, user: str, hint: str) -> list[StoredCode]:
        """The user's unused codes with this hint (usually one, rarely two, often none).

        Raises:
            StorageUnavailable: the database cannot be reached.
        """

        async def read(conn: AsyncConnection) -> list[StoredCode]:
            query = select(_TABLE.c.id, _TABLE.c.code_hash).where(
                _TABLE.c.username == user, _TABLE.c.hint == hint, _TABLE.c.used_at.is_(None)
            )
            return [StoredCode(int(r.id), str(r.code_hash)) for r in await conn.execute(query)]

        return await self._run(read, write=False)

    async def use(self, code_id: int) -> bool:
        """Mark a code used; False if it already was (a concurrent use won).

        Raises:
            StorageUnavailable: the database cannot be reached.
        """
        now = self._clock()

        async def write(conn: AsyncConnection) -> int:
            result = await conn.execute(
                update(_TABLE)
                .where(_TABLE.c.id == code_id, _TABLE.c.used_at.is_(None))
                .values(used_at=now)
            )
            return int(result.rowcount)

        return await self._run(write, write=True) == 1

    async def remaining(self, user: str) -> int:
        """How many unused codes the user has.

        Raises:
            StorageUnavailable: the database cannot be reached.
        """

        async def read(conn: AsyncConnection) -> int:
            query = select(func.count()).where(
                _TABLE.c.username == user, _TABLE.c.used_at.is_(None)
            )
            return int((await conn.execute(query)).scalar_one())

        return await self._run(read, write=False)

    async def delete(self, user: str, *, conn: AsyncConnection | None = None) -> None:
        """Forget the user's codes (in `conn`'s transaction if given).

        Raises:
            StorageUnavailable: the database cannot be reached.
        """

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(delete(_TABLE).where(_TABLE.c.username == user))

        if conn is not None:
            await write(conn)
            return
        await self._run(write, write=True)

    async def _run(self, op: Callable[[AsyncConnection], Awaitable[_T]], *, write: bool) -> _T:
        # Every write is idempotent (replace, compare-and-set, delete): one retry is safe.
        return await run_db(self._engine, op, write=write, what="the recovery code database")
