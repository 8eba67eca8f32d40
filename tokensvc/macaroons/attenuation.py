"""Offline work on token strings: narrowing with first-party caveats, and format checks.

No key and no network: a macaroon holder can always append a caveat, by continuing the HMAC
chain from the token's signature (as pymacaroons' `add_first_party_caveat` does). The result keeps
the input's form: `tsv1_` in, `tsv1_` out (with a fresh checksum); plain base64 in, plain out.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from tokensvc.errors import TokensvcError
from tokensvc.macaroons.identifier import decode_identifier
from tokensvc.macaroons.macaroon import Caveat, Macaroon, serialize_v2
from tokensvc.macaroons.tokenformat import (
    PREFIX,
    TOKEN_PATTERN,
    checksum_ok,
    decode_token,
    encode_token,
)

_MAX_BYTES = 1 << 20
_MAX_CAVEATS = 10_000


def attenuate(token: str, predicates: Sequence[bytes]) -> str:
    """`token` with `predicates` appended as first-party caveats."""
    macaroon = decode_token(token.strip(), max_bytes=_MAX_BYTES, max_caveats=_MAX_CAVEATS)
    sig = macaroon.signature
    caveats = list(macaroon.caveats)
    for predicate in predicates:
        sig = hmac.new(sig, predicate, hashlib.sha256).digest()
        caveats.append(Caveat(predicate))
    narrowed = Macaroon(macaroon.identifier, tuple(caveats), sig, macaroon.location)
    if token.strip().startswith(PREFIX):
        return encode_token(narrowed)
    raw = binascii.b2a_base64(serialize_v2(narrowed), newline=False)
    return raw.rstrip(b"=").translate(bytes.maketrans(b"+/", b"-_")).decode("ascii")


def check_format(token: str) -> dict[str, Any]:
    """Is this a well-formed token of ours (prefix, checksum, macaroon, identifier)? No signature."""
    token = token.strip()
    result: dict[str, Any] = {"ok": False, "problem": None, "format": None, "checksum": "n/a"}
    if token.startswith(PREFIX):
        result["format"] = "tsv1"
        if not checksum_ok(token):
            result.update(checksum="bad", problem="checksum mismatch (typo or truncation?)")
            return result
        result["checksum"] = "ok"
        if TOKEN_PATTERN.fullmatch(token) is None:
            result["problem"] = "does not match the tsv1 pattern"
            return result
    else:
        result["format"] = "pymacaroons"
    try:
        macaroon = decode_token(token, max_bytes=_MAX_BYTES, max_caveats=_MAX_CAVEATS)
        identifier = decode_identifier(macaroon.identifier)
    except TokensvcError as exc:  # InvalidToken, PayloadTooLarge
        result["problem"] = exc.message
        return result
    result.update(ok=True, token_id=identifier.token_id_hex, key_id=identifier.key_id)
    return result
