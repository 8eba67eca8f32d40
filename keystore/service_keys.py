"""Root keys of long-lived service tokens: one random key per token, sealed under the KEK.

Rotating root keys live a day, so a token that must live longer (a service token an admin mints
for a machine, up to a configured maximum such as a year) gets a key of its own, the PyPI model.
The row belongs to the token's registry row (`tokens.token_id`, ON DELETE CASCADE in the
migration): deleting either deletes the key, and the token can never verify again.

Key ids are `t-<token id>`, so a token's identifier says which kind of key signed it and the
verifier asks this store, not the rotating keyring. Decrypted keys are cached in memory like root
keys are; a miss reads the database once for all concurrent callers (`KeyCache.load`).

Not exported from `keystore/__init__.py`: import it by module path. Imports nothing from tokensvc.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

from sqlalchemy import LargeBinary, String, Table, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from keystore.cache import KeyCache
from keystore.crypto import KeyEncryptionKey, SecretBytes
from keystore.db import Base
from keystore.db import run as run_database
from keystore.keyring import ROOT_KEY_BYTES, RootKey
from keystore.sealing import Sealed, Sealer, as_sealer

__all__ = ["KEY_ID_PREFIX", "ServiceKeyRow", "ServiceKeys", "is_service_key_id", "service_key_id"]

KEY_ID_PREFIX: Final[str] = "t-"


def service_key_id(token_id: str) -> str:
    """The key id of the service token `token_id` (hex)."""
    return KEY_ID_PREFIX + token_id


def is_service_key_id(key_id: str) -> bool:
    return key_id.startswith(KEY_ID_PREFIX)


class ServiceKeyRow(Base):
    """A service token's root key, sealed under the KEK named by `kek_id`."""

    __tablename__ = "service_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    kek_id: Mapped[str] = mapped_column(String(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)

    def __repr__(self) -> str:
        return f"ServiceKeyRow(id={self.id!r}, expires_at={self.expires_at!r})"


_TABLE: Final[Table] = ServiceKeyRow.__table__  # type: ignore[assignment]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ServiceKeys:
    """Makes, seals, finds and forgets service-token root keys; the only SQL on service_keys."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        kek: KeyEncryptionKey | Sealer,
        clock: Callable[[], datetime] = _utc_now,
        cache_size: int = 4096,
        negative_ttl: timedelta = timedelta(seconds=5),
        max_concurrent_misses: int = 4,
    ) -> None:
        self._engine = engine
        self._kek = as_sealer(kek)
        self._clock = clock
        self._cache: KeyCache[RootKey] = KeyCache(max_entries=cache_size, negative_ttl=negative_ttl)
        self._miss_limit = asyncio.Semaphore(max_concurrent_misses)

    def new_key(self, token_id: str, *, expires_at: datetime) -> tuple[RootKey, dict[str, Any]]:
        """A fresh key for `token_id` and the row values to insert (with the registry row)."""
        key_id = service_key_id(token_id)
        secret = secrets.token_bytes(ROOT_KEY_BYTES)
        created_at = self._clock().astimezone(UTC)
        expires_at = expires_at.astimezone(UTC)
        sealed = self._kek.seal(secret, aad=_aad(key_id, token_id, expires_at))
        values = {
            "id": key_id,
            "token_id": token_id,
            "created_at": created_at,
            "expires_at": expires_at,
            "kek_id": sealed.kek_id,
            "ciphertext": sealed.ciphertext,
        }
        key = RootKey(
            id=key_id, secret=SecretBytes(secret), created_at=created_at, expires_at=expires_at
        )
        return key, values

    async def insert(self, conn: AsyncConnection, values: dict[str, Any], key: RootKey) -> None:
        """Insert a row made by `new_key` inside the caller's transaction; cache the key."""
        await conn.execute(insert(_TABLE).values(values))
        self._cache.put(key)

    async def delete(self, conn: AsyncConnection, token_id: str) -> None:
        """Delete the key of `token_id` inside the caller's transaction, and forget it here."""
        await conn.execute(delete(_TABLE).where(_TABLE.c.token_id == token_id))
        self.forget(service_key_id(token_id))

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's memory (revoked elsewhere)."""
        self._cache.evict(key_id)

    def get_cached(self, key_id: str, *, at: float | None = None) -> RootKey | None:
        """From memory only (the verify hot path); `at` as in Keyring.get_cached."""
        if at is not None:
            return self._cache.get_at(key_id, at)
        return self._cache.get(key_id, now=self._clock())

    async def get(self, key_id: str) -> RootKey | None:
        """By id; a miss reads the database once; None if unknown, deleted or expired."""
        now = self._clock()
        key = self._cache.get(key_id, now=now)
        if key is not None:
            return key
        if not is_service_key_id(key_id) or self._cache.is_known_missing(key_id, now=now):
            return None
        return await self._cache.load(key_id, partial(self._fetch, key_id, now), now=now)

    async def _fetch(self, key_id: str, now: datetime) -> RootKey | None:
        async with self._miss_limit:
            row = await run_database(
                self._engine,
                partial(_select_row, key_id=key_id),
                write=False,
                what="the service key database",
            )
        if row is None or row["expires_at"] <= now:
            return None
        expires_at = row["expires_at"]
        secret = self._kek.open(
            Sealed(row["kek_id"], bytes(row["ciphertext"])),
            aad=_aad(key_id, row["token_id"], expires_at),
            what=f"service key {key_id}",
        )
        return RootKey(
            id=key_id,
            secret=SecretBytes(secret),
            created_at=row["created_at"],
            expires_at=expires_at,
        )


async def _select_row(conn: AsyncConnection, *, key_id: str) -> Any:
    return (await conn.execute(select(_TABLE).where(_TABLE.c.id == key_id))).mappings().first()


def service_key_aad(key_id: str, token_id: str, expires_at: datetime) -> bytes:
    """The associated data a service key's ciphertext is bound to (keystore.reseal uses it)."""
    return _aad(key_id, token_id, expires_at)


def _aad(key_id: str, token_id: str, expires_at: datetime) -> bytes:
    # Bound to the token and its expiry: a ciphertext copied onto another token's row does not
    # decrypt there, and write access to the table cannot extend a service token's life.
    return f"service|{key_id}|{token_id}|{int(expires_at.timestamp())}".encode()
