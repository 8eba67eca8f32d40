"""The service layer: every admin and user action, for every door (HTTP API and CLI).

Handlers and CLI commands parse, call one service method with a principal (who asks), and render.
The services authorise the principal, own the order of the action, its revocation side effects
and its audit record (in one transaction where the store allows), and translate a dependency's
unavailability into `tokensvc.errors.Unavailable` at their boundary (tokensvc.services.boundary).

This module only declares `Services`; import the pieces from their modules (domain code such as
tokensvc.services.login uses the boundary without loading every service).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokensvc.services.audit import AuditService
    from tokensvc.services.discharge import DischargeService
    from tokensvc.services.health import HealthService
    from tokensvc.services.introspection import IntrospectionService
    from tokensvc.services.keys import KeyService
    from tokensvc.services.lockouts import LockoutService
    from tokensvc.services.login import LoginService
    from tokensvc.services.mfa import MfaService
    from tokensvc.services.tokens import TokenService
    from tokensvc.services.users import UserService
    from tokensvc.services.verdicts import VerdictService


@dataclass(frozen=True, slots=True)
class Services:
    """The service objects of one process, built once."""

    tokens: TokenService
    users: UserService
    keys: KeyService
    lockouts: LockoutService
    audit: AuditService
    login: LoginService
    mfa: MfaService
    discharge: DischargeService
    introspection: IntrospectionService
    health: HealthService
    verdicts: VerdictService
