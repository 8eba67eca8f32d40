"""A random key per deployment, sealed under the KEK, for keyed hashes that must outlive a KEK.

Lockout names identities and addresses in Redis, and login events name users in logs, by keyed
hashes that every replica must compute alike. They used to be keyed by keys derived from the KEK
itself, so rotating the KEK renamed every lockout counter (an attacker's count started afresh)
and broke the link between old and new log lines. Derived from this key instead, they survive a
KEK rotation: the key is sealed under the KEK like every other key at rest, and re-sealed with
them (`keystore.reseal`).

One row in `sealed_secrets`, created once across replicas by `INSERT … ON CONFLICT DO NOTHING`
(as the discharger key is). Not exported from `keystore/__init__.py`: import it by module path.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, TypeVar

from sqlalchemy import LargeBinary, String, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from keystore.crypto import KeyEncryptionKey, SecretBytes
from keystore.db import Base, insert_unless_present
from keystore.db import run as run_database
from keystore.errors import KeyDecryptionError
from keystore.sealing import Sealed, Sealer, as_sealer

__all__ = ["DEPLOYMENT_KEY_ID", "DeploymentKey", "SealedSecretRow", "load_deployment_key"]

DEPLOYMENT_KEY_ID: Final[str] = "deployment-key"
KEY_BYTES: Final[int] = 32

# Not the KEK's personalisation: a derived key from here never equals one KeyEncryptionKey.derive
# made for the same purpose.
_PERSON: Final[bytes] = b"tokensvc deploy"

_T = TypeVar("_T")


class SealedSecretRow(Base):
    """A secret of the deployment (by name), sealed under the KEK named by `kek_id`."""

    __tablename__ = "sealed_secrets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"SealedSecretRow(id={self.id!r}, kek_id={self.kek_id!r})"


_TABLE: Final[Table] = SealedSecretRow.__table__  # type: ignore[assignment]


class DeploymentKey:
    """The deployment's random key; only keys derived from it for a purpose ever leave it."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a deployment key is {KEY_BYTES} bytes")
        self._key = SecretBytes(bytes(key))

    def derive(self, purpose: bytes) -> bytes:
        """A 32-byte key for `purpose`, one way (BLAKE2b keyed by this key, personalised)."""
        if not purpose:
            raise ValueError("a derived key needs a purpose")
        return hashlib.blake2b(
            purpose, key=self._key.reveal(), person=_PERSON, digest_size=32
        ).digest()

    def __repr__(self) -> str:
        return "DeploymentKey(<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("DeploymentKey cannot be pickled")


def sealed_secret_aad(secret_id: str) -> bytes:
    """The associated data a sealed secret is bound to: its table and row."""
    return b"sealed_secrets/" + secret_id.encode("utf-8")


async def load_deployment_key(
    engine: AsyncEngine,
    *,
    kek: KeyEncryptionKey | Sealer,
    clock: Callable[[], datetime],
) -> DeploymentKey:
    """The stored deployment key, created on first use; the same key for every replica.

    Raises:
        UnknownKek, KeyDecryptionError: the row is sealed under a KEK not given, or tampered.
        StoreUnavailable: the database cannot be reached.
    """
    sealer = as_sealer(kek)
    row = await _run(engine, _select, write=False)
    if row is None:
        sealed = sealer.seal(
            secrets.token_bytes(KEY_BYTES), aad=sealed_secret_aad(DEPLOYMENT_KEY_ID)
        )
        values = {
            "id": DEPLOYMENT_KEY_ID,
            "kek_id": sealed.kek_id,
            "ciphertext": sealed.ciphertext,
            "created_at": clock(),
        }
        await _run(engine, lambda conn: insert_unless_present(conn, _TABLE, values), write=True)
        # Whoever won the race, the row in the database is the key: read it back.
        row = await _run(engine, _select, write=False)
        if row is None:  # pragma: no cover - only if someone deletes it between the two steps
            raise KeyDecryptionError("the deployment key vanished while being created")
    return DeploymentKey(
        sealer.open(
            Sealed(row["kek_id"], bytes(row["ciphertext"])),
            aad=sealed_secret_aad(DEPLOYMENT_KEY_ID),
            what="the deployment key",
        )
    )


async def _select(conn: AsyncConnection) -> dict[str, Any] | None:
    query = select(_TABLE).where(_TABLE.c.id == DEPLOYMENT_KEY_ID)
    found = (await conn.execute(query)).mappings().first()
    return None if found is None else dict(found)


async def _run(
    engine: AsyncEngine, op: Callable[[AsyncConnection], Awaitable[_T]], *, write: bool
) -> _T:
    # A read, and an insert that yields to an existing row: both safe to retry once.
    return await run_database(engine, op, write=write, what="the deployment key database")
