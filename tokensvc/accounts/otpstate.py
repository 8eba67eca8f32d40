"""What the second factor must remember across requests: which codes and challenges are spent.

Two pieces:

- `OnceStore.claim(name)`: true the first time a name is claimed within its TTL, false after.
  A TOTP step accepted for a user, and an MFA challenge that yielded a token, are claimed, so no
  code and no challenge works twice — across workers and replicas with `RedisOnceStore` (one
  `SET NX PX`, atomic), in this process only with `MemoryOnceStore` (the embedded mode; a
  method without an `await` inside is atomic on the event loop).
- `ChallengeCodec`: MFA challenges are sealed boxes (XSalsa20-Poly1305, a key derived from the
  deployment key, so every replica opens what any replica made), not rows: whom the challenge
  is for, from which address, at which generation, until when. Nothing is stored when one is
  made, so the decoys handed out for wrong passwords cost no memory; a challenge is bound to the
  client address and dies at its expiry, or when its one use is claimed.

A decoy and a real challenge have the same length and the same look (the user name, and the
whole payload, are padded), and only this service can open either.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import nacl.exceptions
import nacl.secret
import orjson
from redis.exceptions import RedisClusterException, RedisError

from tokensvc.errors import Unavailable
from tokensvc.operations import metrics
from tokensvc.operations.redisconn import RedisClient

__all__ = [
    "Challenge",
    "ChallengeCodec",
    "MemoryOnceStore",
    "OnceStore",
    "RedisOnceStore",
]

#: Retry-After when Redis cannot be reached (as the lockout store says).
UNAVAILABLE_RETRY_AFTER = 5
_NAME_PAD = 64  # user names are at most 64 characters: every challenge is the same length
# Every sealed payload is padded to this many bytes (JSON allows the trailing spaces), so no
# field's width shows in the challenge's length: a generation of 10 or more is one digit longer
# than an unknown name's 0, which would tell a long-lived account from no account. The largest
# payload (64-character name, 20-digit generation) is about 210 bytes.
_PAYLOAD_BYTES = 256


class OnceStore(Protocol):
    """Names that can each be claimed once within a TTL."""

    async def claim(self, name: str, *, ttl: float, now: float) -> bool:
        """True if `name` was not claimed within its TTL (and is now); False if it was.

        Raises:
            Unavailable: the store cannot be reached (the caller must refuse, never allow).
        """
        ...


class MemoryOnceStore:
    """OnceStore in this process only (the embedded mode); bounded, oldest claims dropped first
    once past `max_entries` (each is kept only for its TTL anyway)."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._until: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries

    def __repr__(self) -> str:
        return f"MemoryOnceStore(entries={len(self._until)})"

    async def claim(self, name: str, *, ttl: float, now: float) -> bool:
        """True the first time within `ttl` seconds."""
        until = self._until.get(name)
        if until is not None and until > now:
            return False
        self._until[name] = now + ttl
        self._until.move_to_end(name)
        # Drop expired claims from the old end, then the oldest past the bound.
        while self._until:
            oldest, expires = next(iter(self._until.items()))
            if expires > now and len(self._until) <= self._max:
                break
            del self._until[oldest]
        return True


#: Claim KEYS[1] for ARGV[2] ms under the claimant's own ARGV[1]: 1 if this claimant holds it
#: (now, or from an earlier copy of the same command), 0 if another claimant does. A command
#: Redis receives twice (a retry after a dropped connection) then answers the same both times.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""


class RedisOnceStore:
    """OnceStore in Redis (one server, Sentinel or Cluster): shared by every worker and replica."""

    def __init__(self, redis: RedisClient, *, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._claim = redis.register_script(_CLAIM)

    def __repr__(self) -> str:
        return f"RedisOnceStore(prefix={self._prefix!r})"

    async def claim(self, name: str, *, ttl: float, now: float) -> bool:
        """True the first time within `ttl` seconds (an atomic SET NX PX, by a script that
        also says yes to this claim's own earlier copy); Redis keeps the time of the TTL, `now`
        is not needed."""
        del now
        try:
            done = await self._claim(
                keys=[self._prefix + name],
                args=[secrets.token_hex(16), max(1, math.ceil(ttl * 1000))],
            )
        except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
            metrics.REDIS_ERRORS.inc()
            raise Unavailable(
                "the second-factor store is unavailable", retry_after=UNAVAILABLE_RETRY_AFTER
            ) from exc
        return bool(done == 1)


@dataclass(frozen=True, slots=True)
class Challenge:
    """What an MFA challenge says: `user` None for a decoy (no such user, or wrong password)."""

    nonce: str  # names the challenge's one use
    identity: str  # the keyed hash of the typed name: what the OTP failure counters count
    user: str | None
    client_ip: str  # the keyed hash of the client address it was issued to
    generation: int
    expires_at: float


class ChallengeCodec:
    """Seals and opens MFA challenges with a key every replica derives alike."""

    def __init__(self, key: bytes) -> None:
        self._box = nacl.secret.SecretBox(key[: nacl.secret.SecretBox.KEY_SIZE])

    def __repr__(self) -> str:
        return "ChallengeCodec(<key redacted>)"

    def issue(
        self,
        *,
        identity: str,
        user: str | None,
        client_ip: str,
        generation: int,
        expires_at: float,
    ) -> str:
        """A new challenge (URL-safe text, the same length for real ones and decoys)."""
        payload = orjson.dumps(
            [
                secrets.token_hex(16),
                identity,
                (user or "").ljust(_NAME_PAD),
                client_ip,
                generation,
                int(expires_at),
            ]
        )
        sealed = self._box.encrypt(payload.ljust(_PAYLOAD_BYTES))
        return base64.urlsafe_b64encode(bytes(sealed)).decode("ascii").rstrip("=")

    def open(self, text: str, *, now: float) -> Challenge | None:
        """The challenge in `text`, or None when it is not one of ours or has expired."""
        if not text or len(text) > 1024:
            return None
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            fields = orjson.loads(self._box.decrypt(raw))
            nonce, identity, padded, client_ip, generation, expires_at = fields
        except (binascii.Error, ValueError, TypeError, nacl.exceptions.CryptoError):
            return None
        if expires_at <= now:
            return None
        user = str(padded).strip() or None
        return Challenge(
            nonce=str(nonce),
            identity=str(identity),
            user=user,
            client_ip=str(client_ip),
            generation=int(generation),
            expires_at=float(expires_at),
        )
