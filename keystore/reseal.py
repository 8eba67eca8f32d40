"""Moving everything sealed at rest to the current KEK, and saying what is still sealed where.

KEK rotation without downtime (docs/security.md, "Rotating the key-encryption key"): every
replica first learns the new KEK as one that only opens, then is restarted with it as the
current one (the old one now only opens); `reseal` then rewrites every row still sealed under
another KEK; `kek_usage` confirms nothing is left before the old KEK is removed.

Re-sealing changes the ciphertext, never the key inside it, so replicas keep serving from their
caches and any replica that holds both KEKs opens a row in either state. Each row is rewritten
by a compare-and-set (`WHERE id = … AND kek_id = … AND ciphertext = …`): a row deleted, purged
or re-sealed by someone else meanwhile is skipped, never overwritten, so several `reseal` runs
and the replicas' own key maintenance can overlap safely. Expired rows are neither counted nor
re-sealed: nothing opens them again and key maintenance purges them.

Not exported from `keystore/__init__.py`: import it by module path. Imports nothing from tokensvc.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystore.crypto import KeyEncryptionKey
from keystore.db import SQLITE_BEGIN_IMMEDIATE
from keystore.db import run as run_database
from keystore.deployment_key import SealedSecretRow, sealed_secret_aad
from keystore.discharger_key import DischargerKeyRow, discharger_key_aad
from keystore.errors import KeyDecryptionError
from keystore.keyring import root_key_aad
from keystore.models import RootKeyRow
from keystore.sealing import Sealed, Sealer, as_sealer
from keystore.service_keys import ServiceKeyRow, service_key_aad
from keystore.totp_secrets import TotpSecretRow, totp_secret_aad

__all__ = ["SEALED_TABLES", "KekUsage", "ResealResult", "kek_usage", "reseal"]


@dataclass(frozen=True, slots=True)
class _SealedTable:
    """A table with sealed rows: how to name a row and what its ciphertext is bound to."""

    name: str
    table: Table
    what: str
    aad: Callable[[Mapping[str, Any]], bytes]
    expires: bool


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


#: Every table whose rows are sealed under a KEK. A new sealed table must be added here, or
#: rotation would leave it behind (tests/keystore/test_keystore_reseal.py checks the models).
SEALED_TABLES: Final[tuple[_SealedTable, ...]] = (
    _SealedTable(
        "root_keys",
        _table(RootKeyRow),
        "root key",
        lambda row: root_key_aad(row["id"], row["expires_at"]),
        expires=True,
    ),
    _SealedTable(
        "service_keys",
        _table(ServiceKeyRow),
        "service key",
        lambda row: service_key_aad(row["id"], row["token_id"], row["expires_at"]),
        expires=True,
    ),
    _SealedTable(
        "discharger_keys",
        _table(DischargerKeyRow),
        "discharger key",
        lambda row: discharger_key_aad(row["id"]),
        expires=False,
    ),
    _SealedTable(
        "sealed_secrets",
        _table(SealedSecretRow),
        "sealed secret",
        lambda row: sealed_secret_aad(row["id"]),
        expires=False,
    ),
    _SealedTable(
        "totp_secrets",
        _table(TotpSecretRow),
        "TOTP secret",
        lambda row: totp_secret_aad(row["id"]),
        expires=False,
    ),
)


@dataclass(frozen=True, slots=True)
class KekUsage:
    """How many live sealed rows each KEK id holds, per table, seen from one sealer."""

    current_id: str
    known_ids: tuple[str, ...]
    # (table, kek_id) -> live rows
    rows: dict[tuple[str, str], int]

    def by_kek(self) -> dict[str, int]:
        """Live rows per KEK id, over every table."""
        totals: Counter[str] = Counter()
        for (_table_name, kek_id), count in self.rows.items():
            totals[kek_id] += count
        return dict(totals)

    @property
    def not_current(self) -> int:
        """Rows still sealed under some other KEK than the current one: 0 once re-sealed."""
        return sum(n for kek_id, n in self.by_kek().items() if kek_id != self.current_id)

    @property
    def unknown(self) -> dict[str, int]:
        """Rows per KEK id this sealer cannot open (a KEK removed too early, or never given)."""
        return {kek_id: n for kek_id, n in self.by_kek().items() if kek_id not in self.known_ids}

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape the API and the CLI show: every KEK with its role and rows per table."""
        totals = self.by_kek()
        ids = list(self.known_ids) + sorted(k for k in totals if k not in self.known_ids)
        keks = []
        for kek_id in ids:
            if kek_id == self.current_id:
                role = "current"
            elif kek_id in self.known_ids:
                role = "previous"
            else:
                role = "unknown"
            tables = {t: n for (t, k), n in sorted(self.rows.items()) if k == kek_id}
            keks.append(
                {"id": kek_id, "role": role, "keys": totals.get(kek_id, 0), "tables": tables}
            )
        return {"current": self.current_id, "not_current": self.not_current, "keks": keks}


@dataclass(slots=True)
class ResealResult:
    """What a re-seal did: rows moved to the current KEK, rows it could not open, per table."""

    current_id: str
    resealed: dict[str, int] = field(default_factory=dict)
    # (table, kek_id) -> rows sealed under a KEK the sealer does not know
    unopened: dict[tuple[str, str], int] = field(default_factory=dict)
    # Rows under a known KEK that do not open (tampered, or moved between rows): named, kept.
    damaged: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.resealed.values())

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape the API and the CLI show."""
        unopened: dict[str, dict[str, int]] = {}
        for (table, kek_id), n in sorted(self.unopened.items()):
            unopened.setdefault(kek_id, {})[table] = n
        return {
            "current": self.current_id,
            "resealed": self.total,
            "tables": dict(self.resealed),
            "unopened": unopened,
            "damaged": list(self.damaged),
        }


async def kek_usage(
    engine: AsyncEngine, kek: KeyEncryptionKey | Sealer, *, now: datetime
) -> KekUsage:
    """Live rows per table and KEK id (no key is opened: ids only).

    Raises:
        StoreUnavailable: the database cannot be reached.
    """
    sealer = as_sealer(kek)

    async def count(conn: AsyncConnection) -> dict[tuple[str, str], int]:
        rows: dict[tuple[str, str], int] = {}
        for sealed in SEALED_TABLES:
            table = sealed.table
            query = select(table.c.kek_id, func.count()).group_by(table.c.kek_id)
            if sealed.expires:
                query = query.where(table.c.expires_at > now)
            for kek_id, n in (await conn.execute(query)).all():
                rows[(sealed.name, str(kek_id))] = int(n)
        return rows

    rows = await run_database(engine, count, write=False, what="the key database")
    return KekUsage(current_id=sealer.current_id, known_ids=sealer.ids, rows=rows)


async def reseal(
    engine: AsyncEngine,
    kek: KeyEncryptionKey | Sealer,
    *,
    now: datetime,
    batch_size: int = 100,
    within: Callable[[AsyncConnection], Awaitable[None]] | None = None,
) -> ResealResult:
    """Re-seal every live row not under the current KEK; rows under unknown KEKs are reported.

    Works in short transactions of at most `batch_size` rows, so replicas' writes (key
    maintenance, service-token mints) never wait long behind it.

    A row under a known KEK that does not open (tampered, or moved between rows) is named in
    `damaged` and left as it is: re-sealing must never launder a forged row into a valid one.

    `within` runs first in every batch's transaction (the caller's check that it may still
    re-seal: a batch is then written or refused with it).

    Raises:
        StoreUnavailable: the database cannot be reached.
    """
    sealer = as_sealer(kek)
    result = ResealResult(current_id=sealer.current_id)
    for sealed in SEALED_TABLES:
        result.resealed[sealed.name] = 0
        after = ""
        while True:
            page = await _page(engine, sealed, sealer, now=now, after=after, size=batch_size)
            if not page:
                break
            after = str(page[-1]["id"])
            todo = []
            for row in page:
                if row["kek_id"] not in sealer.ids:
                    key = (sealed.name, str(row["kek_id"]))
                    result.unopened[key] = result.unopened.get(key, 0) + 1
                    continue
                aad = sealed.aad(row)
                what = f"{sealed.what} {row['id']}"
                try:
                    plaintext = sealer.open(
                        Sealed(row["kek_id"], bytes(row["ciphertext"])), aad=aad, what=what
                    )
                except KeyDecryptionError:
                    result.damaged.append(what)
                    continue
                todo.append((row, sealer.seal(plaintext, aad=aad)))
            if todo:
                result.resealed[sealed.name] += await _write(engine, sealed, todo, within)
    return result


async def _page(
    engine: AsyncEngine,
    sealed: _SealedTable,
    sealer: Sealer,
    *,
    now: datetime,
    after: str,
    size: int,
) -> list[Mapping[str, Any]]:
    table = sealed.table

    async def read(conn: AsyncConnection) -> list[Mapping[str, Any]]:
        query = (
            select(table)
            .where(table.c.kek_id != sealer.current_id, table.c.id > after)
            .order_by(table.c.id)
            .limit(size)
        )
        if sealed.expires:
            query = query.where(table.c.expires_at > now)
        return [dict(row) for row in (await conn.execute(query)).mappings()]

    return await run_database(engine, read, write=False, what="the key database")


async def _write(
    engine: AsyncEngine,
    sealed: _SealedTable,
    todo: list[tuple[Mapping[str, Any], Sealed]],
    within: Callable[[AsyncConnection], Awaitable[None]] | None,
) -> int:
    table = sealed.table

    async def write(conn: AsyncConnection) -> int:
        if within is not None:
            await within(conn)
        done = 0
        for row, new in todo:
            # Compare-and-set on the old ciphertext: a row changed or deleted since it was read
            # (purged, revoked, re-sealed by a concurrent run) is left as it now is.
            result = await conn.execute(
                update(table)
                .where(
                    table.c.id == row["id"],
                    table.c.kek_id == row["kek_id"],
                    table.c.ciphertext == row["ciphertext"],
                )
                .values(kek_id=new.kek_id, ciphertext=new.ciphertext)
            )
            done += int(result.rowcount)
        return done

    # Idempotent (compare-and-set), so one retry on a connection closed meanwhile is safe.
    # Read (by `within`), then written: on SQLite the write lock is taken up front.
    options = {SQLITE_BEGIN_IMMEDIATE: True} if within is not None else None
    return await run_database(engine, write, write=True, what="the key database", options=options)
