"""The key service: root-key metadata, manual rotation and revocation, and KEK rotation's
re-seal and status, for every door."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystore import KeyInfo, Keyring
from keystore.reseal import KekUsage, ResealResult, kek_usage, reseal
from keystore.sealing import Sealer
from tokensvc.errors import NotFound
from tokensvc.operations.logs import security_event
from tokensvc.services.audit import by_token, record_cascade_by
from tokensvc.services.authorization import Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.principals import Principal
from tokensvc.storage.audit import AuditLog
from tokensvc.storage.db import run_db
from tokensvc.tokens.registry import Descendant
from tokensvc.tokens.revocation import Revocations


@service
class KeyService:
    def __init__(
        self,
        *,
        authorizer: Authorizer,
        keyring: Keyring,
        revocations: Revocations,
        audit: AuditLog,
        engine: AsyncEngine,
        keks: Sealer,
        clock: Callable[[], datetime],
    ) -> None:
        self._authz = authorizer
        self._keyring = keyring
        self._revocations = revocations
        self._audit = audit
        self._engine = engine
        self._keks = keks
        self._clock = clock

    async def list(self, who: Principal) -> list[KeyInfo]:
        """Metadata of every live root key, newest first (never key material).

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not read keys.
            Unavailable: the key store is down.
        """
        await self._authz.admin(who, "keys:read")
        return await self._keyring.list()

    async def rotate(self, who: Principal) -> KeyInfo:
        """A new current root key now; audited once made.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not rotate keys.
            Unavailable: the key store is down.
        """
        actor = await self._authz.admin(who, "keys:rotate")

        # In the key's own transaction: the token re-checked (red team, helper-43: a rotation
        # held up 1.6 s committed after its token's revocation), then the audit record.
        async def checked(conn: AsyncConnection, key_id: str) -> None:
            await self._authz.confirm(conn, actor)
            await self._audit.record(
                actor.name, "key_rotated", key_id, conn=conn, **by_token(actor)
            )

        key = await self._keyring.rotate(within=checked)
        security_event("key_rotated", by=actor.name[:64], key_id=key.id)
        return next(info for info in await self._keyring.list() if info.id == key.id)

    async def revoke(self, who: Principal, key_id: str) -> None:
        """Delete a root key: every token it signed dies, on every replica.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not revoke keys.
            NotFound: no such root key, live or expired with tokens on record. Unavailable:
                the key store is down.
        """
        actor = await self._authz.admin(who, "keys:revoke")
        # An expired key too, while tokens it signed are on record (red team, helper-61: a
        # key found compromised after its 24 h could not be revoked, and the service tokens
        # minted with tokens it signed, living up to a year, kept working).
        # Not one revoked already, though its tokens are still on record (red team, helper-62:
        # each repeat answered 204 and added an audit row).
        if len(key_id) > 64 or (
            await self._keyring.get(key_id) is None
            and (
                not await self._revocations.key_on_record(key_id)
                or await self._revocations.key_revoked(key_id)
            )
        ):
            raise NotFound("no such root key, live or with tokens on record")

        revoked_here = False

        async def audit_rows(
            conn: AsyncConnection, descendants: list[Descendant], newly: bool
        ) -> None:
            nonlocal revoked_here
            revoked_here = newly
            if newly:
                await self._audit.record(
                    actor.name,
                    "key_revoked",
                    key_id,
                    conn=conn,
                    **by_token(actor),
                    descendants=len(descendants),
                )
            await record_cascade_by(self._audit, conn, actor, descendants, cause=f"key:{key_id}")
            # The key's row goes with its revocation record: a replica that hears of one (by
            # the stream or by polling the record) can no longer read the key as the newest
            # and take it on again (review, helper-72).
            await self._keyring.revoke(key_id, conn=conn)

        # Tokens minted with tokens the key signed are revoked in the same transaction.
        descendants = await self._revocations.record_key(
            key_id, by=actor.name, first=partial(self._authz.confirm, actor=actor), also=audit_rows
        )
        self._revocations.note_key(key_id)
        await self._revocations.publish_key(key_id)
        if revoked_here:
            security_event(
                "key_revoked", by=actor.name[:64], key_id=key_id, descendants=len(descendants)
            )

    async def kek_status(self, who: Principal) -> KekUsage:
        """Live sealed keys per table and key-encryption key id, as this process's KEKs see them.

        Before an old KEK is removed, `not_current` must be 0: nothing is sealed under it.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not read keys.
            Unavailable: the key store is down.
        """
        await self._authz.admin(who, "keys:read")
        return await kek_usage(self._engine, self._keks, now=self._clock())

    async def reseal(self, who: Principal) -> ResealResult:
        """Re-seal every live key under the current KEK, while replicas serve; audited.

        Rows under a KEK this process does not hold are left and reported (`unopened`), as
        are rows that do not open (`damaged`).

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not reseal keys.
            Unavailable: the key store is down.
        """
        actor = await self._authz.admin(who, "keys:reseal")
        # Every batch re-checks the token in its transaction: none is written after its
        # revocation (the audit record, after the last, re-checks it too).
        result = await reseal(
            self._engine,
            self._keks,
            now=self._clock(),
            within=partial(self._authz.confirm, actor=actor),
        )
        counts: dict[str, Any] = {
            "resealed": result.total,
            "unopened": sum(result.unopened.values()),
            "damaged": len(result.damaged),
        }

        async def record(conn: AsyncConnection) -> None:
            await self._authz.confirm(conn, actor)
            await self._audit.record(
                actor.name,
                "keys_resealed",
                result.current_id,
                conn=conn,
                **by_token(actor),
                **counts,
            )

        await run_db(self._engine, record, write=True, retry=False)
        security_event("keys_resealed", by=actor.name[:64], kek_id=result.current_id, **counts)
        return result
