"""GET /v1/audit: recent admin actions, newest first."""

from __future__ import annotations

from aiohttp import web

from tokensvc.services.audit import AuditQuery
from tokensvc.web import appkeys
from tokensvc.web.auth import principal
from tokensvc.web.handlers.verify import iso
from tokensvc.web.jsonio import json_response, printable, whole_number


async def list_audit(request: web.Request) -> web.Response:
    who = principal(request)
    limit = whole_number(request, "limit", 100)
    query = AuditQuery(
        limit=limit,
        before=whole_number(request, "before", None),
        actor=printable(request.query.get("actor"), "actor"),
        action=printable(request.query.get("action"), "action"),
        target=printable(request.query.get("target"), "target"),
    )

    entries = await request.app[appkeys.SERVICES].audit.recent(who, query)

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
