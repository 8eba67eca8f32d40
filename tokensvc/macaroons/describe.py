"""Offline description of a token: what its identifier and caveats say. Verifies nothing."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Any, Final

from caveats import CaveatError, ErrorCondition, Expiry, TimeBefore, parse_predicate
from tokensvc.errors import InvalidToken
from tokensvc.macaroons.identifier import decode_identifier
from tokensvc.macaroons.tokenformat import checksum_ok, decode_token

# Fields holding a POSIX time, shown as RFC 3339 like every other time the CLI and API print.
_TIME_FIELDS: Final = frozenset(("expires_at", "not_before"))
_TYPE_NAMES: Final[dict[type, str]] = {ErrorCondition: "error"}


def _iso(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(seconds)  # beyond what datetime holds: the number as written


def _type_name(cls: type) -> str:
    return _TYPE_NAMES.get(cls) or re.sub(r"(?<=[a-z])(?=[A-Z])", "_", cls.__name__).lower()


def caveat_object(cid: bytes) -> dict[str, Any]:
    """A first-party caveat as a JSON object: `type` plus its fields, times in RFC 3339."""
    try:
        item = parse_predicate(cid)
    except CaveatError as exc:
        return {"type": "unknown", "text": cid.decode("utf-8", "replace"), "problem": str(exc)}
    obj: dict[str, Any] = {"type": _type_name(type(item))}
    for f in dataclasses.fields(item):  # type: ignore[arg-type]
        if not f.init or f.name.startswith("_"):
            continue
        value = getattr(item, f.name)
        if f.name in _TIME_FIELDS and isinstance(value, int | float):
            value = _iso(value)
        elif isinstance(value, tuple):
            value = list(value)
        obj[f.name] = value
    return obj


def earliest_expiry(token: str) -> float | None:
    """The soonest expiry (typed or `time-before`) among the token's first-party caveats."""
    macaroon = decode_token(token, max_bytes=1 << 20, max_caveats=10_000)
    times: list[float] = []
    for c in macaroon.caveats:
        if c.vid is not None:
            continue
        try:
            item = parse_predicate(c.cid)
        except CaveatError:
            continue
        if isinstance(item, Expiry | TimeBefore):
            times.append(float(item.expires_at))
    return min(times, default=None)


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
        info.update(
            token_id=ident.token_id_hex, key_id=ident.key_id, admin=ident.admin, mfa=ident.mfa
        )
    except InvalidToken:
        info["identifier"] = macaroon.identifier.hex()
    expires = earliest_expiry(token)
    info["expires_at"] = None if expires is None else _iso(expires)
    info["caveats"] = [
        caveat_object(c.cid)
        if c.vid is None
        else {"type": "third_party", "location": (c.location or b"").decode("utf-8", "replace")}
        for c in macaroon.caveats
    ]
    return info


def caveat_text(obj: dict[str, Any]) -> str:
    """One caveat object as a line for people: `operations read, write`."""
    fields = [
        f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in obj.items()
        if k != "type"
    ]
    return f"{obj['type']} " + " ".join(fields)
