"""Offline description of a token: what its identifier and caveats say. Verifies nothing."""

from __future__ import annotations

from typing import Any

from caveats import CaveatError, decode
from tokensvc.errors import InvalidToken
from tokensvc.macaroons.identifier import decode_identifier
from tokensvc.macaroons.tokenformat import checksum_ok, decode_token


def _caveat_text(cid: bytes) -> str:
    try:
        return repr(decode(cid))
    except CaveatError:
        return cid.decode("utf-8", "replace")


def describe(token: str) -> dict[str, Any]:
    """A JSON-able summary; raises InvalidToken if the token cannot be parsed at all."""
    macaroon = decode_token(token, max_bytes=1 << 20, max_caveats=10_000)
    info: dict[str, Any] = {
        "format": "tsv1" if token.startswith("tsv1_") else "pymacaroons",
        "checksum": "ok" if checksum_ok(token) else "n/a",
        "location": (macaroon.location or b"").decode("utf-8", "replace"),
    }
    try:
        ident = decode_identifier(macaroon.identifier)
        info.update(token_id=ident.token_id_hex, key_id=ident.key_id, admin=ident.admin)
    except InvalidToken:
        info["identifier"] = macaroon.identifier.hex()
    info["caveats"] = [
        _caveat_text(c.cid)
        if c.vid is None
        else f"third-party at {(c.location or b'').decode('utf-8', 'replace')}"
        for c in macaroon.caveats
    ]
    return info
