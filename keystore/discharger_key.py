"""The bakery discharger's X25519 key pair: one row, encrypted at rest, made once across replicas.

tokensvc decrypts third-party caveats addressed to it with this key, and encrypts the caveats it
adds for other dischargers with it (the bakery's NaCl box is between the two parties' keys). The
private half is sealed with the key-encryption key exactly as root keys are; the public half is
stored in the clear so that it can be shown without the KEK.

Several replicas starting on an empty table race to create the key; `INSERT … ON CONFLICT DO
NOTHING` on the primary key lets exactly one row in, and every replica then reads that row, so
all of them serve the same public key.

Not exported from `keystore/__init__.py`: import it by module path.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

from nacl.bindings import crypto_scalarmult_base
from sqlalchemy import LargeBinary, String, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from keystore.crypto import KeyEncryptionKey, SecretBytes
from keystore.db import Base, insert_unless_present
from keystore.db import run as run_database
from keystore.errors import KeyDecryptionError
from keystore.sealing import Sealed, Sealer, as_sealer

__all__ = [
    "DEFAULT_KEY_ID",
    "KEY_BYTES",
    "DischargerKey",
    "DischargerKeyRow",
    "load_discharger_key",
]

KEY_BYTES: Final[int] = 32
DEFAULT_KEY_ID: Final[str] = "bakery-x25519"

_T = TypeVar("_T")


class DischargerKeyRow(Base):
    """The discharger's key pair; the private key is sealed under the KEK named by `kek_id`."""

    __tablename__ = "discharger_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    kek_id: Mapped[str] = mapped_column(String(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"DischargerKeyRow(id={self.id!r}, kek_id={self.kek_id!r})"


_TABLE: Final[Table] = DischargerKeyRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class DischargerKey:
    """An X25519 key pair; the private half never shows in repr, logs or equality."""

    id: str
    private: SecretBytes = field(repr=False, compare=False)
    public: bytes
    created_at: datetime | None = field(default=None, compare=False)

    @classmethod
    def from_private(
        cls, private: bytes, *, id: str = DEFAULT_KEY_ID, created_at: datetime | None = None
    ) -> DischargerKey:
        """The pair for a 32-byte X25519 private key (the public half is derived)."""
        if len(private) != KEY_BYTES:
            raise ValueError(f"an X25519 private key is {KEY_BYTES} bytes")
        public: bytes = crypto_scalarmult_base(private)
        return cls(id=id, private=SecretBytes(bytes(private)), public=public, created_at=created_at)

    @classmethod
    def generate(
        cls, *, id: str = DEFAULT_KEY_ID, created_at: datetime | None = None
    ) -> DischargerKey:
        """A fresh random key pair."""
        return cls.from_private(secrets.token_bytes(KEY_BYTES), id=id, created_at=created_at)


def discharger_key_aad(key_id: str) -> bytes:
    """The associated data the private key's ciphertext is bound to (keystore.reseal uses it)."""
    return _aad(key_id)


def _aad(key_id: str) -> bytes:
    # Bound to the table and the row: a root-key ciphertext (whose aad is its bare id) copied
    # here, or this one copied onto another row, does not decrypt.
    return b"discharger_keys/" + key_id.encode("utf-8")


async def load_discharger_key(
    engine: AsyncEngine,
    *,
    kek: KeyEncryptionKey | Sealer,
    clock: Callable[[], datetime],
    key_id: str = DEFAULT_KEY_ID,
) -> DischargerKey:
    """The stored key pair, created on first use; the same pair for every replica.

    Raises `KeyDecryptionError` when the row was sealed under another KEK or was tampered with,
    and `StoreUnavailable` when the database cannot be reached.
    """
    sealer = as_sealer(kek)
    row = await _run(engine, lambda conn: _select(conn, key_id), write=False)
    if row is None:
        fresh = DischargerKey.generate(id=key_id, created_at=clock())
        sealed = sealer.seal(fresh.private.reveal(), aad=_aad(key_id))
        values = {
            "id": key_id,
            "public_key": fresh.public,
            "kek_id": sealed.kek_id,
            "ciphertext": sealed.ciphertext,
            "created_at": fresh.created_at,
        }
        await _run(engine, lambda conn: insert_unless_present(conn, _TABLE, values), write=True)
        # Whoever won the race, the row in the database is the key: read it back.
        row = await _run(engine, lambda conn: _select(conn, key_id), write=False)
        if row is None:  # pragma: no cover - only if someone deletes it between the two steps
            raise KeyDecryptionError("the discharger key vanished while being created")
    return _decrypt(row, sealer)


def _decrypt(row: dict[str, Any], sealer: Sealer) -> DischargerKey:
    private = sealer.open(
        Sealed(row["kek_id"], bytes(row["ciphertext"])),
        aad=_aad(row["id"]),
        what=f"discharger key {row['id']}",
    )
    key = DischargerKey.from_private(private, id=row["id"], created_at=row["created_at"])
    # The public half is stored in the clear; a row whose halves disagree was tampered with.
    if not hmac.compare_digest(key.public, bytes(row["public_key"])):
        raise KeyDecryptionError(f"discharger key {row['id']}: public key does not match")
    return key


async def _select(conn: AsyncConnection, key_id: str) -> dict[str, Any] | None:
    found = (await conn.execute(select(_TABLE).where(_TABLE.c.id == key_id))).mappings().first()
    return None if found is None else dict(found)


async def _run(
    engine: AsyncEngine, op: Callable[[AsyncConnection], Awaitable[_T]], *, write: bool
) -> _T:
    # Both operations are idempotent (a read, and an insert that yields to an existing row), so
    # one retry on a connection the server closed meanwhile is safe.
    return await run_database(engine, op, write=write, what="the discharger key database")
