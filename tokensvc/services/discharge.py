"""The discharge service: the macaroon-bakery discharger (tokensvc.bakery) behind the boundary."""

from __future__ import annotations

from typing import Any

from tokensvc.bakery.conditions import Caller
from tokensvc.bakery.discharger import Discharge, Discharger, DischargeRequest
from tokensvc.services.boundary import service


@service
class DischargeService:
    def __init__(self, discharger: Discharger) -> None:
        self._discharger = discharger

    def info(self) -> dict[str, Any]:
        """The discharger's public key and bakery version (/discharge/info)."""
        return self._discharger.info()

    async def discharge(self, request: DischargeRequest, caller: Caller) -> Discharge:
        """A discharge of the caveat in `request`, if its condition holds for `caller`.

        Raises:
            MalformedCaveat, CaveatNotForUs, ConditionRefused, ConditionNotRecognized: refused.
            Unauthenticated, LockedOut: the caller could not authenticate.
            Unavailable: storage is down.
        """
        return await self._discharger.discharge(request, caller)
