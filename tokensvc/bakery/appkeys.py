"""Application state of the bakery integration, as typed AppKeys (kept apart from web.appkeys)."""

from __future__ import annotations

from aiohttp import web

from keystore.discharger_key import DischargerKey
from tokensvc.bakery.config import BakeryConfig
from tokensvc.bakery.discharger import Discharger
from tokensvc.bakery.thirdparty import ThirdPartyLocator

BAKERY_CONFIG = web.AppKey("bakery_config", BakeryConfig)
DISCHARGER_KEY = web.AppKey("discharger_key", DischargerKey)
DISCHARGER = web.AppKey("discharger", Discharger)
THIRD_PARTIES = web.AppKey("third_parties", ThirdPartyLocator)
