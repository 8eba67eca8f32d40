"""Third-party caveat ids in the macaroon bakery's formats, sealed with a NaCl box (X25519).

A third-party caveat carries, encrypted to the discharger's public key, the root key of the
discharge macaroon and the condition to check. The bakery knows three encodings:

- version 1: base64 (standard, padded) of a JSON object
  `{"ThirdPartyPublicKey", "FirstPartyPublicKey", "Nonce", "Id"}`, where `Id` is the box of the JSON
  `{"RootKey", "Condition"}` (all byte fields base64 inside JSON);
- version 2: binary — version byte, the first 4 bytes of the discharger's public key, the first
  party's 32-byte public key, a 24-byte nonce, then the box of: version byte, uvarint length and
  root key, condition (UTF-8, the rest);
- version 3: as version 2 plus, inside the box after the root key, a uvarint length and the first
  party's caveat namespace (`uri:prefix` pairs separated by spaces). In a v3 macaroon the caveat id
  is short and this payload travels beside it (`caveat64` when discharging).

Decoding is strict and bounded: every malformed input raises `MalformedCaveat`, a caveat sealed to
another key (or altered in transit, which the box detects) raises `CaveatNotForUs`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from nacl.bindings import crypto_box, crypto_box_open
from nacl.exceptions import CryptoError

from caveats.bakery import fields
from tokensvc.bakery.errors import CaveatNotForUs, MalformedCaveat

# An annotation only: the CLI's discharge client uses this codec's constants without the stores.
if TYPE_CHECKING:
    from keystore.discharger_key import DischargerKey

VERSION_1: Final = 1
VERSION_2: Final = 2
VERSION_3: Final = 3
LATEST_VERSION: Final = VERSION_3

# The bakery's standard checkers' namespace URI; first parties map it to a prefix (usually "").
STD_NAMESPACE: Final = "std"
LEGACY_NAMESPACE: Final = "std:"

MAX_CAVEAT_BYTES: Final = 8192
MAX_ROOT_KEY_BYTES: Final = 64
ROOT_KEY_BYTES: Final = 24  # what the bakery makes; any 1-64 bytes are accepted when decoding

_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 24
_BOX_OVERHEAD: Final = 16
_PREFIX_BYTES: Final = 4
_V2_HEADER: Final = 1 + _PREFIX_BYTES + _KEY_BYTES + _NONCE_BYTES


@dataclass(frozen=True, slots=True)
class CaveatInfo:
    """What a third-party caveat says, once decrypted."""

    condition: str
    root_key: bytes = field(repr=False)
    first_party_public_key: bytes
    version: int
    # Canonical `uri:prefix ...` text of the first party's namespace ("std:" before version 3).
    namespace: str = LEGACY_NAMESPACE

    @property
    def std_prefix(self) -> str | None:
        """The prefix the first party gives the standard checkers, or None if it has none."""
        return parse_namespace(self.namespace).get(STD_NAMESPACE)


# ---- helpers ---------------------------------------------------------------------------------------


def b64decode_any(text: str | bytes, *, what: str = "value") -> bytes:
    """Base64 in the standard or URL-safe alphabet, padded or not, strictly; else MalformedCaveat."""
    try:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError:
        raise MalformedCaveat(f"{what} is not base64") from None
    raw = raw.rstrip(b"=").translate(bytes.maketrans(b"-_", b"+/"))
    if len(raw) % 4 == 1:
        raise MalformedCaveat(f"{what} is not base64 (bad length)")
    try:
        return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedCaveat(f"{what} is not base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_uvarint(value: int, out: bytearray) -> None:
    if value < 0:
        raise ValueError("uvarint of a negative number")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def decode_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); at most 5 bytes, since no field here comes near 4 GiB."""
    result = 0
    for shift in range(0, 35, 7):
        if pos >= len(data):
            break
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
    raise MalformedCaveat("malformed caveat: bad length prefix")


def parse_namespace(text: str) -> dict[str, str]:
    """`uri:prefix uri:prefix` → {uri: prefix}, as the bakery reads it; MalformedCaveat otherwise."""
    result: dict[str, str] = {}
    for pair in fields(text):
        uri, colon, prefix = pair.rpartition(":")
        if not colon or not uri:
            raise MalformedCaveat("malformed caveat: bad namespace entry")
        if uri in result:
            raise MalformedCaveat("malformed caveat: namespace names a URI twice")
        result[uri] = prefix
    return result


def format_namespace(namespace: dict[str, str]) -> str:
    """The bakery's canonical text: entries sorted by URI, `uri:prefix`, joined by spaces."""
    return " ".join(f"{uri}:{namespace[uri]}" for uri in sorted(namespace))


# ---- encoding (tokensvc adding a caveat for another discharger) ------------------------------------


def encode_caveat(
    condition: str,
    root_key: bytes,
    *,
    version: int,
    third_party_public_key: bytes,
    key: DischargerKey,
    namespace: str = LEGACY_NAMESPACE,
    nonce: bytes | None = None,
) -> bytes:
    """The caveat id (v1, v2) or payload (v3) the discharger holding `third_party_public_key` reads.

    `key` is ours: the discharger learns our public key from the caveat and opens the box with it.
    """
    if len(third_party_public_key) != _KEY_BYTES:
        raise ValueError("a third party's public key is 32 bytes")
    if not 1 <= len(root_key) <= MAX_ROOT_KEY_BYTES:
        raise ValueError("a caveat root key is 1 to 64 bytes")
    nonce = secrets.token_bytes(_NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != _NONCE_BYTES:
        raise ValueError("nonce must be 24 bytes")
    private = key.private.reveal()
    if version == VERSION_1:
        record = json.dumps({"RootKey": _b64(root_key), "Condition": condition}).encode()
        sealed: bytes = crypto_box(record, nonce, third_party_public_key, private)
        wrapper = {
            "ThirdPartyPublicKey": _b64(third_party_public_key),
            "FirstPartyPublicKey": _b64(key.public),
            "Nonce": _b64(nonce),
            "Id": _b64(sealed),
        }
        return base64.b64encode(json.dumps(wrapper).encode())
    if version not in (VERSION_2, VERSION_3):
        raise ValueError("bakery caveat versions are 1, 2 and 3")
    secret = bytearray([version])
    encode_uvarint(len(root_key), secret)
    secret += root_key
    if version == VERSION_3:
        ns = namespace.encode()
        encode_uvarint(len(ns), secret)
        secret += ns
    secret += condition.encode()
    sealed = crypto_box(bytes(secret), nonce, third_party_public_key, private)
    return bytes([version]) + third_party_public_key[:_PREFIX_BYTES] + key.public + nonce + sealed


# ---- decoding (tokensvc as the discharger) ---------------------------------------------------------


def decode_caveat(caveat: bytes, *, key: DischargerKey) -> CaveatInfo:
    """Decrypt a caveat addressed to `key`; MalformedCaveat or CaveatNotForUs otherwise."""
    if not caveat:
        raise MalformedCaveat("empty third-party caveat")
    if len(caveat) > MAX_CAVEAT_BYTES:
        raise MalformedCaveat(f"third-party caveat longer than {MAX_CAVEAT_BYTES} bytes")
    first = caveat[0]
    if first == ord("e"):
        # Base64 of a JSON object starts "ey": the bakery tells v1 from binary by this byte.
        return _decode_v1(caveat, key)
    if first in (VERSION_2, VERSION_3):
        return _decode_v2_v3(first, caveat, key)
    raise MalformedCaveat("unknown third-party caveat version")


def _open(sealed: bytes, nonce: bytes, first_party: bytes, key: DischargerKey) -> bytes:
    try:
        opened: bytes = crypto_box_open(sealed, nonce, first_party, key.private.reveal())
    except (CryptoError, ValueError, TypeError):
        raise CaveatNotForUs(
            "cannot decrypt the third-party caveat: it is encrypted to another key, or was altered"
        ) from None
    return opened


def _decode_v2_v3(version: int, caveat: bytes, key: DischargerKey) -> CaveatInfo:
    if len(caveat) < _V2_HEADER + _BOX_OVERHEAD:
        if version == VERSION_3:
            raise MalformedCaveat(
                "caveat id too short: a version 3 caveat's payload must be sent as caveat64"
            )
        raise MalformedCaveat("third-party caveat too short")
    pos = 1
    prefix = caveat[pos : pos + _PREFIX_BYTES]
    pos += _PREFIX_BYTES
    if not hmac.compare_digest(prefix, key.public[:_PREFIX_BYTES]):
        raise CaveatNotForUs("the third-party caveat is encrypted to another discharger's key")
    first_party = caveat[pos : pos + _KEY_BYTES]
    pos += _KEY_BYTES
    nonce = caveat[pos : pos + _NONCE_BYTES]
    pos += _NONCE_BYTES
    secret = _open(caveat[pos:], nonce, first_party, key)

    if not secret or secret[0] != version:
        raise MalformedCaveat("malformed caveat: inner version does not match")
    length, pos = decode_uvarint(secret, 1)
    if not 1 <= length <= MAX_ROOT_KEY_BYTES or pos + length > len(secret):
        raise MalformedCaveat("malformed caveat: bad root key length")
    root_key = secret[pos : pos + length]
    pos += length
    namespace = LEGACY_NAMESPACE
    if version == VERSION_3:
        length, pos = decode_uvarint(secret, pos)
        if pos + length > len(secret):
            raise MalformedCaveat("malformed caveat: bad namespace length")
        try:
            text = secret[pos : pos + length].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedCaveat("malformed caveat: namespace is not UTF-8") from None
        namespace = format_namespace(parse_namespace(text))
        pos += length
    return CaveatInfo(
        condition=_condition(secret[pos:]),
        root_key=root_key,
        first_party_public_key=first_party,
        version=version,
        namespace=namespace,
    )


def _decode_v1(caveat: bytes, key: DischargerKey) -> CaveatInfo:
    wrapper = _json_object(b64decode_any(caveat, what="caveat id"), "caveat id")
    their_key = _b64_field(wrapper, "ThirdPartyPublicKey", _KEY_BYTES)
    if not hmac.compare_digest(their_key, key.public):
        raise CaveatNotForUs("the third-party caveat is encrypted to another discharger's key")
    first_party = _b64_field(wrapper, "FirstPartyPublicKey", _KEY_BYTES)
    nonce = _b64_field(wrapper, "Nonce", _NONCE_BYTES)
    sealed = _b64_field(wrapper, "Id", None)
    record = _json_object(_open(sealed, nonce, first_party, key), "caveat record")
    root_key = _b64_field(record, "RootKey", None)
    if not 1 <= len(root_key) <= MAX_ROOT_KEY_BYTES:
        raise MalformedCaveat("malformed caveat: bad root key length")
    condition = record.get("Condition")
    if not isinstance(condition, str):
        raise MalformedCaveat("malformed caveat: no condition")
    return CaveatInfo(
        condition=_condition(condition.encode("utf-8", "surrogatepass")),
        root_key=root_key,
        first_party_public_key=first_party,
        version=VERSION_1,
    )


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise MalformedCaveat(f"malformed caveat: {what} is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedCaveat(f"malformed caveat: {what} is not a JSON object")
    return value


def _b64_field(obj: dict[str, Any], name: str, size: int | None) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str):
        raise MalformedCaveat(f"malformed caveat: {name} missing")
    data = b64decode_any(value, what=name)
    if size is not None and len(data) != size:
        raise MalformedCaveat(f"malformed caveat: {name} is not {size} bytes")
    return data


def _condition(raw: bytes) -> str:
    try:
        condition = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedCaveat("malformed caveat: condition is not UTF-8") from None
    if not condition:
        raise MalformedCaveat("malformed caveat: empty condition")
    return condition
