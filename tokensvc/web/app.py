"""The app factory: state under typed AppKeys, each resource owned by one cleanup context."""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from aiohttp import web

from keystore import KeyEncryptionKey, Keyring, RotationPolicy, create_engine
from tokensvc import metrics
from tokensvc.background import every, tasks_running
from tokensvc.bakery import appkeys as bakery_keys
from tokensvc.bootstrap import ensure_admin
from tokensvc.config import Config
from tokensvc.generations import SubjectGenerations
from tokensvc.lifecycle import token_lifecycle
from tokensvc.lockout import MemoryLockoutStore, RedisLockoutStore, redis_client_from_url
from tokensvc.login import LoginService
from tokensvc.logs import flush_access_log
from tokensvc.migrate import upgrade
from tokensvc.minting import Minter
from tokensvc.passwords import PasswordHasher, profile_by_name
from tokensvc.redisconn import close_client
from tokensvc.subjects import SubjectStore
from tokensvc.users import UserStore
from tokensvc.verification import Limits, Verifier
from tokensvc.web import appkeys
from tokensvc.web.governor import GOVERNOR, Governor
from tokensvc.web.handlers import (
    audit,
    forwardauth,
    health,
    introspect,
    keys,
    login,
    revocation,
    tokens,
    users,
    verify,
)
from tokensvc.web.handlers import bakery as bakery_handlers
from tokensvc.web.handlers import metrics as metrics_handlers
from tokensvc.web.pipeline import request_pipeline
from tokensvc.web.routes import PIPELINE, add_catch_all, add_routes

log = logging.getLogger("tokensvc")


def prepare_embedded_database(config: Config) -> None:
    """The data directory (0700) and an owner-only SQLite file, created before SQLite makes it 0644."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = config.data_dir / "tokensvc.db"
    if config.database_url is None and not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def utc_now() -> datetime:
    return datetime.now(UTC)


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.CONFIG]
    if config.embedded:
        prepare_embedded_database(config)
    engine = create_engine(config.effective_database_url)
    if config.auto_migrate:
        await upgrade(engine)
    app[appkeys.ENGINE] = engine
    yield
    await engine.dispose()


async def _flushing(app: web.Application) -> AsyncIterator[None]:
    """Every second and at shutdown: write out buffered access lines, fold request tallies into
    the metrics (both are kept off the per-request path)."""

    async def flush() -> None:
        flush_access_log()
        metrics.flush_requests()

    async with tasks_running(every(1.0, flush, what="flushing access log and metrics")):
        yield
    await flush()


async def _kek(app: web.Application) -> AsyncIterator[None]:
    """The key-encryption key, loaded once for the keyring and the discharger key."""
    config = app[appkeys.CONFIG]
    app[appkeys.KEK] = KeyEncryptionKey.load(
        value=config.kek,
        file=config.kek_file,
        data_dir=config.data_dir if config.embedded else None,
    )
    yield


async def _users(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.CONFIG]
    users = UserStore(app[appkeys.ENGINE], clock=app[appkeys.CLOCK])
    hasher = PasswordHasher(
        profile=profile_by_name(config.password_profile),
        pepper=config.pepper,
        max_concurrency=max(1, config.hash_concurrency),
    )
    app[appkeys.USERS] = users
    generations = SubjectGenerations(users, SubjectStore(app[appkeys.ENGINE]))
    app[appkeys.GENERATIONS] = generations
    app[appkeys.HASHER] = hasher
    await ensure_admin(users, hasher, config)
    async with generations.running():
        yield
    hasher.close()


LOCKOUT_HASH_PURPOSE = b"lockout identity and address hashes v1"
# Keys the `user_hash` that login events name identities by (tokensvc.login): the same on every
# replica, and a key apart from lockout's, so a log line and a Redis key cannot be matched up.
LOG_IDENTITY_HASH_PURPOSE = b"log identity hashes v1"


async def _lockout(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.CONFIG]
    if config.redis_url is None:
        app[appkeys.LOCKOUT] = MemoryLockoutStore()
        yield
        return
    redis = redis_client_from_url(config.redis_url)
    # Keyed hashes name identities and addresses in Redis: without the KEK, whoever reads Redis
    # cannot test a guessed username against them. Every replica has the KEK, so all agree.
    app[appkeys.LOCKOUT] = RedisLockoutStore(
        redis,
        prefix=config.redis_prefix + "lockout:",
        identity_key=app[appkeys.KEK].derive(LOCKOUT_HASH_PURPOSE),
    )

    async def redis_ready() -> bool:
        try:
            return bool(await redis.ping())
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    app[appkeys.READINESS_PROBES]["redis"] = redis_ready
    yield
    await close_client(redis)


async def _keys(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.CONFIG]
    clock = app[appkeys.CLOCK]
    kek = KeyEncryptionKey.load(
        value=config.kek,
        file=config.kek_file,
        data_dir=config.data_dir if config.embedded else None,
    )
    keyring = Keyring(
        app[appkeys.ENGINE],
        kek=kek,
        policy=RotationPolicy(
            lifetime=config.key_lifetime, generate_interval=config.key_generate_interval
        ),
        clock=clock,
    )
    await keyring.maintain()
    app[appkeys.KEYRING] = keyring
    minter = Minter(
        keyring,
        generations=app[appkeys.GENERATIONS],
        location=config.location,
        clock=clock,
        third_parties=app[bakery_keys.THIRD_PARTIES],
        discharger_key=app[bakery_keys.DISCHARGER_KEY],
    )
    app[appkeys.MINTER] = minter
    app[appkeys.LOGIN] = LoginService(
        users=app[appkeys.USERS],
        hasher=app[appkeys.HASHER],
        lockout=app[appkeys.LOCKOUT],
        minter=minter,
        clock=clock,
        default_ttl=config.login_default_ttl,
        max_ttl=config.login_max_ttl,
        identity_log_key=kek.derive(LOG_IDENTITY_HASH_PURPOSE),
    )
    app[appkeys.VERIFIER] = Verifier(
        keyring,
        limits=Limits(
            max_token_bytes=config.max_token_bytes,
            max_caveats=config.max_caveats,
            max_discharges=config.max_discharges,
            cache_entries=config.verify_cache_entries,
        ),
        generations=app[appkeys.GENERATIONS],
        # The same instant either way; time.time skips building a datetime on every verify.
        clock=time.time if clock is utc_now else lambda: clock().timestamp(),
    )

    async def maintain() -> None:
        """Make the next key ahead of need and purge expired ones."""
        try:
            await keyring.maintain()
        except Exception:
            metrics.DATABASE_ERRORS.inc()
            raise

    maintaining = every(
        config.key_maintenance_interval.total_seconds(), maintain, what="root key maintenance"
    )
    async with tasks_running(maintaining):
        yield


def create_app(config: Config, *, clock: Callable[[], datetime] = utc_now) -> web.Application:
    """The tokensvc application for `config`; `clock` is injectable for tests."""
    governor = Governor.from_config(config)
    trusted_proxies = tuple(ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies)
    # aiohttp would undo gzip, deflate, br and zstd bodies itself, and fail a body that does not
    # decode as a 500 (or a bare 400 outside our pipeline): tokensvc.web.jsonio.read_body decides
    # which request encodings are taken, and decodes them, for every endpoint instead.
    app = web.Application(
        client_max_size=config.max_body_bytes, handler_args={"auto_decompress": False}
    )
    app[PIPELINE] = request_pipeline(
        tls=config.tls, governor=governor, trusted_proxies=trusted_proxies
    )
    app[GOVERNOR] = governor
    app[appkeys.CONFIG] = config
    app[appkeys.CLOCK] = clock
    app[appkeys.TRUSTED_PROXIES] = trusted_proxies
    app[appkeys.READINESS_PROBES] = {}
    app.cleanup_ctx.append(_flushing)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_kek)
    app.cleanup_ctx.append(_users)
    app.cleanup_ctx.append(_lockout)
    app.cleanup_ctx.append(bakery_handlers.discharger_context)
    app.cleanup_ctx.append(_keys)
    app.cleanup_ctx.append(token_lifecycle)
    bakery_handlers.setup(app, config.bakery.prefix, config=config.bakery)

    add_routes(
        app,
        [
            web.post("/v1/verify", verify.verify),
            web.post("/v1/login", login.login),
            web.post("/v1/tokens", tokens.mint),
            web.get("/v1/tokens", tokens.list_tokens),
            web.post("/v1/tokens/revoke", revocation.revoke_presented),
            web.delete("/v1/tokens/{id}", revocation.revoke_by_id),
            web.post("/v1/subjects/{subject}/revoke-all", revocation.revoke_all),
            web.post("/v1/keys/{id}/revoke", revocation.revoke_key),
            web.get("/v1/audit", audit.list_audit),
            web.get("/v1/keys", keys.list_keys),
            web.post("/v1/keys/rotate", keys.rotate),
            web.post("/v1/users", users.create_user),
            web.get("/v1/users", users.list_users),
            web.get("/v1/users/{name}", users.get_user),
            web.patch("/v1/users/{name}", users.patch_user),
            web.delete("/v1/users/{name}", users.delete_user),
            web.get("/v1/users/{name}/lockout", users.get_lockout),
            web.delete("/v1/users/{name}/lockout", users.clear_lockout),
            web.get("/healthz", health.healthz),
            web.get("/readyz", health.readyz),
            web.get("/openapi.yaml", health.openapi),
        ],
    )
    introspect.setup(app)
    forwardauth.setup(app)
    metrics_handlers.setup(app)
    add_catch_all(app)
    return app
