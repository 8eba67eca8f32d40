"""Minting: turn an authorised request for a token into a signed macaroon on the current root key."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncConnection

from caveats import (
    Audience,
    CaveatError,
    ClientCIDR,
    Expiry,
    Generation,
    Operations,
    Resources,
    Subject,
    encode,
)
from keystore import Keyring, RootKey
from keystore.discharger_key import DischargerKey
from keystore.service_keys import KEY_ID_PREFIX, ServiceKeys, service_key_id
from tokensvc.bakery.thirdparty import ThirdPartyLocator, ThirdPartyRequest, add_third_party_caveats
from tokensvc.errors import BadRequest
from tokensvc.macaroons import chain
from tokensvc.macaroons.identifier import TOKEN_ID_BYTES, TokenIdentifier
from tokensvc.macaroons.macaroon import Caveat
from tokensvc.macaroons.tokenformat import encode_token
from tokensvc.operations.durations import format_duration
from tokensvc.tokens.registry import TokenRecord, TokenRegistry
from tokensvc.tokens.verification import GenerationSource

_NAME = re.compile(r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]{1,255}")
# Text a token's description may not hold: control characters but tab and newline (PostgreSQL
# refuses NUL in text; a 500 otherwise), lone surrogates.
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
#: Subjects with this prefix name the CLI's break-glass operators in the audit trail
#: (`local:<os user>`): no token may be minted for one, so no holder is audited as an operator.
RESERVED_SUBJECT_PREFIX = "local:"


#: Invisible characters some runtimes' trim() removes besides whitespace (JavaScript: U+FEFF;
#: older .NET: U+200B; U+180E was whitespace before Unicode 6.3): after `bob` they would make
#: a subject that backends read as bob and bob's revocations never reach (red team).
_ALSO_TRIMMED: Final = frozenset("\u180e\u200b\u200c\u200d\u2060\ufeff")


def _trimmed(char: str) -> bool:
    return char.isspace() or char in _ALSO_TRIMMED


def is_name(value: object) -> bool:
    """Whether `value` can be a subject, operation, resource or audience: 1-255 characters, no
    control character (C0, DEL, C1), lone surrogate or line/paragraph separator (openapi.yaml's
    `Name`)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _check_names(kind: str, values: tuple[str, ...]) -> None:
    if len(values) > 64:
        raise BadRequest(f"at most 64 {kind}")
    for value in values:
        if not is_name(value):
            raise BadRequest(f"each of {kind} must be 1-255 printable characters")


@dataclass(frozen=True)
class MintRequest:
    """What a token may do; every non-empty restriction becomes a caveat."""

    subject: str
    ttl: timedelta | None  # None: the service's default lifetime (resolved before signing)
    operations: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    admin: bool = False
    # A second factor was used to get this token (a claim in the signed identifier, never a
    # caveat: a holder could add a caveat). Set by the login service, and by minting from a
    # token that carries it for the same subject (tokensvc.tokens.delegation).
    mfa: bool = False
    third_party: tuple[ThirdPartyRequest, ...] = ()
    description: str = field(default="", compare=False)
    # A long-lived service token on a root key of its own (TTL up to the service maximum).
    service: bool = False
    # Predicates of the minting token, copied verbatim (tokensvc.tokens.delegation): attenuation only.
    carried: tuple[bytes, ...] = ()
    # The token expires no later than this (the minting token's expiry), whatever the TTL.
    not_after: datetime | None = None

    def validate(self) -> None:
        """BadRequest unless every field is well-formed (the TTL's bound is the minter's)."""
        _check_names("subject", (self.subject,))
        if _trimmed(self.subject[0]) or _trimmed(self.subject[-1]):
            # Header parsers strip it: `X-Auth-Subject: bob ` reaches a backend as bob, while
            # revoke-all, password changes and deletion of bob never touch `bob ` (red team).
            raise BadRequest(
                "subject may not begin or end with whitespace (or an invisible character)"
            )
        if self.subject.startswith(RESERVED_SUBJECT_PREFIX):
            raise BadRequest(
                f"subject may not start with {RESERVED_SUBJECT_PREFIX!r}"
                " (reserved for local operators in the audit trail)"
            )
        if self.ttl is not None and self.ttl <= timedelta(0):
            raise BadRequest("ttl must be positive")
        _check_names("operations", self.operations)
        _check_names("resources", self.resources)
        _check_names("audiences", self.audiences)
        if len(self.cidrs) > 64:
            raise BadRequest("at most 64 cidrs")
        for cidr in self.cidrs:
            try:  # the caveat's own rule: `addr[/prefixlen]`, no zone, no netmask
                ClientCIDR((cidr,))
            except (TypeError, ValueError, CaveatError):
                raise BadRequest(f"not an IP network: {str(cidr)[:64]!r}") from None
        if len(self.description) > 1024 or _NOT_TEXT.search(self.description):
            raise BadRequest(
                "description must be at most 1024 characters, no control character"
                " but tab and newline"
            )


@dataclass(frozen=True)
class MintedToken:
    token: str
    token_id: str
    key_id: str
    subject: str
    expires_at: datetime
    admin: bool
    created_at: datetime
    mfa: bool = False
    kind: str = "rotating"
    description: str = ""


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
        self._registry: TokenRegistry | None = None
        self._service_keys: ServiceKeys | None = None
        self._max_service_ttl = timedelta(0)

    def attach(
        self,
        registry: TokenRegistry,
        *,
        service_keys: ServiceKeys | None = None,
        max_service_ttl: timedelta = timedelta(0),
    ) -> None:
        """Register every token minted from now on; with `service_keys`, allow TTLs beyond the
        rotating keys' (up to `max_service_ttl`) on a root key of the token's own."""
        self._registry = registry
        self._service_keys = service_keys
        self._max_service_ttl = max_service_ttl

    @property
    def max_ttl(self) -> timedelta:
        return self._keyring.policy.max_token_ttl

    async def mint(
        self,
        request: MintRequest,
        *,
        created_by: str | None = None,
        generation: int | None = None,
        also: Callable[[AsyncConnection, MintedToken], Awaitable[None]] | None = None,
        parent_id: str | None = None,
        bounded: bool = False,
    ) -> MintedToken:
        """Sign a token; registered (when a registry is attached) before it is returned.

        `generation`: the subject's generation to mint at, when the caller read it before
        deciding (login reads it before checking the password, so a password change made
        meanwhile revokes this token too); else it is read fresh. `also` runs in the
        registration's transaction (the service's audit row). `parent_id`: the token whose
        authority mints this one; revoking it revokes this one too. `bounded`: the parent could
        not mint past its own expiry, so this token cannot either.
        """
        service = request.service
        if service and self._service_keys is None:
            raise BadRequest("service tokens are not enabled")
        request.validate()
        max_ttl = self._max_service_ttl if service else self.max_ttl
        if request.ttl is None:
            raise ValueError("MintRequest.ttl must be resolved before minting")
        if request.ttl > max_ttl:
            # In the units a --ttl or "ttl" is written in: "at most 23h", not 82800 seconds.
            raise BadRequest(f"ttl must be at most {format_duration(max_ttl)}")
        token_id = secrets.token_bytes(TOKEN_ID_BYTES)
        service_row: dict[str, Any] | None = None
        if service:
            assert self._service_keys is not None  # noqa: S101 - narrows the type; service mints are refused without service keys
            key_expiry = _expiry(self._clock(), request.ttl, request.not_after)
            key, service_row = self._service_keys.new_key(token_id.hex(), expires_at=key_expiry)
            identifier = TokenIdentifier(
                key_id=service_key_id(token_id.hex()),
                token_id=token_id,
                admin=request.admin,
                mfa=request.mfa,
            )
        else:
            key = await self._keyring.current()
            identifier = TokenIdentifier(
                key_id=key.id, token_id=token_id, admin=request.admin, mfa=request.mfa
            )
        if generation is None:
            # Minted at the subject's current generation, so a later revoke-all or password
            # change kills this token too; read fresh, never from a cache that could lag.
            generation = await self._generations.fetch(request.subject)
        minted = await self._sign(request, key, identifier, generation=generation)
        if self._registry is not None:
            await self._register(
                minted,
                created_by=created_by,
                service_row=service_row,
                key=key,
                also=also,
                parent_id=parent_id,
                bounded=bounded,
            )
        elif also is not None:
            raise ValueError("`also` needs a registry to run in the registration's transaction")
        return minted

    async def _sign(
        self,
        request: MintRequest,
        key: RootKey,
        identifier: TokenIdentifier,
        *,
        generation: int,
    ) -> MintedToken:
        now = self._clock()
        assert request.ttl is not None  # noqa: S101 - narrows the type; mint() checked
        expires_at = min(_expiry(now, request.ttl, request.not_after), key.expires_at)
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
        predicates.extend(request.carried)
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
            created_at=now.astimezone(UTC),
            admin=request.admin,
            mfa=request.mfa,
            kind="service" if key.id.startswith(KEY_ID_PREFIX) else "rotating",
            description=request.description,
        )

    async def _register(
        self,
        minted: MintedToken,
        *,
        created_by: str | None,
        service_row: dict[str, Any] | None,
        key: RootKey,
        also: Callable[[AsyncConnection, MintedToken], Awaitable[None]] | None,
        parent_id: str | None,
        bounded: bool,
    ) -> None:
        # The row (and a service token's key) is committed before the token leaves this
        # function: a token the registry does not know can never have been handed out.
        assert self._registry is not None  # noqa: S101 - narrows the type; only called with a registry
        record = TokenRecord(
            token_id=minted.token_id,
            subject=minted.subject,
            created_by=(created_by or minted.subject)[:255],
            created_at=minted.created_at,
            expires_at=minted.expires_at,
            description=minted.description,
            admin=minted.admin,
            kind=minted.kind,
            parent_id=parent_id,
            key_id=key.id,
            bounded=bounded,
        )
        service_keys = self._service_keys

        async def in_transaction(conn: AsyncConnection) -> None:
            if service_row is not None:
                assert service_keys is not None  # noqa: S101 - narrows the type; set together with service_row
                await service_keys.insert(conn, service_row, key)
            if also is not None:
                await also(conn, minted)

        await self._registry.add(record, with_conn=in_transaction)


def _expiry(now: datetime, ttl: timedelta, not_after: datetime | None) -> datetime:
    """`now + ttl` in whole seconds, no later than `not_after`."""
    expires_at = now + ttl
    if not_after is not None and not_after < expires_at:
        expires_at = not_after
    return expires_at.replace(microsecond=0)
