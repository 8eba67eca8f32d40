"""The token strings callers see, and the plain pymacaroons serializations we also accept.

Ours: `tsv1_` + base64url(binary v2, no padding) + `.` + CRC32 (8 hex digits) of everything before
the dot. The prefix lets secret scanners find leaked tokens (as PyPI's `pypi-` and GitHub's `ghp_`
do), the checksum lets clients and scanners reject typos and random matches offline. Regular
expression: `TOKEN_PATTERN` below.
"""

from __future__ import annotations

import binascii
import re
import zlib
from collections.abc import Callable

from tokensvc.errors import InvalidToken, PayloadTooLarge
from tokensvc.macaroons.macaroon import Macaroon, MalformedMacaroon, parse_binary, serialize_v2

PREFIX = "tsv1_"
TOKEN_PATTERN = re.compile(r"tsv1_[A-Za-z0-9_-]{40,}\.[0-9a-f]{8}")

_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")


def _checksum_of(body: bytes) -> bytes:
    """8 lowercase hex digits of CRC32: the one definition of the checksum."""
    return b"%08x" % zlib.crc32(body)


def _checksum(body: str) -> str:
    # "replace": a non-ASCII character cannot be in a real token, so it only has to not crash.
    return _checksum_of(body.encode("ascii", "replace")).decode("ascii")


def encode_token(macaroon: Macaroon) -> str:
    """The external form of a macaroon."""
    payload = binascii.b2a_base64(serialize_v2(macaroon), newline=False)
    body = PREFIX + payload.rstrip(b"=").translate(bytes.maketrans(b"+/", b"-_")).decode("ascii")
    return body + "." + _checksum(body)


def checksum_ok(token: str) -> bool:
    """Offline check of a `tsv1_` token's checksum: catches typos without any key."""
    body, dot, check = token.rpartition(".")
    return bool(dot) and body.startswith(PREFIX) and _checksum(body) == check


_compiled_b64decode: Callable[[bytes], bytes | None] | None
_compiled_decode_tsv1: Callable[[bytes, int], Macaroon | None] | None
try:
    from tokensvc._speedups import b64decode as _compiled_b64decode
    from tokensvc._speedups import decode_tsv1 as _compiled_decode_tsv1
except ImportError:  # pragma: no cover - built without a C compiler
    _compiled_b64decode = _compiled_decode_tsv1 = None


def b64decode_any(text: str | bytes) -> bytes:
    """Strict base64 in either alphabet, padded or not; anything else is malformed."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if _compiled_b64decode is not None:
        # The compiled decoder answers None wherever the code below raises: it names the error.
        decoded = _compiled_b64decode(raw)
        if decoded is not None:
            return decoded
    raw = raw.rstrip(b"=").translate(_URLSAFE_TO_STD)
    try:
        return binascii.a2b_base64(raw + b"=="[: -len(raw) % 4], strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedMacaroon("malformed token: bad base64") from None


_PREFIX_BYTES = PREFIX.encode("ascii")


def decode_token(token: str, *, max_bytes: int, max_caveats: int) -> Macaroon:
    """Parse our `tsv1_` form or a plain pymacaroons base64 serialization (binary v1 or v2)."""
    if len(token) > max_bytes:
        raise PayloadTooLarge(f"token longer than {max_bytes} bytes")
    # Bytes from here on (a real token is ASCII; anything else only has to fail cleanly, and
    # "replace" turns it into a checksum or base64 error): one encode instead of one per step.
    raw = token.encode("ascii") if token.isascii() else token.encode("ascii", "replace")
    if _compiled_decode_tsv1 is not None:
        # A good tsv1 token in one compiled call; None for anything else, which the code below
        # then decides on (and names the error).
        parsed = _compiled_decode_tsv1(raw, max_caveats)
        if parsed is not None:
            return parsed
    if raw.startswith(_PREFIX_BYTES):
        body, dot, check = raw.rpartition(b".")
        if not dot or _checksum_of(body) != check:
            raise InvalidToken("malformed token: checksum mismatch (typo or truncation?)")
        payload = body[len(_PREFIX_BYTES) :]
    else:
        payload = raw.strip()
    return parse_binary(b64decode_any(payload), max_caveats=max_caveats)
