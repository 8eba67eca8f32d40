"""Minting: turn an authorised request for a token into a signed macaroon on the current root key."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from caveats import Audience, ClientCIDR, Expiry, Generation, Operations, Resources, Subject, encode
from keystore import Keyring
from keystore.discharger_key import DischargerKey
from tokensvc import chain
from tokensvc.bakery.thirdparty import ThirdPartyLocator, ThirdPartyRequest, add_third_party_caveats
from tokensvc.errors import BadRequest
from tokensvc.identifier import new_identifier
from tokensvc.macaroon import Caveat
from tokensvc.tokenformat import encode_token
from tokensvc.verification import GenerationSource

_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,255}")


def _check_names(kind: str, values: tuple[str, ...]) -> None:
    if len(values) > 64:
        raise BadRequest(f"at most 64 {kind}")
    for value in values:
        if not isinstance(value, str) or _NAME.fullmatch(value) is None:
            raise BadRequest(f"each of {kind} must be 1-255 printable characters")


@dataclass(frozen=True)
class MintRequest:
    """What a token may do; every non-empty restriction becomes a caveat."""

    subject: str
    ttl: timedelta
    operations: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    admin: bool = False
    third_party: tuple[ThirdPartyRequest, ...] = ()
    description: str = field(default="", compare=False)

    def validate(self, *, max_ttl: timedelta) -> None:
        _check_names("subject", (self.subject,))
        if self.ttl <= timedelta(0):
            raise BadRequest("ttl must be positive")
        if self.ttl > max_ttl:
            raise BadRequest(
                f"ttl must be at most {int(max_ttl.total_seconds())} seconds on a rotating key"
            )
        _check_names("operations", self.operations)
        _check_names("resources", self.resources)
        _check_names("audiences", self.audiences)
        if len(self.cidrs) > 64:
            raise BadRequest("at most 64 cidrs")
        for cidr in self.cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except (TypeError, ValueError):
                raise BadRequest(f"not an IP network: {str(cidr)[:64]!r}") from None
        if len(self.description) > 1024:
            raise BadRequest("description must be at most 1024 characters")


@dataclass(frozen=True)
class MintedToken:
    token: str
    token_id: str
    key_id: str
    subject: str
    expires_at: datetime
    admin: bool


class Minter:
    """Signs tokens with the keyring's current key; a token never outlives its key."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        generations: GenerationSource,
        location: str,
        clock: Callable[[], datetime],
        third_parties: ThirdPartyLocator | None = None,
        discharger_key: DischargerKey | None = None,
    ) -> None:
        self._keyring = keyring
        self._third_parties = third_parties
        self._discharger_key = discharger_key
        self._generations = generations
        self._location = location.encode()
        self._clock = clock

    @property
    def max_ttl(self) -> timedelta:
        return self._keyring.policy.max_token_ttl

    async def mint(self, request: MintRequest) -> MintedToken:
        request.validate(max_ttl=self.max_ttl)
        key = await self._keyring.current()
        # Minted at the subject's current generation, so a later revoke-all or password change
        # kills this token too; read fresh, never from a cache that could lag a revocation.
        generation = await self._generations.fetch(request.subject)
        now = self._clock()
        expires_at = min(now + request.ttl, key.expires_at).replace(microsecond=0)
        predicates = [
            encode(Subject(request.subject)),
            encode(Expiry(int(expires_at.timestamp()))),
            # Always present, even at 0: were a missing caveat read as generation 0, a holder
            # could attenuate with a high Generation caveat and outlive a revoke-all.
            encode(Generation(generation)),
        ]
        if request.operations:
            predicates.append(encode(Operations(tuple(request.operations))))
        if request.resources:
            predicates.append(encode(Resources(tuple(request.resources))))
        if request.audiences:
            predicates.append(encode(Audience(tuple(request.audiences))))
        if request.cidrs:
            predicates.append(encode(ClientCIDR(tuple(request.cidrs))))
        identifier = new_identifier(key_id=key.id, admin=request.admin)
        macaroon = chain.sign(
            derived_key=key.derived,
            identifier=identifier.encode(),
            caveats=[Caveat(p) for p in predicates],
            location=self._location,
        )
        if request.third_party:
            if self._third_parties is None or self._discharger_key is None:
                raise BadRequest("third-party caveats are not enabled")
            macaroon = await add_third_party_caveats(
                macaroon,
                request.third_party,
                locator=self._third_parties,
                key=self._discharger_key,
            )
        return MintedToken(
            token=encode_token(macaroon),
            token_id=identifier.token_id_hex,
            key_id=key.id,
            subject=request.subject,
            expires_at=expires_at.astimezone(UTC),
            admin=request.admin,
        )
