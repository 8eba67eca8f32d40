"""Every piece of application state, as typed AppKeys, declared in one place."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import datetime

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from keystore import KeyEncryptionKey, Keyring
from keystore.service_keys import ServiceKeys
from tokensvc.accounts.lockout import LockoutStore
from tokensvc.accounts.passwords import PasswordHasher
from tokensvc.accounts.secondfactor import SecondFactors
from tokensvc.accounts.users import UserStore
from tokensvc.composition import Runtime
from tokensvc.operations.config import Config
from tokensvc.services import Services
from tokensvc.services.login import LoginService
from tokensvc.storage.audit import AuditLog
from tokensvc.tokens.generations import SubjectGenerations
from tokensvc.tokens.minting import Minter
from tokensvc.tokens.registry import TokenRegistry
from tokensvc.tokens.revocation import Revocations
from tokensvc.tokens.usage import UsageRecorder
from tokensvc.tokens.verification import Verifier

CONFIG = web.AppKey("config", Config)
CLOCK = web.AppKey[Callable[[], datetime]]("clock")
BOOTSTRAP = web.AppKey[bool]("bootstrap")  # whether this process creates the bootstrap admin
# Whether this process logs the notices meant once per service (tokensvc.accounts.bootstrap).
ANNOUNCE = web.AppKey("announce", bool)
ENGINE = web.AppKey("engine", AsyncEngine)
KEYRING = web.AppKey("keyring", Keyring)
MINTER = web.AppKey("minter", Minter)
VERIFIER = web.AppKey("verifier", Verifier)
TRUSTED_PROXIES = web.AppKey(
    "trusted_proxies", tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
)
USERS = web.AppKey("users", UserStore)
GENERATIONS = web.AppKey("generations", SubjectGenerations)
HASHER = web.AppKey("hasher", PasswordHasher)
LOCKOUT = web.AppKey("lockout", LockoutStore)
OTP_LOCKOUT = web.AppKey("otp_lockout", LockoutStore)  # second-factor failures, apart
FACTORS = web.AppKey("factors", SecondFactors)
LOGIN = web.AppKey("login", LoginService)
KEK = web.AppKey("kek", KeyEncryptionKey)

# ---- token lifecycle (issue 5) ----
REGISTRY = web.AppKey("registry", TokenRegistry)
SERVICE_KEYS = web.AppKey("service_keys", ServiceKeys)
REVOCATIONS = web.AppKey("revocations", Revocations)
USAGE = web.AppKey("usage", UsageRecorder)
AUDIT = web.AppKey("audit", AuditLog)

# ---- the service layer: what handlers call ----
SERVICES = web.AppKey("services", Services)
RUNTIME = web.AppKey("runtime", Runtime)
