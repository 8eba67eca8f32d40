"""Wiring of the token lifecycle into a running app: registry, service keys, revocations, usage.

One cleanup context (aiohttp's pattern: made before `yield`, stopped after) that runs after the
keyring context and attaches the lifecycle to the minter and verifier made there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from keystore.service_keys import KEY_ID_PREFIX, ServiceKeys, service_key_id
from tokensvc.audit import AuditLog
from tokensvc.redisconn import close_client, pubsub_client_from_url
from tokensvc.registry import TokenRegistry
from tokensvc.revocation import CHANNEL_SUFFIX, Revocations
from tokensvc.services import Services
from tokensvc.services.audit import AuditService
from tokensvc.services.authorization import Authorizer
from tokensvc.services.keys import KeyService
from tokensvc.services.lockouts import LockoutService
from tokensvc.services.tokens import TokenService
from tokensvc.services.users import UserService
from tokensvc.subjects import SubjectStore
from tokensvc.usage import UsageRecorder
from tokensvc.web import appkeys


async def token_lifecycle(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.CONFIG]
    engine = app[appkeys.ENGINE]
    clock = app[appkeys.CLOCK]
    keyring = app[appkeys.KEYRING]
    verifier = app[appkeys.VERIFIER]
    registry = TokenRegistry(engine)
    service_keys = ServiceKeys(engine, kek=app[appkeys.KEK], clock=clock)
    # Pub/sub needs a connection that may sit idle: no socket timeout on this client. In a
    # Redis Cluster it is a client of one node, which hears every node's PUBLISH.
    redis = (
        pubsub_client_from_url(config.redis_url, socket_timeout=None, max_connections=4)
        if config.redis_url
        else None
    )
    revocations = Revocations(
        engine,
        registry,
        refresh_interval=config.revocation_refresh_interval.total_seconds(),
        redis=redis,
        channel=config.redis_prefix + CHANNEL_SUFFIX,
    )

    def key_revoked(key_id: str) -> None:
        if key_id.startswith(KEY_ID_PREFIX):
            service_keys.forget(key_id)
        else:
            keyring.forget(key_id)
        verifier.cache.forget_key(key_id)

    def token_revoked(token_id: str) -> None:
        service_keys.forget(service_key_id(token_id))

    revocations.delete_service_key = service_keys.delete
    revocations.on_key_revoked.append(key_revoked)
    revocations.on_token_revoked.append(token_revoked)
    revocations.on_generation.append(app[appkeys.GENERATIONS].remember)
    usage = UsageRecorder(registry, flush_interval=config.usage_flush_interval.total_seconds())
    app[appkeys.MINTER].attach(
        registry, service_keys=service_keys, max_service_ttl=config.max_service_token_ttl
    )
    verifier.attach(
        service_keys=service_keys,
        revoked=revocations.tokens,
        revoked_keys=revocations.keys,
        usage=usage,
    )
    app[appkeys.REGISTRY] = registry
    app[appkeys.SERVICE_KEYS] = service_keys
    app[appkeys.REVOCATIONS] = revocations
    app[appkeys.USAGE] = usage
    audit = app[appkeys.AUDIT] = AuditLog(engine, clock=clock)
    authorizer = Authorizer(verifier=verifier, users=app[appkeys.USERS])
    subjects = SubjectStore(engine, clock=clock)
    app[appkeys.SERVICES] = Services(
        tokens=TokenService(
            engine=engine,
            authorizer=authorizer,
            minter=app[appkeys.MINTER],
            verifier=verifier,
            registry=registry,
            revocations=revocations,
            subjects=subjects,
            audit=audit,
            default_ttl=config.default_token_ttl,
            clock=clock,
        ),
        users=UserService(
            engine=engine,
            authorizer=authorizer,
            users=app[appkeys.USERS],
            subjects=subjects,
            hasher=app[appkeys.HASHER],
            revocations=revocations,
            audit=audit,
        ),
        keys=KeyService(
            authorizer=authorizer, keyring=keyring, revocations=revocations, audit=audit
        ),
        lockouts=LockoutService(
            authorizer=authorizer, lockout=app[appkeys.LOCKOUT], audit=audit, clock=clock
        ),
        audit=AuditService(authorizer=authorizer, audit=audit),
        login=app[appkeys.LOGIN],
    )
    try:
        async with revocations.running(), usage.running():
            yield
    finally:
        if redis is not None:
            await close_client(redis)
