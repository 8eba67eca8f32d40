"""Verification: is this token (with its discharges) genuine, alive, and allowed in this context?

The hot path of the service. Every step that does not need I/O stays synchronous; the only awaits
are a root-key cache miss and a subject-generation cache miss, each of which goes to the database
once and is then served from memory.

The signature chain of a token (with its discharges) depends only on their bytes and the root key,
so its result is cached (`ChainCache`): a hit skips decoding and every HMAC. Nothing that depends
on the request or on time is cached: each hit re-checks that the root key is still live, the
subject's generation, and every caveat against the context — so expiry, revocation and scope are
decided afresh on every call.

Token lifecycle (`attach`): a revoked token id is refused with a dict lookup (the set is kept
current in place by tokensvc.tokens.revocation); a successful verify notes the token's use in memory
(tokensvc.tokens.usage flushes it); service tokens name keys `t-<token id>` that come from
keystore.service_keys instead of the rotating keyring, cached the same way.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Final, NamedTuple, Protocol

from caveats import MFA_REQUIRED, Context, Policy, decide, subject_of
from keystore import KeyDecryptionError, Keyring, RootKey, StoreUnavailable
from keystore.service_keys import KEY_ID_PREFIX, ServiceKeys
from tokensvc.errors import BadRequest, CaveatDenied, InvalidToken, Unavailable
from tokensvc.macaroons import chain
from tokensvc.macaroons.identifier import TokenIdentifier, decode_identifier
from tokensvc.macaroons.macaroon import Macaroon
from tokensvc.macaroons.tokenformat import decode_token

log = logging.getLogger("tokensvc.tokens.verification")


def _stale() -> Unavailable:
    """What a decision raises while revocations cannot be learnt (Verifier.stale)."""
    return Unavailable(
        "revocations cannot be refreshed (the database is unreachable)", retry_after=5
    )


class UsageSink(Protocol):
    """Where token uses go (tokensvc.tokens.usage): an in-memory note, no I/O."""

    def record(self, token_id: str, now: float) -> None: ...


class GenerationSource(Protocol):
    """Where the current token generation of a subject comes from (revoke-all, password change)."""

    def current(self, subject: str) -> int:
        """What this process knows, without I/O (the verify path)."""
        ...

    async def fetch(self, subject: str) -> int:
        """Read fresh from the database (minting)."""
        ...


# NamedTuples, not frozen dataclasses: as immutable, and a third of the cost to build — one of
# each is built per uncached /verify, a Verified per cached one. Built with tuple.__new__ and
# every field in order, which skips the NamedTuple's Python-level __new__ (half the cost).
_new_tuple = tuple.__new__


class Verified(NamedTuple):
    subject: str
    token_id: str
    key_id: str
    admin: bool
    expires_at: float | None
    declared: dict[str, str]
    # Every first-party caveat of the token and its discharges, decoded: what minting from this
    # token must carry into the child (tokensvc.tokens.delegation).
    policy: Policy
    # Minted after a second factor (the identifier's flag: no holder can add it).
    mfa: bool = False


class Vouched(NamedTuple):
    """What a cacheable verdict states (tokensvc.services.verdicts): a genuine, live token's facts."""

    subject: str
    token_id: str
    key_id: str
    admin: bool
    generation: int  # the subject's generation as this process knows it now
    key_expires_at: float  # unix seconds
    policy: Policy  # every first-party caveat of the token and its discharges, in chain order
    now: float
    mfa: bool  # minted after a second factor (the identifier's flag)


class _Chained(NamedTuple):
    """What a verified signature chain established; valid as long as its root key is."""

    policy: Policy  # the first-party predicates, decoded once
    subject: str
    token_id: str
    key_id: str
    admin: bool
    key_expires_at: float  # unix seconds; the chain proves nothing from then on
    mfa: bool


def chain_key(token: str, discharges: Sequence[str] = ()) -> bytes:
    """The chain cache's key for a token and its discharges: a BLAKE2b-256 digest of them.

    A digest, not the strings: a token is ~400 bytes and the cache holds 50,000 chains by
    default, so keeping the strings cost ~16 MiB more than keeping 32 bytes each (issue 17's
    RSS bound), for ~0.8 us of hashing a verify. 256 bits, so that finding two token bundles
    with one key (a forged bundle sharing the cached chain of a genuine one) costs 2^128 work
    even to a holder who can mint genuine variants at will. Each string is length-prefixed, so
    no split of the same bytes into token and discharges gives the same key.
    """
    if not discharges:
        return blake2b(token.encode("utf-8", "surrogatepass"), digest_size=32).digest()
    digest = blake2b(digest_size=32, person=b"bundle")
    for part in (token, *discharges):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()


class ChainCache:
    """A bounded LRU of verified chains, keyed by `chain_key` of the exact token and discharges.

    Bounded by weight, not by count: an entry holds its token's decoded caveats, so a large
    token costs more (red team: 15 KB tokens of 100 caveats, sent by anyone, cost ~41 KB each,
    and 20,000 of them 820 MB; then tokens of IPv6 networks, ~65 KB per KB of caveat). An entry
    weighs one plus one per 2 KB its decoded predicates keep (`chain_weight`); the weights add
    up to at most `max_entries`, which ordinary tokens fill one apiece. An entry costs ~1.4 KB
    besides its predicates, so a unit of weight costs at most ~2 KB however tokens are chosen.
    Weights above one are kept apart, so a hit (the hot path) reads the one dict it always did.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, _Chained] = OrderedDict()
        self._heavy: dict[bytes, int] = {}  # the weight of every entry that weighs more than 1
        self._weight = 0

    def get(self, key: bytes) -> _Chained | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: _Chained, weight: int = 1) -> None:
        if weight > self._max:  # also: no cache at all (max_entries 0)
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = entry
        if weight > 1:
            self._heavy[key] = weight
        self._weight += weight
        while self._weight > self._max:
            oldest, _ = self._entries.popitem(last=False)
            self._weight -= self._heavy.pop(oldest, 1)

    def forget_key(self, key_id: str) -> None:
        """Drop every chain signed by `key_id` (a revoked root key)."""
        stale = [k for k, v in self._entries.items() if v.key_id == key_id]
        for k in stale:
            self._drop(k)

    def _drop(self, key: bytes) -> None:
        del self._entries[key]
        self._weight -= self._heavy.pop(key, 1)

    @property
    def weight(self) -> int:
        return self._weight

    def __len__(self) -> int:
        return len(self._entries)


#: Estimated bytes (Policy.footprint) per unit of a cached chain's weight.
WEIGHT_UNIT: Final = 2048


def chain_weight(chained: _Chained) -> int:
    """A cached chain's weight: one, and one more per WEIGHT_UNIT bytes its decoded predicates
    keep alive (caveats.checker's footprint, which counts a list of networks per network, not
    per byte: red team, ~65 KB from a 1 KB predicate)."""
    return 1 + chained.policy.footprint // WEIGHT_UNIT


@dataclass(frozen=True, slots=True)
class Limits:
    max_token_bytes: int = 16384
    max_caveats: int = 128
    max_discharges: int = 16
    max_depth: int = 8
    cache_entries: int = 50_000


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
        if not chain.COMPILED:
            log.warning(
                "tokensvc._speedups is not built: uncached verifies take the pure-Python path, "
                "about twice as slow (install gcc and libssl-dev, then reinstall tokensvc)"
            )
        self._keyring = keyring
        self._limits = limits
        self._generations = generations
        self._clock = clock
        self.cache = ChainCache(limits.cache_entries)
        self._service_keys: ServiceKeys | None = None
        self._revoked: dict[str, float] = {}
        self._revoked_keys: set[str] = set()
        self._usage: UsageSink | None = None
        #: Set while this process can learn of no revocation (tokensvc.tokens.revocation,
        #: `stale`): every decision is then a 503, never an allow that may be revoked.
        self.stale = False

    def attach(
        self,
        *,
        service_keys: ServiceKeys | None = None,
        revoked: dict[str, float] | None = None,
        revoked_keys: set[str] | None = None,
        usage: UsageSink | None = None,
    ) -> None:
        """Wire the token lifecycle in: service-token keys, the revoked-id set (a dict kept
        current in place by tokensvc.tokens.revocation), revoked root keys, and last-use recording."""
        self._service_keys = service_keys
        if revoked is not None:
            self._revoked = revoked
        if revoked_keys is not None:
            self._revoked_keys = revoked_keys
        self._usage = usage

    def _cached_key(self, key_id: str, now: float) -> RootKey | None:
        if key_id.startswith(KEY_ID_PREFIX):
            return self._service_keys.get_cached(key_id, at=now) if self._service_keys else None
        return self._keyring.get_cached(key_id, at=now)

    def parse(self, token: str) -> Macaroon:
        """Decode a token string, within the configured size limits."""
        return decode_token(
            token, max_bytes=self._limits.max_token_bytes, max_caveats=self._limits.max_caveats
        )

    async def _root_key(self, key_id: str) -> RootKey:
        key = self._cached_key(key_id, self._clock())
        if key is None:
            if key_id in self._revoked_keys:
                raise InvalidToken("root key revoked")
            try:
                key = await self._read_key(key_id)
            except StoreUnavailable as exc:
                # The verify service's boundary: a key this process has not cached and cannot
                # read is neither an allow nor a deny, but "ask again" (503 + Retry-After).
                raise Unavailable("the root key store is unavailable", retry_after=2) from exc
            except KeyDecryptionError as exc:
                # Sealed under a KEK this replica was not given (a rotation rolled out in the
                # wrong order) or damaged: not the holder's fault, so no deny; another replica
                # may hold the KEK. The reason goes to the log, never to the caller.
                log.error("root key %s cannot be opened: %s", key_id[:64], exc)
                raise Unavailable(
                    "this replica cannot open the token's root key", retry_after=2
                ) from exc
            if key_id in self._revoked_keys:
                # Revoked while it loaded (another replica's revocation arrived meanwhile): the
                # load has put it back in the key cache; take it out again (red team: it stayed
                # cached, harmless only while every token it signed has a registry row).
                self.forget_root_key(key_id)
                raise InvalidToken("root key revoked")
        return key

    def forget_root_key(self, key_id: str) -> None:
        """Drop a revoked root key (or service-token key) from every cache this process holds
        of it: the key store's and the verified chains'."""
        if key_id.startswith(KEY_ID_PREFIX):
            if self._service_keys is not None:
                self._service_keys.forget(key_id)
        else:
            self._keyring.forget(key_id)
        self.cache.forget_key(key_id)

    async def _read_key(self, key_id: str) -> RootKey:
        if key_id.startswith(KEY_ID_PREFIX):
            key = await self._service_keys.get(key_id) if self._service_keys else None
            if key is None:
                raise InvalidToken("service token unknown, revoked or expired")
            return key
        key = await self._keyring.get(key_id)
        if key is None:
            raise InvalidToken("root key unknown or expired (token outlived its key)")
        return key

    async def authenticate(self, token: str) -> tuple[str, str, str, float]:
        """Whether `token` was signed by us, whatever its caveats or discharges say.

        (token id, subject, key id, key expiry) of a genuine token; InvalidToken otherwise.
        For self-revocation: expiry and third-party caveats do not matter, the signature does.
        """
        macaroon = self.parse(token)
        identifier = decode_identifier(macaroon.identifier)
        key = await self._root_key(identifier.key_id)
        # Recompute the signature over every caveat as signed (third-party ones included) and
        # compare: proof of possession of a genuine token, no discharges needed.
        expected = chain.sign(
            derived_key=key.derived,
            identifier=macaroon.identifier,
            caveats=macaroon.caveats,
            location=macaroon.location,
        )
        if not hmac.compare_digest(expected.signature, macaroon.signature):
            raise InvalidToken("signature mismatch: token")
        subject = subject_of(c.cid for c in macaroon.caveats if c.vid is None)
        if subject is None:
            raise InvalidToken("token names no subject, or conflicting ones")
        return identifier.token_id_hex, subject, identifier.key_id, key.expires_ts

    async def verify(
        self,
        token: str,
        discharges: Sequence[str] = (),
        *,
        operation: str | None = None,
        resource: str | None = None,
        audience: str | None = None,
        client_ip: str | None = None,
        require_mfa: bool = False,
    ) -> Verified:
        """Raise InvalidToken (401) or CaveatDenied (403), or return what the token says.

        `require_mfa`: the caller accepts only a token minted after a second factor (403 else).
        """
        cache_key = chain_key(token, discharges)
        chained, now = self._chained(cache_key, token, discharges)
        if chained is None:  # a root key this process has not cached yet: read it first
            chained = await self._verify_chain(token, discharges)
            self.cache.put(cache_key, chained, chain_weight(chained))
            now = self._clock()
        return self._decide(chained, now, operation, resource, audience, client_ip, require_mfa)

    async def vouch(self, token: str, discharges: Sequence[str] = ()) -> Vouched:
        """The facts of a genuine, live token, for a verdict others cache and decide on.

        The signatures, the root key, revocation, the subject's generation and every caveat
        are checked as `verify` checks them, against an empty context: a failure that makes the
        token bad everywhere raises InvalidToken; a caveat that merely needs a request field
        (operation, resource, ...) is not an error here — the holder of the verdict decides
        each request with `caveats.decide`. Notes the token's use like `verify`.
        """
        cache_key = chain_key(token, discharges)
        chained, now = self._chained(cache_key, token, discharges)
        if chained is None:
            chained = await self._verify_chain(token, discharges)
            self.cache.put(cache_key, chained, chain_weight(chained))
            now = self._clock()
        if self.stale:
            raise _stale()
        generations = self._generations
        generation = generations.current(chained.subject) if generations is not None else 0
        denial = decide(
            chained.policy, Context(now, generation=generation), chained.token_id in self._revoked
        )
        if denial is not None and denial.invalid:
            raise InvalidToken(denial.reason)
        if self._usage is not None:
            self._usage.record(chained.token_id, now)
        return Vouched(
            chained.subject,
            chained.token_id,
            chained.key_id,
            chained.admin,
            generation,
            chained.key_expires_at,
            chained.policy,
            now,
            chained.mfa,
        )

    def verify_now(
        self,
        token: str,
        discharges: Sequence[str] = (),
        *,
        operation: str | None = None,
        resource: str | None = None,
        audience: str | None = None,
        client_ip: str | None = None,
        require_mfa: bool = False,
    ) -> Verified | None:
        """`verify` without awaiting: None when the answer needs a root key from the database.

        Everything else — a chain-cache hit, or a miss whose root key is cached — is decided
        here, which is what lets tokensvc.web.verifyport answer inside the parser's callback.
        Raises exactly what `verify` raises.
        """
        cache_key = chain_key(token, discharges)
        chained, now = self._chained(cache_key, token, discharges)
        if chained is None:
            return None
        return self._decide(chained, now, operation, resource, audience, client_ip, require_mfa)

    def _chained(
        self, cache_key: bytes, token: str, discharges: Sequence[str]
    ) -> tuple[_Chained | None, float]:
        """The verified chain and the time: from the cache, or checked now under a cached root
        key (and cached); None when the root key must be read first."""
        now = self._clock()
        chained = self.cache.get(cache_key)
        # A hit stands while its root key lives; a revoked key's chains are dropped from the
        # cache (forget_key) when the revocation arrives. A miss or a stale hit: the full path.
        if chained is not None and now < chained.key_expires_at:
            return chained, now
        if discharges:
            macaroon, identifier, parsed_discharges = self._decode(token, discharges)
        else:  # _decode inline: the common uncached verify, one call and one tuple fewer
            limits = self._limits
            macaroon = decode_token(
                token, max_bytes=limits.max_token_bytes, max_caveats=limits.max_caveats
            )
            identifier = decode_identifier(macaroon.identifier)
            parsed_discharges = []
        key = self._cached_key(identifier.key_id, now)
        if key is None:
            return None, now
        chained = self._check_chain(macaroon, identifier, parsed_discharges, key)
        self.cache.put(cache_key, chained, chain_weight(chained))
        return chained, now

    def _decide(
        self,
        chained: _Chained,
        now: float,
        operation: str | None,
        resource: str | None,
        audience: str | None,
        client_ip: str | None,
        require_mfa: bool = False,
    ) -> Verified:
        """What a genuine chain allows now, in this context: revocation, generation, caveats
        (`caveats.decide`)."""
        if self.stale:
            raise _stale()
        generations = self._generations
        # Positional: the field order of caveats.Context (now, operation, resource, audience,
        # client_ip, generation).
        context = Context(
            now,
            operation,
            resource,
            audience,
            client_ip,
            generations.current(chained.subject) if generations is not None else 0,
        )
        policy = chained.policy
        revoked = chained.token_id in self._revoked
        # The decision is caveats.decide, the rule the zero-hop client applies to a cached
        # verdict too. Its allow (not revoked, every caveat holds) is tested here first: that
        # saves a call per allowed verify (~0.1 µs of ~2.5), and decide repeats both tests.
        if revoked or not policy.holds(context):
            denial = decide(policy, context, revoked)
            if denial is not None:
                if denial.invalid:
                    raise InvalidToken(denial.reason)
                raise CaveatDenied(denial.reason)
        # After the caveats: a revoked or expired token is a 401 whatever the context asks.
        if require_mfa and not chained.mfa:
            raise CaveatDenied(MFA_REQUIRED.reason)
        if self._usage is not None:
            self._usage.record(chained.token_id, now)
        declared = policy.declared
        return _new_tuple(
            Verified,
            (
                chained.subject,
                chained.token_id,
                chained.key_id,
                chained.admin,
                policy.expires_at,
                dict(declared) if declared else {},  # callers get their own copy
                policy,
                chained.mfa,
            ),
        )

    def _decode(
        self, token: str, discharges: Sequence[str]
    ) -> tuple[Macaroon, TokenIdentifier, list[Macaroon]]:
        """The token and its discharges parsed, not yet checked (a plain tuple: built on every
        uncached verify)."""
        limits = self._limits
        parsed_discharges: list[Macaroon] = []
        if discharges:
            if len(discharges) > limits.max_discharges:
                raise BadRequest(f"at most {limits.max_discharges} discharges")
            parsed_discharges = [self.parse(d) for d in discharges]
        macaroon = decode_token(
            token, max_bytes=limits.max_token_bytes, max_caveats=limits.max_caveats
        )
        return macaroon, decode_identifier(macaroon.identifier), parsed_discharges

    async def _verify_chain(self, token: str, discharges: Sequence[str]) -> _Chained:
        """Decode and check every signature, reading the root key if need be."""
        macaroon, identifier, parsed_discharges = self._decode(token, discharges)
        key = await self._root_key(identifier.key_id)
        return self._check_chain(macaroon, identifier, parsed_discharges, key)

    def _check_chain(
        self,
        macaroon: Macaroon,
        identifier: TokenIdentifier,
        parsed_discharges: list[Macaroon],
        key: RootKey,
    ) -> _Chained:
        """InvalidToken unless every signature holds under `key`."""
        predicates = chain.verify_chain(
            macaroon, key.derived, parsed_discharges, max_depth=self._limits.max_depth
        )
        policy = Policy(predicates)
        if policy.subject is None:
            raise InvalidToken("token names no subject, or conflicting ones")
        return _new_tuple(
            _Chained,
            (
                policy,
                policy.subject,
                identifier.token_id.hex(),
                key.id,  # == identifier.key_id (looked up by it), and one string for all its chains
                identifier.admin,
                key.expires_ts,
                identifier.mfa,
            ),
        )
