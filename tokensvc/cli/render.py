"""The JSON a command prints, the same whether it went through the API or `--local`.

These mirror the API's bodies (tokensvc.web.handlers.*), which the CLI may not import: a
`--local` answer must be indistinguishable from the HTTP one, so scripts need not care which.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tokensvc.cli.common import iso

# Annotations only: a command that talks HTTP never loads the stores (and SQLAlchemy and redis
# with them), which is most of a second of every CLI call.
if TYPE_CHECKING:
    from keystore import KeyInfo
    from tokensvc.accounts.lockout.store import LockoutStatus
    from tokensvc.accounts.users import User
    from tokensvc.storage.audit import AuditEntry
    from tokensvc.tokens.registry import TokenRecord


def _ts(value: float | None) -> str | None:
    return None if value is None else iso(datetime.fromtimestamp(value, UTC))


def user_body(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "roles": list(user.roles),
        "disabled": user.disabled,
        "created_at": iso(user.created_at),
        "updated_at": iso(user.updated_at),
    }


def key_body(info: KeyInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "created_at": iso(info.created_at),
        "expires_at": iso(info.expires_at),
        "current": info.current,
    }


def record_body(record: TokenRecord, *, now: datetime) -> dict[str, Any]:
    """Registry metadata, as TokenRecord.public shows it (the API and the CLI alike)."""
    return record.public(now=now)


def audit_body(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "details": entry.details,
    }


def lockout_body(name: str, status: LockoutStatus) -> dict[str, Any]:
    return {
        "name": name[:64],
        "locked": status.locked,
        "failures": status.failures,
        "locked_until": _ts(status.locked_until),
        "trusted_ips": status.trusted_ips,
        "counters": [
            {"scope": c.scope, "failures": c.failures, "locked_until": _ts(c.locked_until)}
            for c in status.counters
        ],
    }


# ---- human forms ---------------------------------------------------------------------------------


def user_line(u: dict[str, Any]) -> str:
    roles = ",".join(u["roles"]) or "-"
    return f"{u['name']:<24} roles={roles:<16} {'disabled' if u['disabled'] else 'enabled'}"


def user_detail(u: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"name:     {u['name']}",
            f"roles:    {', '.join(u['roles']) or '-'}",
            f"status:   {'disabled' if u['disabled'] else 'enabled'}",
            f"created:  {u.get('created_at') or '-'}",
            f"updated:  {u.get('updated_at') or '-'}",
        ]
    )


def shown(text: str) -> str:
    """`text` for a terminal: every character that is not printable (controls, zero-width and
    format characters, line separators) escaped, so a stored value can neither forge a line of
    a table nor pass for another (`admin\u200b`)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def key_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'ID':<24} {'CREATED':<21} {'EXPIRES':<21} CURRENT"]
    lines += [
        f"{r['id']:<24} {r['created_at']:<21} {r['expires_at']:<21} {'*' if r['current'] else ''}"
        for r in rows
    ]
    return "\n".join(lines)


def token_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no tokens)"
    lines = [
        f"{'TOKEN ID':<32} {'SUBJECT':<16} {'KIND':<8} {'STATUS':<8} {'EXPIRES':<20} LAST USED"
    ]
    lines += [
        f"{r['token_id']:<32} {shown(r['subject'])[:16]:<16} {r['kind']:<8} {r['status']:<8}"
        f" {r['expires_at'] or '-':<20} {r['last_used_at'] or '-'}"
        + (f"  # {shown(r['description'])[:40]}" if r.get("description") else "")
        for r in rows
    ]
    return "\n".join(lines)


def audit_table(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "(no entries)"
    lines = [f"{'AT':<20} {'ACTOR':<20} {'ACTION':<20} TARGET"]
    lines += [
        f"{e['at']:<20} {shown(e['actor'])[:20]:<20} {shown(e['action'])[:20]:<20}"
        f" {shown(e['target'])}"
        for e in entries
    ]
    return "\n".join(lines)


def lockout_text(s: dict[str, Any]) -> str:
    name = shown(s["name"])
    head = f"{name}: locked until {s['locked_until']}" if s["locked"] else f"{name}: not locked"
    lines = [head + f" ({s['failures']} failure(s) counted identity-wide)"]
    lines += [
        f"  {c['scope']}: {c['failures']} failure(s)"
        + (f", locked until {c['locked_until']}" if c["locked_until"] else "")
        for c in s["counters"]
        if c["scope"] != "identity"
    ]
    lines.append(f"  trusted addresses: {s['trusted_ips']}")
    return "\n".join(lines)
