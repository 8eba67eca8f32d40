"""The key service: root-key metadata, manual rotation and revocation, for every door."""

from __future__ import annotations

from keystore import KeyInfo, Keyring
from tokensvc.errors import NotFound
from tokensvc.operations.logs import security_event
from tokensvc.services.authorization import Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.principals import Principal
from tokensvc.storage.audit import AuditLog
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
    ) -> None:
        self._authz = authorizer
        self._keyring = keyring
        self._revocations = revocations
        self._audit = audit

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
        key = await self._keyring.rotate()
        # The keystore commits the key in its own transaction; the record follows it.
        await self._audit.record(actor.name, "key_rotated", key.id)
        security_event("key_rotated", by=actor.name[:64], key_id=key.id)
        return next(info for info in await self._keyring.list() if info.id == key.id)

    async def revoke(self, who: Principal, key_id: str) -> None:
        """Delete a root key: every token it signed dies, on every replica.

        Raises:
            InvalidToken, CaveatDenied, Forbidden: the principal may not revoke keys.
            NotFound: no such live root key. Unavailable: the key store is down.
        """
        actor = await self._authz.admin(who, "keys:revoke")
        if len(key_id) > 64 or await self._keyring.get(key_id) is None:
            raise NotFound("no such live root key")
        # The durable record first: were the delete to fail after it, replicas still drop the key.
        await self._revocations.record_key(key_id, by=actor.name)
        await self._keyring.revoke(key_id)
        self._revocations.note_key(key_id)
        await self._revocations.publish_key(key_id)
        await self._audit.record(actor.name, "key_revoked", key_id)
        security_event("key_revoked", by=actor.name[:64], key_id=key_id)
