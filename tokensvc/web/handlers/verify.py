"""POST /v1/verify: the hot path other services call on every request they protect.

`tokensvc serve` also answers it on a port of its own (tokensvc.web.verifyport), without an
aiohttp request; both read the body with `parse_request` and answer with `answer`, so they agree.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aiohttp import web

from tokensvc.errors import BadRequest
from tokensvc.tokens.verification import Verified
from tokensvc.web import appkeys
from tokensvc.web.jsonio import json_response, read_json_object

_CONTEXT_FIELDS = ("operation", "resource", "audience", "client_ip")
# `require_mfa` is a boolean, not a keyword string: VerifyBody carries it apart.
_CONTEXT_KEYS = frozenset((*_CONTEXT_FIELDS, "require_mfa"))
_ALLOWED = frozenset(("token", "discharges", "context"))


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC, whole seconds; hot tokens share expiries, so the strings are cached."""
    if ts is None:
        return None
    return _iso(int(ts))


@functools.lru_cache(maxsize=4096)
def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_NO_CONTEXT: dict[str, str | None] = dict.fromkeys(_CONTEXT_FIELDS)


def _context(raw: Any) -> dict[str, str | None]:
    if raw is None:
        return _NO_CONTEXT  # only read: unpacked into keyword arguments
    if not isinstance(raw, dict):  # [], "", 0 and false too: openapi.yaml says object or null
        raise BadRequest("context must be an object")
    if not raw:
        return _NO_CONTEXT
    out: dict[str, str | None] = {}
    for name in _CONTEXT_FIELDS:
        value = raw.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 2048):
            raise BadRequest(f"context.{name} must be a string of at most 2048 characters")
        out[name] = value
    if not raw.keys() <= _CONTEXT_KEYS:
        unknown = sorted(raw.keys() - _CONTEXT_KEYS)
        raise BadRequest("unknown context field(s): " + ", ".join(u[:40] for u in unknown[:5]))
    return out


_new_tuple = tuple.__new__


class VerifyBody(NamedTuple):
    token: str
    discharges: Sequence[str]
    context: dict[str, str | None]  # keyword arguments of Verifier.verify
    require_mfa: bool  # context.require_mfa: only a token minted after a second factor


def _require_mfa(value: Any) -> bool:
    if value is None:
        return False
    if value is True or value is False:
        return value
    raise BadRequest("context.require_mfa must be true or false")


def parse_request(data: dict[str, Any]) -> VerifyBody:
    """A /v1/verify body, checked; BadRequest for anything else. Shared with the fast path."""
    if not data.keys() <= _ALLOWED:
        raise BadRequest("unknown field(s): " + ", ".join(sorted(data.keys() - _ALLOWED))[:200])
    token = data.get("token")
    if not isinstance(token, str) or not token:
        raise BadRequest("token must be a non-empty string")
    discharges = data.get("discharges")
    if discharges is None:
        discharges = ()
    elif not isinstance(discharges, list) or not all(isinstance(d, str) for d in discharges):
        raise BadRequest("discharges must be a list of strings")
    raw = data.get("context")
    context = _context(raw)  # raw is now None or a dict
    # Only a context that names require_mfa pays for reading it (the hot path: one `in`).
    require_mfa = raw is not None and "require_mfa" in raw and _require_mfa(raw["require_mfa"])
    # tuple.__new__ with every field in order: the NamedTuple's own __new__ is a Python function.
    return _new_tuple(VerifyBody, (token, discharges, context, require_mfa))


def answer(verified: Verified) -> dict[str, Any]:
    """The 200 body for a verified token. Shared with the fast path."""
    return {
        "valid": True,
        "subject": verified.subject,
        "token_id": verified.token_id,
        "expires_at": iso(verified.expires_at),
        "declared": verified.declared,
        "mfa": verified.mfa,
    }


async def verify(request: web.Request) -> web.Response:
    asked = parse_request(await read_json_object(request))
    verifier = request.app[appkeys.VERIFIER]
    return json_response(
        answer(
            await verifier.verify(
                asked.token, asked.discharges, require_mfa=asked.require_mfa, **asked.context
            )
        )
    )
