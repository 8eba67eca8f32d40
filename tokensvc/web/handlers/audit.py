"""GET /v1/audit: recent admin actions, newest first."""

from __future__ import annotations

from aiohttp import web

from tokensvc.errors import BadRequest
from tokensvc.web import appkeys
from tokensvc.web.auth import require_admin
from tokensvc.web.handlers.verify import iso
from tokensvc.web.jsonio import json_response, printable


def _int(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # "²".isdigit() is True
        raise BadRequest(f"{name} must be a whole number")
    return int(raw)


async def list_audit(request: web.Request) -> web.Response:
    await require_admin(request, "audit:read")
    limit = _int(request, "limit", 100)
    assert limit is not None
    if not 1 <= limit <= 1000:
        raise BadRequest("limit must be between 1 and 1000")
    filters = {k: printable(request.query.get(k), k) for k in ("actor", "action", "target")}

    entries = await request.app[appkeys.AUDIT].recent(
        limit=limit, before=_int(request, "before", None), **filters
    )

    return json_response(
        {
            "entries": [
                {
                    "id": e.id,
                    "at": iso(e.at.timestamp()),
                    "actor": e.actor,
                    "action": e.action,
                    "target": e.target,
                    "details": e.details,
                }
                for e in entries
            ],
            "next_before": entries[-1].id if len(entries) == limit else None,
        }
    )
