"""The keyring: which root key to mint with, and the keys tokens name, decrypted and cached."""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Final

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystore.cache import KeyCache
from keystore.crypto import KeyEncryptionKey, SecretBytes
from keystore.errors import NoCurrentKey
from keystore.models import KEY_ID_MAX_LENGTH, RootKeyRow
from keystore.policy import RotationPolicy
from keystore.sealing import Sealed, Sealer, as_sealer
from keystore.store import RootKeyStore

ROOT_KEY_BYTES: Final[int] = 32

# libmacaroons/pymacaroons derive the HMAC key of a macaroon from its root key with this constant.
_MACAROON_KEY_GENERATOR: Final[bytes] = b"macaroons-key-generator"

# Ids we make are 16 hex digits; anything far off that cannot exist and never costs a query.
_PLAUSIBLE_KEY_ID: Final = re.compile(rf"[A-Za-z0-9_.-]{{1,{KEY_ID_MAX_LENGTH}}}")


@dataclass(frozen=True, slots=True)
class RootKey:
    """A decrypted root key. Equality and hashing go by id and times, never by the secret."""

    id: str
    secret: SecretBytes = field(repr=False, compare=False)
    created_at: datetime
    expires_at: datetime
    # Every macaroon signature chain starts from HMAC(generator, root key): computed once here.
    derived: bytes = field(init=False, repr=False, compare=False)
    # `expires_at` as unix seconds: the verify path compares it with a float clock, which costs
    # a fraction of building a timezone-aware datetime per call.
    expires_ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        derived = hmac.new(_MACAROON_KEY_GENERATOR, self.secret.reveal(), hashlib.sha256).digest()
        object.__setattr__(self, "derived", derived)
        object.__setattr__(self, "expires_ts", self.expires_at.timestamp())


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a root key: metadata only."""

    id: str
    created_at: datetime
    expires_at: datetime
    current: bool


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Keyring:
    """Root keys for minting and verifying: made on schedule, encrypted at rest, cached in memory.

    `current()` gives the newest key created in the running generate interval and makes one if
    there is none; the unique slot in the database makes racing replicas agree on a single key.
    Keys expired according to `clock` are never returned, from the database or from memory.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        kek: KeyEncryptionKey | Sealer,
        policy: RotationPolicy | None = None,
        clock: Callable[[], datetime] = _utc_now,
        cache_size: int = 1024,
        negative_ttl: timedelta = timedelta(seconds=5),
        max_concurrent_misses: int = 8,
    ) -> None:
        self._store = RootKeyStore(engine)
        self._kek = as_sealer(kek)
        self._policy = policy if policy is not None else RotationPolicy()
        self._clock = clock
        self._cache: KeyCache[RootKey] = KeyCache(max_entries=cache_size, negative_ttl=negative_ttl)
        self._current: RootKey | None = None
        self._current_slot: int | None = None
        self._current_lock = asyncio.Lock()
        # Keys revoked since this process started (few): never taken on again, whatever a read
        # of the database overlapping their revocation returned (red team, helper-68; review,
        # helper-72: a round that began after the word of a revocation still read the row).
        self._revoked: set[str] = set()
        # Distinct random ids in forged tokens each miss the cache; bounding the lookups in flight
        # keeps such a flood from taking every pooled connection away from the rest of the service.
        self._miss_limit = asyncio.Semaphore(max_concurrent_misses)

    @property
    def policy(self) -> RotationPolicy:
        """The rotation policy in force (its `max_token_ttl` caps token lifetimes)."""
        return self._policy

    @property
    def current_created_at(self) -> datetime | None:
        """When the key this process mints with was made; memory only, None before the first."""
        return self._current.created_at if self._current is not None else None

    async def current(self) -> RootKey:
        """The key to mint with: made if this interval has none yet, then cached until it ends."""
        now = self._now()
        key = self._cached_current(now)
        if key is not None:
            return key
        async with self._current_lock:
            now = self._now()
            key = self._cached_current(now)
            if key is None:
                key = await self._establish_current(now)
                if key is None:
                    raise NoCurrentKey("the newest root key is revoked; its deletion is pending")
                self._set_current(key, now)
            return key

    def get_cached(self, key_id: str, *, at: float | None = None) -> RootKey | None:
        """The key from memory only (the verify hot path); None on a miss or if expired.

        `at`: unix seconds on the caller's clock, instead of this keyring's (the verifier's).
        """
        if at is not None:
            return self._cache.get_at(key_id, at)
        return self._cache.get(key_id, now=self._now())

    async def get(self, key_id: str) -> RootKey | None:
        """The key by id; a miss reads the database once for all concurrent callers.

        None if the key is unknown or expired; unknown ids are remembered for a few seconds.
        """
        now = self._now()
        key = self._cache.get(key_id, now=now)
        if key is not None:
            return key
        if _PLAUSIBLE_KEY_ID.fullmatch(key_id) is None:
            return None
        if self._cache.is_known_missing(key_id, now=now) or key_id in self._revoked:
            return None
        return await self._cache.load(key_id, partial(self._fetch, key_id, now), now=now)

    async def rotate(
        self, *, within: Callable[[AsyncConnection, str], Awaitable[None]] | None = None
    ) -> RootKey:
        """Make a new key now (slot NULL); it becomes current for the rest of this interval.
        `within` runs first in the insert's transaction, with the new key's id (the caller's
        check that it may still rotate, and its record of it)."""
        async with self._current_lock:
            now = self._now()
            key, row = self._new_key(now, slot=None)
            hook = within

            async def checked(conn: AsyncConnection) -> None:
                if hook is not None:
                    await hook(conn, key.id)

            await self._store.insert(row, within=checked if hook is not None else None)
            self._cache.put(key)
            self._set_current(key, now)
            return key

    async def revoke(self, key_id: str, *, conn: AsyncConnection | None = None) -> bool:
        """Delete a root key now (every token it signed dies) and forget it; False if there was
        none. In `conn`'s transaction if given (its revocation record's, so that no replica hears
        of the revocation while the key can still be read as the newest), the caller forgets it
        once that commits: a transaction rolled back must leave the key as it was."""
        deleted = await self._store.delete(key_id, conn=conn)
        if conn is None:
            self.forget(key_id)
        return deleted

    def forget(self, key_id: str) -> None:
        """Drop a key from memory (revoked here or by another replica); never mint with it."""
        self._revoked.add(key_id)
        self._cache.evict(key_id)
        if self._current is not None and self._current.id == key_id:
            self._current = self._current_slot = None

    async def maintain(self) -> None:
        """Ensure this interval's key exists, mint with the newest one, and purge expired ones;
        run it periodically.

        The newest key is read again each time, not taken from memory: a rotation another
        replica made becomes this one's current key by its next round (red team, helper-64:
        replicas kept minting on the key an operator rotated away from until the hour ended).
        """
        async with self._current_lock:
            now = self._now()
            key = await self._establish_current(now)
            if key is not None:
                self._set_current(key, now)
        await self.purge()

    async def purge(self) -> int:
        """Delete expired keys from the database and memory; how many rows went."""
        now = self._now()
        deleted = await self._store.delete_expired(now)
        self._cache.evict_expired(now)
        if self._current is not None and self._current.expires_at <= now:
            self._current = self._current_slot = None
        return deleted

    async def list(self) -> builtins.list[KeyInfo]:
        """Metadata of every unexpired key, newest first; `current` marks the one minted with."""
        now = self._now()
        start = self._policy.slot_start(now)
        live = [row for row in await self._store.list() if row.expires_at > now]
        # Rows come newest first, so the first one made in this interval is what current() picks.
        current_id = next((row.id for row in live if row.created_at >= start), None)
        return [
            KeyInfo(
                id=row.id,
                created_at=row.created_at,
                expires_at=row.expires_at,
                current=row.id == current_id,
            )
            for row in live
        ]

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the keyring's clock must return timezone-aware datetimes")
        return now

    def _cached_current(self, now: datetime) -> RootKey | None:
        key = self._current
        if key is None or self._current_slot != self._policy.slot(now) or key.expires_at <= now:
            return None
        return key

    def _set_current(self, key: RootKey, now: datetime) -> None:
        self._current = key
        self._current_slot = self._policy.slot(now)

    async def _establish_current(self, now: datetime) -> RootKey | None:
        """The newest key of the interval `now` is in, made if there is none; None if that key
        is revoked (its row not yet deleted, or read before the deletion)."""
        start = self._policy.slot_start(now)
        row = await self._store.newest_since(start)
        if row is None:
            _, candidate = self._new_key(now, slot=self._policy.slot(now))
            # Whether ours or a racing replica's row won the slot, the re-read finds the winner.
            await self._store.insert_for_slot(candidate)
            row = await self._store.newest_since(start)
            if row is None:
                raise NoCurrentKey(f"no root key found for the interval starting {start}")
        if row.id in self._revoked:
            return None
        key = self._cache.get(row.id, now=now) or self._decrypt(row)
        self._cache.put(key)
        return key

    async def _fetch(self, key_id: str, now: datetime) -> RootKey | None:
        async with self._miss_limit:
            row = await self._store.get(key_id)
        if row is None or row.expires_at <= now or key_id in self._revoked:
            return None
        return self._decrypt(row)

    def _new_key(self, now: datetime, *, slot: int | None) -> tuple[RootKey, RootKeyRow]:
        key_id = secrets.token_hex(8)
        secret = secrets.token_bytes(ROOT_KEY_BYTES)
        created_at = now.astimezone(UTC)
        expires_at = self._policy.expires_at(created_at)
        sealed = self._kek.seal(secret, aad=_aad(key_id, expires_at))
        row = RootKeyRow(
            id=key_id,
            slot=slot,
            created_at=created_at,
            expires_at=expires_at,
            kek_id=sealed.kek_id,
            ciphertext=sealed.ciphertext,
        )
        key = RootKey(
            id=key_id, secret=SecretBytes(secret), created_at=created_at, expires_at=expires_at
        )
        return key, row

    def _decrypt(self, row: RootKeyRow) -> RootKey:
        secret = self._kek.open(
            Sealed(row.kek_id, row.ciphertext),
            aad=_aad(row.id, row.expires_at),
            what=f"root key {row.id}",
        )
        return RootKey(
            id=row.id,
            secret=SecretBytes(secret),
            created_at=row.created_at,
            expires_at=row.expires_at,
        )


def root_key_aad(key_id: str, expires_at: datetime) -> bytes:
    """The associated data a root key's ciphertext is bound to (keystore.reseal uses it too)."""
    return _aad(key_id, expires_at)


def _aad(key_id: str, expires_at: datetime) -> bytes:
    # The key id and expiry as associated data: a ciphertext copied onto another row does not
    # decrypt there, and someone with write access to the table cannot extend a key's life.
    return f"{key_id}|{int(expires_at.timestamp())}".encode()
