"""The discharge service: decrypt a third-party caveat, check its condition, mint the discharge.

A discharge is a macaroon whose identifier is the caveat id it discharges and whose root key is
the one the first party sealed into the caveat; its own first-party caveats are a `time-before`
(discharges are short-lived) and the `declared` attributes the condition established. Nothing is
stored: the discharge is as good as its signature, and the client binds it to the token.

The shape of the answer follows the caveat's bakery version (see `jsonmacaroon.to_bakery_json`),
which is what an unmodified bakery client expects back.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from caveats import format_rfc3339
from keystore.discharger_key import DischargerKey
from tokensvc.bakery.codec import (
    LATEST_VERSION,
    MAX_CAVEAT_BYTES,
    VERSION_1,
    CaveatInfo,
    decode_caveat,
)
from tokensvc.bakery.conditions import Caller, Conditions, clip
from tokensvc.bakery.errors import MalformedCaveat
from tokensvc.bakery.jsonmacaroon import to_bakery_json
from tokensvc.errors import TokensvcError
from tokensvc.macaroons import chain
from tokensvc.macaroons.macaroon import Caveat, Macaroon
from tokensvc.operations.logs import security_event

NEED_DECLARED: Final = "need-declared"


@dataclass(frozen=True, slots=True)
class DischargeRequest:
    """The caveat id to discharge, and its payload when it travels apart from the id (v3)."""

    id: bytes
    caveat: bytes | None = None

    def __repr__(self) -> str:
        return f"DischargeRequest(id=<{len(self.id)} bytes>, caveat={self.caveat is not None})"


@dataclass(frozen=True, slots=True)
class Discharge:
    """A discharge macaroon and how to hand it back (bakery version, first party's namespace)."""

    macaroon: Macaroon
    version: int
    namespace: str
    expires_at: float
    declared: dict[str, str] = field(default_factory=dict)

    def response_body(self) -> dict[str, Any]:
        """`{"Macaroon": …}` as bakery dischargers answer POST /discharge."""
        return {
            "Macaroon": to_bakery_json(
                self.macaroon, version=self.version, namespace=self.namespace
            )
        }


class Discharger:
    """Discharges caveats encrypted to `key` whose conditions hold for the caller."""

    def __init__(
        self,
        key: DischargerKey,
        *,
        conditions: Conditions,
        clock: Callable[[], datetime],
        ttl: timedelta,
    ) -> None:
        self._key = key
        self._conditions = conditions
        self._clock = clock
        self._ttl = ttl

    @property
    def public_key(self) -> bytes:
        return self._key.public

    def info(self) -> dict[str, Any]:
        """GET /discharge/info: the public key (standard base64) and the newest bakery version."""
        return {"PublicKey": base64.b64encode(self._key.public).decode(), "Version": LATEST_VERSION}

    async def discharge(self, request: DischargeRequest, caller: Caller) -> Discharge:
        """Raise MalformedCaveat, CaveatNotForUs, ConditionRefused, … or return the discharge."""
        if not request.id:
            raise MalformedCaveat("no caveat id (send id or id64)")
        if len(request.id) > MAX_CAVEAT_BYTES:
            raise MalformedCaveat(f"caveat id longer than {MAX_CAVEAT_BYTES} bytes")
        info = decode_caveat(
            request.caveat if request.caveat is not None else request.id, key=self._key
        )
        prefix = info.std_prefix
        if prefix is None:
            raise MalformedCaveat("the first party's namespace has no standard checkers")
        if info.version == VERSION_1:
            try:
                request.id.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedCaveat("a version 1 caveat id must be text") from None

        condition_name = info.condition.partition(" ")[0]
        try:
            declared = await self._check(info, caller)
        except TokensvcError as exc:
            security_event(
                "authz_fail",
                level=logging.WARNING,
                operation="discharge",
                condition=clip(condition_name, 32),
                reason=exc.message[:200],
            )
            raise

        expires_at = self._clock().timestamp() + self._ttl.total_seconds()
        # Vouched on a token: no longer than that token lives (a discharge is self-contained,
        # so nothing done to the token later reaches it; its lifetime is the only bound).
        not_after = caller.not_after()
        if not_after is not None and not_after < expires_at:
            expires_at = not_after
        conditions = [f"time-before {format_rfc3339(expires_at)}"]
        conditions += [f"declared {key} {value}" for key, value in sorted(declared.items())]
        if prefix:
            conditions = [f"{prefix}:{c}" for c in conditions]
        macaroon = chain.sign(
            derived_key=chain.derive_key(info.root_key),
            identifier=request.id,
            caveats=[Caveat(c.encode()) for c in conditions],
            location=None,
        )
        security_event(
            "discharge_issued",
            condition=clip(condition_name, 32),
            user=declared.get("username"),
            version=info.version,
        )
        return Discharge(
            macaroon=macaroon,
            version=info.version,
            namespace=info.namespace,
            expires_at=expires_at,
            declared=declared,
        )

    async def _check(self, info: CaveatInfo, caller: Caller) -> dict[str, str]:
        name, _, rest = info.condition.partition(" ")
        if name != NEED_DECLARED:
            return await self._conditions.check(info.condition, caller)
        # `need-declared KEY,KEY CONDITION`: discharge CONDITION, then declare every listed key,
        # empty when the condition did not establish it — as the bakery's own discharger does.
        keys_text, space, inner = rest.partition(" ")
        keys = keys_text.split(",")
        if not space or not inner or not all(keys):
            raise MalformedCaveat("need-declared needs attribute names and a condition")
        declared = await self._conditions.check(inner, caller)
        for key in keys:
            declared.setdefault(key, "")
        return declared
