"""Macaroons in the libmacaroons binary formats (v2, and v1 for reading), as pymacaroons writes them.

Our own codec rather than pymacaroons' objects: it is on the /verify hot path, it must be strict
(pymacaroons ignores trailing bytes and accepts out-of-range lengths in places), and it must bound
its work by the input size. Every malformed input raises `MalformedMacaroon`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from tokensvc.errors import InvalidToken

try:
    from tokensvc import _speedups
except ImportError:  # built without a C compiler: the pure-Python parser alone, same results
    _speedups = None  # type: ignore[assignment]

VERSION_2 = 2

# libmacaroons v2 field types (doc/format.txt).
_EOS = 0
_LOCATION = 1
_IDENTIFIER = 2
_VID = 4
_SIGNATURE = 6

SIGNATURE_BYTES = 32


class MalformedMacaroon(InvalidToken):
    """The token's bytes are not a well-formed macaroon."""


# NamedTuples rather than frozen dataclasses: as immutable, and built in a third of the time — an
# uncached /verify builds one per caveat.
class Caveat(NamedTuple):
    """One caveat: first-party when `vid` is None, else third-party with a verification id."""

    cid: bytes
    vid: bytes | None = None
    location: bytes | None = None


class Macaroon(NamedTuple):
    identifier: bytes
    caveats: tuple[Caveat, ...]
    signature: bytes
    location: bytes | None = None

    def __repr__(self) -> str:
        # The signature of a discharge is a bearer secret; keep it out of reprs and logs.
        return f"Macaroon(identifier={self.identifier!r}, caveats={len(self.caveats)})"


# ---- v2 ------------------------------------------------------------------------------------------


def _read_uvarint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode an unsigned varint at `pos`; bounded to 5 bytes, since no field is near 4 GiB."""
    result = 0
    shift = 0
    while pos < end and shift <= 28:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise MalformedMacaroon("malformed token: bad length prefix")


def _field_at(data: bytes, pos: int, end: int) -> tuple[int, bytes, int]:
    """(field type, payload, next position) of the non-EOS field starting at `pos`."""
    if pos + 2 > end:
        raise MalformedMacaroon("malformed token: truncated")
    field = data[pos]
    length = data[pos + 1]
    start = pos + 2
    if length >= 0x80:
        length, start = _read_uvarint(data, pos + 1, end)
    stop = start + length
    if stop > end:
        raise MalformedMacaroon("malformed token: field extends past the end")
    return field, data[start:stop], stop


def parse_v2(data: bytes, *, max_caveats: int) -> Macaroon:
    """Parse binary v2; `max_caveats` bounds the work a hostile token can ask for.

    One pass over the bytes. This runs on every uncached /verify, so the common caveat — a
    first-party identifier under 128 bytes followed by its EOS — is read inline, without a call;
    everything else goes through `_field_at`. The grammar (libmacaroons doc/format.txt):
      2 | [location] identifier EOS | ([location] identifier [vid] EOS)* EOS | signature
    """
    end = len(data)
    if end < 4 or data[0] != VERSION_2:
        raise MalformedMacaroon("malformed token: not a version 2 macaroon")

    field, payload, pos = _field_at(data, 1, end)
    location: bytes | None = None
    if field == _LOCATION:
        location = payload
        field, payload, pos = _field_at(data, pos, end)
    if field != _IDENTIFIER or pos >= end or data[pos] != _EOS:
        raise MalformedMacaroon("malformed token: bad header")
    identifier = payload
    pos += 1

    caveats: list[Caveat] = []
    append = caveats.append
    while True:
        if pos >= end:
            raise MalformedMacaroon("malformed token: truncated")
        field = data[pos]
        if field == _EOS:  # the end of the caveat list
            pos += 1
            break
        if len(caveats) >= max_caveats:
            raise MalformedMacaroon(f"malformed token: more than {max_caveats} caveats")
        if field == _IDENTIFIER and pos + 1 < end:
            stop = pos + 2 + data[pos + 1]  # only meaningful for a one-byte length (< 0x80)
            if data[pos + 1] < 0x80 and stop < end and data[stop] == _EOS:
                append(Caveat(data[pos + 2 : stop]))
                pos = stop + 1
                continue
        field, payload, pos = _field_at(data, pos, end)
        cav_location: bytes | None = None
        if field == _LOCATION:
            cav_location = payload
            field, payload, pos = _field_at(data, pos, end)
        if field != _IDENTIFIER:
            raise MalformedMacaroon("malformed token: caveat without identifier")
        if pos < end and data[pos] == _EOS:
            if cav_location is not None:
                raise MalformedMacaroon("malformed token: location on a first-party caveat")
            append(Caveat(payload))
            pos += 1
            continue
        field, vid, pos = _field_at(data, pos, end)
        if field != _VID or pos >= end or data[pos] != _EOS:
            raise MalformedMacaroon("malformed token: unexpected field in caveat")
        append(Caveat(payload, vid, cav_location))
        pos += 1

    field, signature, pos = _field_at(data, pos, end)
    if field != _SIGNATURE or len(signature) != SIGNATURE_BYTES:
        raise MalformedMacaroon("malformed token: missing or bad signature")
    if pos != end:
        raise MalformedMacaroon("malformed token: trailing bytes")
    return Macaroon(identifier, tuple(caveats), signature, location)


def _append_field(out: bytearray, field: int, payload: bytes) -> None:
    out.append(field)
    length = len(payload)
    while length >= 0x80:
        out.append((length & 0x7F) | 0x80)
        length >>= 7
    out.append(length)
    out += payload


def serialize_v2(macaroon: Macaroon) -> bytes:
    """Binary v2, byte for byte what pymacaroons writes for the same macaroon."""
    out = bytearray([VERSION_2])
    if macaroon.location is not None:
        _append_field(out, _LOCATION, macaroon.location)
    _append_field(out, _IDENTIFIER, macaroon.identifier)
    out.append(_EOS)
    for caveat in macaroon.caveats:
        if caveat.location is not None:
            _append_field(out, _LOCATION, caveat.location)
        _append_field(out, _IDENTIFIER, caveat.cid)
        if caveat.vid is not None:
            _append_field(out, _VID, caveat.vid)
        out.append(_EOS)
    out.append(_EOS)
    _append_field(out, _SIGNATURE, macaroon.signature)
    return bytes(out)


# ---- v1 (read only) ------------------------------------------------------------------------------


def parse_v1(data: bytes, *, max_caveats: int) -> Macaroon:
    """Parse the libmacaroons v1 packet format (4 hex digits of length, `key value\\n`)."""
    pos = 0
    end = len(data)
    location: bytes | None = None
    identifier: bytes | None = None
    signature: bytes | None = None
    caveats: list[list[bytes | None]] = []  # [cid, vid, cl]
    while pos < end:
        if signature is not None:
            raise MalformedMacaroon("malformed token: data after the signature")
        try:
            size = int(data[pos : pos + 4], 16)
        except ValueError:
            raise MalformedMacaroon("malformed token: bad v1 packet header") from None
        if size < 6 or pos + size > end or data[pos + size - 1] != 0x0A:
            raise MalformedMacaroon("malformed token: bad v1 packet")
        key, sep, value = data[pos + 4 : pos + size - 1].partition(b" ")
        if not sep:
            raise MalformedMacaroon("malformed token: bad v1 packet")
        pos += size
        if key == b"location" and identifier is None and location is None:
            location = value
        elif key == b"identifier" and identifier is None:
            identifier = value
        elif key == b"cid" and identifier is not None:
            if len(caveats) >= max_caveats:
                raise MalformedMacaroon(f"malformed token: more than {max_caveats} caveats")
            caveats.append([value, None, None])
        elif key == b"vid" and caveats and caveats[-1][1] is None:
            caveats[-1][1] = value
        elif key == b"cl" and caveats and caveats[-1][2] is None:
            caveats[-1][2] = value
        elif key == b"signature" and identifier is not None:
            signature = value
        else:
            raise MalformedMacaroon("malformed token: unexpected v1 packet")
    if identifier is None or signature is None or len(signature) != SIGNATURE_BYTES:
        raise MalformedMacaroon("malformed token: missing identifier or signature")
    built = []
    for cid, vid, cl in caveats:
        assert cid is not None  # noqa: S101 - narrows the type; the parser never yields a caveat without an id
        built.append(Caveat(cid, vid, cl if vid is not None else None))
    return Macaroon(identifier, tuple(built), signature, location)


# The compiled v2 parser (tokensvc/_speedups.c) reads a well-formed token several times faster
# and answers None for anything else; parse_v2 above stays the reference, and names the error.
_compiled_parse_v2: Callable[[bytes, int], Macaroon | None] | None = None
if _speedups is not None:
    _speedups.set_types(Caveat, Macaroon)
    _compiled_parse_v2 = _speedups.parse_v2


def parse_binary(data: bytes, *, max_caveats: int) -> Macaroon:
    """Parse either binary format, told apart by the first byte as libmacaroons does."""
    if not data:
        raise MalformedMacaroon("malformed token: empty")
    first = data[0]
    if first == VERSION_2:
        if _compiled_parse_v2 is not None:
            parsed = _compiled_parse_v2(data, max_caveats)
            if parsed is not None:
                return parsed
        return parse_v2(data, max_caveats=max_caveats)
    if 0x30 <= first <= 0x39 or 0x61 <= first <= 0x66:
        return parse_v1(data, max_caveats=max_caveats)
    raise MalformedMacaroon("malformed token: unknown format version")
