"""Verification: is this token (with its discharges) genuine, alive, and allowed in this context?

The hot path of the service. Every step that does not need I/O stays synchronous; the only awaits
are a root-key cache miss and a subject-generation cache miss, each of which goes to the database
once and is then served from memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from caveats import Context, check_predicates, subject_of
from keystore import Keyring, RootKey
from tokensvc import chain
from tokensvc.errors import BadRequest, CaveatDenied, InvalidToken
from tokensvc.identifier import decode_identifier
from tokensvc.macaroon import Macaroon
from tokensvc.tokenformat import decode_token


class GenerationSource(Protocol):
    """Where the current token generation of a subject comes from (revoke-all, password change)."""

    def get_cached(self, subject: str) -> int | None: ...

    async def fetch(self, subject: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Verified:
    subject: str
    token_id: str
    key_id: str
    admin: bool
    expires_at: float | None
    declared: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Limits:
    max_token_bytes: int = 16384
    max_caveats: int = 128
    max_discharges: int = 16
    max_depth: int = 8


class Verifier:
    """Verifies tokens minted on this service's root keys."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        limits: Limits,
        generations: GenerationSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyring = keyring
        self._limits = limits
        self._generations = generations
        self._clock = clock

    def parse(self, token: str) -> Macaroon:
        """Decode a token string, within the configured size limits."""
        return decode_token(
            token, max_bytes=self._limits.max_token_bytes, max_caveats=self._limits.max_caveats
        )

    async def _root_key(self, key_id: str) -> RootKey:
        key = self._keyring.get_cached(key_id)
        if key is None:
            key = await self._keyring.get(key_id)
            if key is None:
                raise InvalidToken("root key unknown or expired (token outlived its key)")
        return key

    async def _generation(self, subject: str) -> int:
        if self._generations is None:
            return 0
        value = self._generations.get_cached(subject)
        if value is None:
            value = await self._generations.fetch(subject)
        return value

    async def verify(
        self,
        token: str,
        discharges: Sequence[str] = (),
        *,
        operation: str | None = None,
        resource: str | None = None,
        audience: str | None = None,
        client_ip: str | None = None,
    ) -> Verified:
        """Raise InvalidToken (401) or CaveatDenied (403), or return what the token says."""
        if len(discharges) > self._limits.max_discharges:
            raise BadRequest(f"at most {self._limits.max_discharges} discharges")
        macaroon = self.parse(token)
        parsed_discharges = [self.parse(d) for d in discharges]
        identifier = decode_identifier(macaroon.identifier)
        key = await self._root_key(identifier.key_id)
        predicates = chain.verify_chain(
            macaroon, key.derived, parsed_discharges, max_depth=self._limits.max_depth
        )
        subject = subject_of(predicates)
        if subject is None:
            raise InvalidToken("token names no subject, or conflicting ones")
        context = Context(
            now=self._clock(),
            operation=operation,
            resource=resource,
            audience=audience,
            client_ip=client_ip,
            generation=await self._generation(subject),
        )
        outcome = check_predicates(predicates, context)
        if outcome.failures:
            reasons = "; ".join(f.reason for f in outcome.failures)
            if any(f.invalid for f in outcome.failures):
                raise InvalidToken(reasons)
            raise CaveatDenied(reasons)
        return Verified(
            subject=subject,
            token_id=identifier.token_id_hex,
            key_id=identifier.key_id,
            admin=identifier.admin,
            expires_at=outcome.expires_at,
            declared=outcome.declared,
        )
