"""The macaroon HMAC chain: signing, and verifying a token with its bound discharges.

Compatible with libmacaroons and pymacaroons bit for bit, but not built like pymacaroons' Verifier:
that one recurses into discharges and loops forever on a discharge whose caveat names itself. Here
discharges are visited from an explicit work list, each may be used exactly once, nesting is capped,
and a discharge left unused is an error (as in Go's macaroon library) — so the work is bounded by
the input size whatever the input.

No I/O, no clock: the caller supplies the root key and checks the returned predicates.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

from nacl.bindings import crypto_secretbox, crypto_secretbox_NONCEBYTES, crypto_secretbox_open
from nacl.exceptions import CryptoError

from tokensvc.errors import InvalidToken
from tokensvc.macaroons.macaroon import Caveat, Macaroon

_KEYGEN = b"macaroons-key-generator"
_ZERO_KEY = bytes(32)


# HMAC-SHA256 (RFC 2104) composed from two SHA-256 calls. Every chain step has a new key (the
# previous signature), so nothing can be precomputed per key, and OpenSSL 3's one-shot HMAC —
# behind hmac.digest — spends most of its ~1.5 µs setting up a MAC context for 64 bytes of data;
# two plain digests cost about half that (see loadtests/micro.py's `floor` rows). Keys are
# XORed with the pads by bytes.translate: one C call per pad. Checked against hmac.digest for
# every key length class in tests/tokensvc/test_chain.py.
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_BLOCK = 64
_IPAD_TAIL = b"\x36" * 32  # zero padding of a 32-byte key, XORed with the pads
_OPAD_TAIL = b"\x5c" * 32

try:
    from _hashlib import openssl_sha256 as _sha256  # hashlib.sha256 without its name lookup
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import sha256 as _sha256


def _hmac_python(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256(key, msg), equal to hmac.digest(key, msg, "sha256")."""
    if len(key) == 32:  # every chain step: derived keys and signatures are 32 bytes
        inner = _sha256(key.translate(_IPAD) + _IPAD_TAIL + msg).digest()
        return _sha256(key.translate(_OPAD) + _OPAD_TAIL + inner).digest()
    if len(key) > _BLOCK:
        key = _sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = _sha256(key.translate(_IPAD) + msg).digest()
    return _sha256(key.translate(_OPAD) + inner).digest()


# The compiled chain (tokensvc/_speedups.c: OpenSSL's SHA-256 on one reused digest context) when
# it was built; _hmac_python is the fallback and the reference the tests hold it to.
_FirstPartyChain = Callable[[bytes, bytes, tuple[Caveat, ...]], tuple[bytes, list[bytes]] | None]
_first_party_chain: _FirstPartyChain | None
_hmac: Callable[[bytes, bytes], bytes]
try:
    from tokensvc import _speedups
except ImportError:  # pragma: no cover - built without a C compiler
    _first_party_chain = None
    _hmac = _hmac_python
else:
    _first_party_chain = _speedups.first_party_chain
    _hmac = _speedups.hmac_sha256
COMPILED = _first_party_chain is not None


def derive_key(root_key: bytes) -> bytes:
    """The key the chain starts from, as libmacaroons derives it from a root key."""
    return _hmac(_KEYGEN, root_key)


def _third_party_step(sig: bytes, vid: bytes, cid: bytes) -> bytes:
    return _hmac(sig, _hmac(sig, vid) + _hmac(sig, cid))


def bind_signature(root_signature: bytes, discharge_signature: bytes) -> bytes:
    """Bind a discharge to a token, as pymacaroons' HashSignaturesBinder does."""
    return _hmac(
        _ZERO_KEY, _hmac(_ZERO_KEY, root_signature) + _hmac(_ZERO_KEY, discharge_signature)
    )


def sign(
    *, derived_key: bytes, identifier: bytes, caveats: Sequence[Caveat], location: bytes | None
) -> Macaroon:
    """A macaroon over first- and third-party caveats whose vids are already made."""
    sig = _hmac(derived_key, identifier)
    for caveat in caveats:
        if caveat.vid is None:
            sig = _hmac(sig, caveat.cid)
        else:
            sig = _third_party_step(sig, caveat.vid, caveat.cid)
    return Macaroon(identifier, tuple(caveats), sig, location)


def add_third_party(
    macaroon: Macaroon, *, caveat_key: bytes, caveat_id: bytes, location: bytes, nonce: bytes
) -> Macaroon:
    """Append a third-party caveat: the discharge key, encrypted under the current signature."""
    if len(nonce) != crypto_secretbox_NONCEBYTES:
        raise ValueError("nonce must be 24 bytes")
    vid = nonce + crypto_secretbox(derive_key(caveat_key), nonce, macaroon.signature)
    caveat = Caveat(caveat_id, vid, location)
    return Macaroon(
        macaroon.identifier,
        (*macaroon.caveats, caveat),
        _third_party_step(macaroon.signature, vid, caveat_id),
        macaroon.location,
    )


def verify_chain(
    token: Macaroon,
    derived_key: bytes,
    discharges: Sequence[Macaroon],
    *,
    max_depth: int = 8,
) -> list[bytes]:
    """Check every signature; return all first-party predicates of the token and its discharges.

    Raises InvalidToken when a signature is wrong, a third-party caveat has no discharge, a
    discharge is used twice or not at all, or nesting goes deeper than `max_depth`.
    """
    if not discharges and _first_party_chain is not None:
        # The common case, first-party caveats only, in one compiled call (None: a third-party
        # caveat, which needs a discharge).
        chained = _first_party_chain(derived_key, token.identifier, token.caveats)
        if chained is None:
            raise InvalidToken("a third-party caveat has no discharge")
        if not hmac.compare_digest(chained[0], token.signature):
            raise InvalidToken("signature mismatch: token")
        return chained[1]
    if not discharges:
        # The same in Python: one straight loop.
        sig = _hmac(derived_key, token.identifier)
        first_party: list[bytes] = []
        for caveat in token.caveats:
            if caveat.vid is not None:
                raise InvalidToken("a third-party caveat has no discharge")
            first_party.append(caveat.cid)
            sig = _hmac(sig, caveat.cid)
        if not hmac.compare_digest(sig, token.signature):
            raise InvalidToken("signature mismatch: token")
        return first_party

    by_id: dict[bytes, int] = {}
    for index, discharge in enumerate(discharges):
        if discharge.identifier in by_id:
            raise InvalidToken("two discharges share one caveat id")
        by_id[discharge.identifier] = index
    used = [False] * len(discharges)

    predicates: list[bytes] = []
    work: list[tuple[Macaroon, bytes, int]] = [(token, derived_key, 0)]
    while work:
        macaroon, key, depth = work.pop()
        sig = _hmac(key, macaroon.identifier)
        for caveat in macaroon.caveats:
            cid = caveat.cid
            vid = caveat.vid
            if vid is None:
                predicates.append(cid)
                sig = _hmac(sig, cid)
                continue
            found = by_id.get(cid)
            if found is None:
                raise InvalidToken("a third-party caveat has no discharge")
            if used[found]:
                raise InvalidToken("a discharge is used more than once (cycle?)")
            if depth + 1 > max_depth:
                raise InvalidToken(f"discharges nested deeper than {max_depth}")
            used[found] = True
            try:
                nonce = vid[:crypto_secretbox_NONCEBYTES]
                discharge_key = crypto_secretbox_open(vid[crypto_secretbox_NONCEBYTES:], nonce, sig)
            except (CryptoError, ValueError, TypeError):
                raise InvalidToken("signature mismatch (third-party caveat)") from None
            work.append((discharges[found], discharge_key, depth + 1))
            sig = _third_party_step(sig, vid, cid)
        if macaroon is not token:
            sig = bind_signature(token.signature, sig)
        if not hmac.compare_digest(sig, macaroon.signature):
            which = "token" if macaroon is token else "discharge (not bound to this token?)"
            raise InvalidToken(f"signature mismatch: {which}")
    if not all(used):
        raise InvalidToken("a discharge was not used by any caveat")
    return predicates
