"""The composition root: the one function that builds a process's object graph.

`tokensvc serve` (through tokensvc.web.app.create_app) and the CLI's `--local` mode both build
the stores, the keyring, the minter, the verifier and the services here, in one order, so a
`--local` action goes through the same service methods — authorisation, ordering, revocation
side effects and the audit record — as the same action over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from keystore import (
    InvalidKeyEncryptionKey,
    KeyEncryptionKey,
    Keyring,
    RotationPolicy,
    create_engine,
)
from keystore.deployment_key import DeploymentKey, load_deployment_key
from keystore.discharger_key import DischargerKey, load_discharger_key
from keystore.reseal import kek_usage
from keystore.sealing import LocalKeks, Sealer, UnknownKek
from keystore.service_keys import ServiceKeys, service_key_id
from keystore.totp_secrets import TotpSecrets
from tokensvc.accounts.bootstrap import ensure_admin
from tokensvc.accounts.lockout import (
    LockoutPolicy,
    LockoutStore,
    MemoryLockoutStore,
    RedisLockoutStore,
)
from tokensvc.accounts.mfa import RecoveryCodes
from tokensvc.accounts.otpstate import ChallengeCodec, MemoryOnceStore, OnceStore, RedisOnceStore
from tokensvc.accounts.passwords import PasswordHasher, profile_by_name
from tokensvc.accounts.secondfactor import SecondFactors
from tokensvc.accounts.users import UserStore
from tokensvc.bakery.conditions import Conditions
from tokensvc.bakery.discharger import Discharger
from tokensvc.bakery.thirdparty import ThirdPartyLocator
from tokensvc.operations import metrics
from tokensvc.operations.background import every, tasks_running
from tokensvc.operations.config import Config, ConfigError
from tokensvc.operations.logs import security_event
from tokensvc.operations.outages import Outages
from tokensvc.operations.redisconn import (
    close_client,
    pubsub_client_from_url,
    redis_client_from_url,
)
from tokensvc.services import Services
from tokensvc.services.audit import AuditService
from tokensvc.services.authorization import Authorizer
from tokensvc.services.discharge import DischargeService
from tokensvc.services.health import HealthService
from tokensvc.services.introspection import IntrospectionService
from tokensvc.services.keys import KeyService
from tokensvc.services.lockouts import LockoutService
from tokensvc.services.login import LoginService
from tokensvc.services.mfa import MfaService
from tokensvc.services.principals import LocalOperator
from tokensvc.services.tokens import TokenService
from tokensvc.services.users import NewUser, UserService
from tokensvc.services.verdicts import VerdictService
from tokensvc.storage.audit import AuditLog
from tokensvc.storage.migrate import behind_head, upgrade, upgrade_in_child
from tokensvc.tokens import events
from tokensvc.tokens.events import EventLog
from tokensvc.tokens.feed import RevocationFeed
from tokensvc.tokens.generations import SubjectGenerations
from tokensvc.tokens.minting import Minter
from tokensvc.tokens.registry import TokenRegistry
from tokensvc.tokens.revocation import CHANNEL_SUFFIX, Revocations
from tokensvc.tokens.subjects import SubjectStore
from tokensvc.tokens.usage import UsageRecorder
from tokensvc.tokens.verification import Limits, Verifier

log = logging.getLogger("tokensvc")

#: Domain-separates the keyed hashes that name identities and addresses in Redis (both purposes
#: key derivations of the deployment key, keystore.deployment_key, so a KEK rotation keeps them).
LOCKOUT_HASH_PURPOSE = b"lockout identity and address hashes v1"
# Keys the `user_hash` that login events name identities by (tokensvc.services.login): the same on every
# replica, and a key apart from lockout's, so a log line and a Redis key cannot be matched up.
LOG_IDENTITY_HASH_PURPOSE = b"log identity hashes v1"
# Seals MFA challenges (tokensvc.accounts.otpstate): every replica opens what any replica made.
MFA_CHALLENGE_PURPOSE = b"mfa challenges v1"
#: Second-factor failures are counted on counters of their own (tokensvc.services.login), with
#: thresholds that bound the guesses at a 6-digit code: 5 per identity and address, 10 per
#: identity from addresses it has not completed a login from, progressive waits after that.
OTP_LOCKOUT_POLICY = LockoutPolicy(identity_threshold=10, identity_ip_threshold=5)


def utc_now() -> datetime:
    return datetime.now(UTC)


def prepare_embedded_database(config: Config) -> None:
    """The data directory (0700) and an owner-only SQLite file, made before SQLite makes it 0644
    (its -wal and -shm files take the database file's mode): the default one, or the file a
    TOKENSVC_DATABASE_URL names (red team: a URL's file held password hashes and sealed keys
    readable by every local user). A missing directory is left for SQLite to report."""
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:  # a setting's fault: one line naming it (red team, helper-69)
        raise ConfigError(
            f"TOKENSVC_DATA_DIR: cannot create {str(config.data_dir)!r} ({exc.strerror})"
        ) from None
    url = make_url(config.effective_database_url)
    database = url.database or ""
    if database.startswith("file:"):  # the URI form (?uri=true): its path, if it names a file
        if url.query.get("mode") == "memory":
            return
        database = database.removeprefix("file:").split("?", 1)[0]
    if not database or database == ":memory:":
        return
    path = Path(database)
    if not path.exists() and path.parent.is_dir():
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


@dataclass
class Runtime:
    """Everything one process holds: stores, keys, the verify path and the services."""

    config: Config
    clock: Callable[[], datetime]
    engine: AsyncEngine
    # The current KEK (what the embedded data directory holds); `keks` seals and opens.
    kek: KeyEncryptionKey
    keks: Sealer
    deployment_key: DeploymentKey
    users: UserStore
    hasher: PasswordHasher
    generations: SubjectGenerations
    lockout: LockoutStore
    otp_lockout: LockoutStore
    factors: SecondFactors
    keyring: Keyring
    discharger_key: DischargerKey
    discharger: Discharger
    third_parties: ThirdPartyLocator
    minter: Minter
    verifier: Verifier
    registry: TokenRegistry
    service_keys: ServiceKeys
    revocations: Revocations
    feed: RevocationFeed
    usage: UsageRecorder
    audit: AuditLog
    services: Services
    # Named dependency checks for readiness (Redis, where configured): each raises if it fails.
    probes: dict[str, Callable[[], Awaitable[object]]] = field(default_factory=dict)
    # This process's dependencies, up or down (the outage log lines and gauges).
    outages: Outages = field(default_factory=Outages)


@contextlib.asynccontextmanager
async def runtime(
    config: Config,
    *,
    clock: Callable[[], datetime] = utc_now,
    serving: bool = True,
    bootstrap: bool = True,
    announce: bool = True,
) -> AsyncIterator[Runtime]:
    """Build the object graph for `config`; close it when the block exits.

    `serving` (the HTTP service) also creates the bootstrap admin and runs the background work:
    key maintenance, the revocation and generation refreshes, the usage flush. The CLI's
    `--local` mode builds the same graph without them. `bootstrap=False` (the verify processes
    of `tokensvc serve`, which serve no logins) leaves the bootstrap admin to the API process.
    `announce`: this process says what the whole service must hear once (no admin user yet);
    `tokensvc serve` sets it in one process.
    """
    async with contextlib.AsyncExitStack() as stack:
        if config.embedded:
            prepare_embedded_database(config)
        engine = create_engine(config.effective_database_url)
        stack.push_async_callback(engine.dispose)
        if config.auto_migrate or not serving:
            await upgrade(engine)
        keks = load_keks(config)
        kek = keks.current
        if serving:
            await check_keks(engine, keks, now=clock())
        try:
            deployment_key = await load_deployment_key(engine, kek=keks, clock=clock)
            discharger_key = await load_discharger_key(engine, kek=keks, clock=clock)
        except UnknownKek as exc:
            raise ConfigError(_unknown_kek_message({exc.kek_id: 1}, keks)) from None

        # One outage of a dependency is one log line however many parts of the process see it.
        outages = Outages(dependencies=("database", "redis") if config.redis_url else ("database",))
        users = UserStore(engine, clock=clock)
        hasher = PasswordHasher(
            profile=profile_by_name(config.password_profile),
            pepper=config.pepper,
            max_concurrency=max(1, config.hash_concurrency),
            queue_timeout=config.queue_timeout.total_seconds(),
            reserved_for_trusted=config.hash_trusted_reserve,
            untrusted_share=config.hash_untrusted_share / 100,
            policy=config.password_policy(),
        )
        stack.callback(hasher.close)
        subjects = SubjectStore(engine, clock=clock)
        generations = SubjectGenerations(subjects, outages=outages)
        registry = TokenRegistry(engine)
        if serving:
            await stack.enter_async_context(generations.running())

        probes: dict[str, Callable[[], Awaitable[object]]] = {}
        lockout, otp_lockout, once = await _lockout(config, deployment_key, stack, probes)
        factors = SecondFactors(
            secrets=TotpSecrets(engine, kek=keks, clock=clock),
            recovery_codes=RecoveryCodes(engine, clock=clock),
            once=once,
            hasher=hasher,
            name_key=deployment_key.derive(LOCKOUT_HASH_PURPOSE),
        )
        identity_log_key = deployment_key.derive(LOG_IDENTITY_HASH_PURPOSE)

        discharger = Discharger(
            discharger_key,
            conditions=Conditions(
                users=users,
                lockout=lockout,
                clock=clock,
                issuer_of=registry.issuer_of,
                mfa_required_roles=config.mfa_required_roles,
            ),
            clock=clock,
            ttl=config.bakery.discharge_ttl,
        )
        third_parties = ThirdPartyLocator(config.bakery)
        stack.push_async_callback(third_parties.close)

        keyring = Keyring(
            engine,
            kek=keks,
            policy=RotationPolicy(
                lifetime=config.key_lifetime, generate_interval=config.key_generate_interval
            ),
            clock=clock,
        )
        await keyring.maintain()
        minter = Minter(
            keyring,
            generations=generations,
            location=config.location,
            clock=clock,
            third_parties=third_parties,
            discharger_key=discharger_key,
        )
        login = LoginService(
            users=users,
            generations=generations,
            hasher=hasher,
            lockout=lockout,
            minter=minter,
            clock=clock,
            default_ttl=config.login_default_ttl,
            max_ttl=config.login_max_ttl,
            identity_log_key=identity_log_key,
            second_factors=factors,
            otp_lockout=otp_lockout,
            challenges=ChallengeCodec(deployment_key.derive(MFA_CHALLENGE_PURPOSE)),
            mfa_required_roles=config.mfa_required_roles,
            shed_delay=config.login_shed_delay_ms / 1000,
        )
        verifier = Verifier(
            keyring,
            limits=Limits(
                max_token_bytes=config.max_token_bytes,
                max_caveats=config.max_caveats,
                max_discharges=config.max_discharges,
                cache_entries=config.verify_cache_entries,
            ),
            generations=generations,
            # The same instant either way; time.time skips building a datetime on every verify.
            clock=time.time if clock is utc_now else lambda: clock().timestamp(),
        )

        service_keys = ServiceKeys(engine, kek=keks, clock=clock)
        revocations = await _revocations(config, engine, registry, subjects, stack, outages)
        _wire_lifecycle(revocations, service_keys, verifier, generations)
        feed = RevocationFeed(
            EventLog(engine),
            poll_interval=config.revocation_refresh_interval.total_seconds(),
            retention=config.revocation_event_retention,
            clock=clock,
            max_subscribers=config.revocation_stream_max_subscribers,
            max_per_subject=config.revocation_stream_max_per_subject,
            heartbeat=config.revocation_stream_heartbeat.total_seconds(),
            outages=outages,
        )
        _wire_feed(feed, revocations)
        usage = UsageRecorder(
            registry, flush_interval=config.usage_flush_interval.total_seconds(), outages=outages
        )
        minter.attach(
            registry, service_keys=service_keys, max_service_ttl=config.max_service_token_ttl
        )
        verifier.attach(
            service_keys=service_keys,
            revoked=revocations.tokens,
            revoked_keys=revocations.keys,
            usage=usage,
        )
        audit = AuditLog(engine, clock=clock)
        authorizer = Authorizer(
            verifier=verifier,
            users=users,
            generations=generations,
            subjects=subjects,
            registry=registry,
            key_revoked=revocations.key_revoked,
            mfa_required_roles=config.mfa_required_roles,
        )
        services = Services(
            tokens=TokenService(
                engine=engine,
                authorizer=authorizer,
                minter=minter,
                verifier=verifier,
                registry=registry,
                revocations=revocations,
                users=users,
                audit=audit,
                default_ttl=config.default_token_ttl,
                clock=clock,
            ),
            users=UserService(
                engine=engine,
                authorizer=authorizer,
                users=users,
                hasher=hasher,
                revocations=revocations,
                registry=registry,
                audit=audit,
                factors=factors,
            ),
            keys=KeyService(
                authorizer=authorizer,
                keyring=keyring,
                revocations=revocations,
                audit=audit,
                engine=engine,
                keks=keks,
                clock=clock,
            ),
            lockouts=LockoutService(
                engine=engine,
                authorizer=authorizer,
                users=users,
                lockout=lockout,
                otp_lockout=otp_lockout,
                identity_key=identity_log_key,
                audit=audit,
                clock=clock,
            ),
            audit=AuditService(authorizer=authorizer, audit=audit),
            login=login,
            mfa=MfaService(
                engine=engine,
                authorizer=authorizer,
                users=users,
                factors=factors,
                otp_lockout=otp_lockout,
                passwords=login,
                audit=audit,
                clock=clock,
                issuer=config.location,
                required_roles=config.mfa_required_roles,
                identity_key=identity_log_key,
            ),
            discharge=DischargeService(discharger),
            health=HealthService(
                engine=engine, probes=probes, keyring=keyring, clock=clock, outages=outages
            ),
            introspection=IntrospectionService(
                authorizer=authorizer, verifier=verifier, issuer=config.location, clock=clock
            ),
            verdicts=VerdictService(
                authorizer=authorizer,
                verifier=verifier,
                feed=feed,
                max_cache_ttl=config.verdict_max_cache_ttl,
            ),
        )
        if serving and bootstrap:
            await ensure_admin(
                users, functools.partial(_create_user, services.users), config, announce=announce
            )
        if serving:
            await stack.enter_async_context(
                _maintaining(keyring, registry, audit, config, outages, clock=clock)
            )
            await stack.enter_async_context(services.health.monitoring())
            # The feed first: it starts at the newest event, then the loads below (and the
            # generations' next refresh, with its overlap) hold everything committed before it.
            await stack.enter_async_context(feed.running())
            await generations.refresh()
            await stack.enter_async_context(revocations.running())
            await stack.enter_async_context(usage.running())
        yield Runtime(
            config=config,
            clock=clock,
            engine=engine,
            kek=kek,
            keks=keks,
            deployment_key=deployment_key,
            users=users,
            hasher=hasher,
            generations=generations,
            lockout=lockout,
            otp_lockout=otp_lockout,
            factors=factors,
            keyring=keyring,
            discharger_key=discharger_key,
            discharger=discharger,
            third_parties=third_parties,
            minter=minter,
            verifier=verifier,
            registry=registry,
            service_keys=service_keys,
            revocations=revocations,
            feed=feed,
            usage=usage,
            audit=audit,
            services=services,
            probes=probes,
            outages=outages,
        )


def load_keks(config: Config) -> LocalKeks:
    """The configured KEKs: TOKENSVC_KEK(_FILE) seals, TOKENSVC_KEK_PREVIOUS(_FILE) only opens.

    Raises:
        ConfigError: a KEK is missing or malformed; the message names the variable.
    """
    if config.kek_file is not None:
        name = "TOKENSVC_KEK_FILE"
    elif config.kek is not None or not config.embedded:
        name = "TOKENSVC_KEK"
    else:
        name = "TOKENSVC_DATA_DIR"
    try:
        current = KeyEncryptionKey.load(
            value=config.kek,
            file=config.kek_file,
            data_dir=config.data_dir if config.embedded else None,
        )
    except InvalidKeyEncryptionKey as exc:
        hint = " (set TOKENSVC_KEK or TOKENSVC_KEK_FILE)" if name == "TOKENSVC_KEK" else ""
        raise ConfigError(f"{name}: {exc}{hint}") from None
    try:
        return LocalKeks(current, _previous_keks(config.kek_previous))
    except InvalidKeyEncryptionKey as exc:
        raise ConfigError(f"TOKENSVC_KEK_PREVIOUS: {exc}") from None


def _previous_keks(text: str | None) -> list[KeyEncryptionKey]:
    items = (text or "").replace(",", " ").split()
    return [KeyEncryptionKey.from_base64(item) for item in items]


async def check_keks(engine: AsyncEngine, keks: Sealer, *, now: datetime) -> None:
    """Refuse to serve when live keys in the database are sealed under a KEK not configured.

    Started so, the service would fail every verify of a token on such a key, one at a time; the
    operator gets one line naming the variables instead.

    Raises:
        ConfigError: some live sealed row's KEK is neither TOKENSVC_KEK nor a previous one.
        StoreUnavailable: the database cannot be reached.
    """
    usage = await kek_usage(engine, keks, now=now)
    if usage.unknown:
        raise ConfigError(_unknown_kek_message(usage.unknown, keks))


def _unknown_kek_message(unknown: dict[str, int], keks: Sealer) -> str:
    missing = ", ".join(
        f"{kek_id} ({n} key{'s' if n != 1 else ''})" for kek_id, n in unknown.items()
    )
    others = [kek_id for kek_id in keks.ids if kek_id != keks.current_id]
    configured = f"{keks.current_id} current" + "".join(f", {k} previous" for k in others)
    return (
        f"TOKENSVC_KEK / TOKENSVC_KEK_FILE: keys in the database are sealed under key-encryption"
        f" key {missing}, which is not configured (configured: {configured}); give that KEK as"
        " TOKENSVC_KEK, or in TOKENSVC_KEK_PREVIOUS while `tokensvc keys reseal` moves them"
    )


async def preflight(config: Config, *, clock: Callable[[], datetime] = utc_now) -> None:
    """What `tokensvc serve` checks once, before it starts any worker: migrations and KEKs.

    A worker failing the same check would print a traceback per process; this fails with one line.

    Raises:
        ConfigError: the KEKs are malformed or do not open the keys in the database.
        StoreUnavailable: the database cannot be reached.
    """
    if config.embedded:
        prepare_embedded_database(config)
    keks = load_keks(config)
    engine = create_engine(config.effective_database_url)
    try:
        behind = await behind_head(engine)
        if config.auto_migrate and behind:
            # In a child: this process goes on to serve, and should not hold alembic for life.
            await asyncio.to_thread(upgrade_in_child, config.effective_database_url)
        elif behind:
            # Serving would fail request by request on tables this release expects (deploy
            # review: Kubernetes pods came up Ready on a database never migrated).
            raise ConfigError(
                "TOKENSVC_AUTO_MIGRATE is false and the database lacks this release's"
                " migrations: run `tokensvc migrate` first"
            )
        await check_keks(engine, keks, now=clock())
    finally:
        await engine.dispose()


async def _lockout(
    config: Config,
    deployment_key: DeploymentKey,
    stack: contextlib.AsyncExitStack,
    probes: dict[str, Callable[[], Awaitable[object]]],
) -> tuple[LockoutStore, LockoutStore, OnceStore]:
    """The password lockout, the second factor's own lockout, and its spent-code store."""
    if config.redis_url is None:
        return (
            MemoryLockoutStore(),
            MemoryLockoutStore(policy=OTP_LOCKOUT_POLICY),
            MemoryOnceStore(),
        )
    redis = redis_client_from_url(config.redis_url)
    stack.push_async_callback(close_client, redis)

    probes["redis"] = redis.ping  # raises when Redis does not answer
    # Keyed hashes name identities and addresses in Redis: without the deployment key (sealed
    # under the KEK), whoever reads Redis cannot test a guessed username against them. Every
    # replica opens the same key, so all agree, and a KEK rotation keeps the counters.
    identity_key = deployment_key.derive(LOCKOUT_HASH_PURPOSE)
    return (
        RedisLockoutStore(
            redis, prefix=config.redis_prefix + "lockout:", identity_key=identity_key
        ),
        RedisLockoutStore(
            redis,
            policy=OTP_LOCKOUT_POLICY,
            prefix=config.redis_prefix + "otp-lockout:",
            identity_key=identity_key,
        ),
        RedisOnceStore(redis, prefix=config.redis_prefix + "mfa-once:"),
    )


async def _revocations(
    config: Config,
    engine: AsyncEngine,
    registry: TokenRegistry,
    subjects: SubjectStore,
    stack: contextlib.AsyncExitStack,
    outages: Outages,
) -> Revocations:
    # Pub/sub needs a connection that may sit idle: no socket timeout on this client. In a
    # Redis Cluster it is a client of one node, which hears every node's PUBLISH.
    redis = None
    if config.redis_url:
        redis = pubsub_client_from_url(config.redis_url, socket_timeout=None, max_connections=4)
        stack.push_async_callback(close_client, redis)
    return Revocations(
        engine,
        registry,
        subjects,
        refresh_interval=config.revocation_refresh_interval.total_seconds(),
        stale_after=config.revocation_stale_after.total_seconds(),
        redis=redis,
        channel=config.redis_prefix + CHANNEL_SUFFIX,
        outages=outages,
    )


#: The audit trail's actor for what the service does at its own start (`local:(service start)`).
_BOOTSTRAP: Final = LocalOperator("(service start)")  # no OS user can be called that
#: ... and for the audit rows TOKENSVC_AUDIT_RETENTION removes (`local:(retention)`).
_RETENTION: Final = LocalOperator("(retention)")
#: Audit pruning runs at most this often (seconds): each run that deletes rows adds one, so
#: pruning with every key maintenance round (a minute) would fill the trail with its own rows.
_AUDIT_PRUNE_EVERY: Final = 3600.0
_AUDIT_PASSES: Final = 20
_AUDIT_BATCH: Final = 1000


async def _create_user(users: UserService, name: str, password: str, role: str) -> object:
    """The bootstrap admin, created through the user service as any other user is."""
    return await users.create(_BOOTSTRAP, NewUser(name, password, roles=(role,)))


def _wire_lifecycle(
    revocations: Revocations,
    service_keys: ServiceKeys,
    verifier: Verifier,
    generations: SubjectGenerations,
) -> None:
    """What a revocation does to this process's caches, wherever it was made."""

    def token_revoked(token_id: str) -> None:
        service_keys.forget(service_key_id(token_id))

    revocations.delete_service_key = service_keys.delete
    # The verifier's service keys are attached (Verifier.attach) before anything is revoked.
    revocations.on_key_revoked.append(verifier.forget_root_key)
    revocations.on_token_revoked.append(token_revoked)
    revocations.on_generation.append(generations.remember)

    def staleness(stale: bool) -> None:
        verifier.stale = stale

    revocations.on_staleness.append(staleness)


def _wire_feed(feed: RevocationFeed, revocations: Revocations) -> None:
    """The event log applied to this process's view, and read at once after each revocation."""

    def apply(event: events.RevocationEvent) -> None:
        data = event.fields()
        if event.kind == events.TOKEN:
            revocations.note_token(str(data["token_id"]), float(data["expires_at"]))
        elif event.kind == events.KEY:
            revocations.note_key(str(data["key_id"]))
        elif event.kind == events.GENERATION:
            for callback in revocations.on_generation:
                callback(str(data["subject"]), int(data["generation"]))

    feed.on_event.append(apply)
    revocations.on_change.append(feed.wake)


@contextlib.asynccontextmanager
async def _maintaining(
    keyring: Keyring,
    registry: TokenRegistry,
    audit: AuditLog,
    config: Config,
    outages: Outages,
    *,
    clock: Callable[[], datetime],
) -> AsyncIterator[None]:
    """Make the next root key ahead of need and purge expired ones, and delete the registry
    rows of tokens expired longer than TOKENSVC_TOKEN_RETENTION, periodically; with
    TOKENSVC_AUDIT_RETENTION, the audit rows older than that, hourly."""
    audit_pruned_at: float | None = None

    async def maintain() -> None:
        nonlocal audit_pruned_at
        try:
            await keyring.maintain()
            await registry.prune_expired(clock() - config.token_retention)
            retention = config.audit_retention
            due = (
                audit_pruned_at is None or time.monotonic() - audit_pruned_at >= _AUDIT_PRUNE_EVERY
            )
            if retention is not None and due:
                before = clock() - retention
                pruned = await audit.prune(
                    before, actor=_RETENTION.name, batch=_AUDIT_BATCH, passes=_AUDIT_PASSES
                )
                if pruned:
                    security_event("audit_pruned", by=_RETENTION.name, deleted=pruned)
                # A backlog (retention just turned on over a long trail) goes on at the next
                # round, a minute away, instead of 20,000 rows an hour.
                backlog = pruned >= _AUDIT_PASSES * _AUDIT_BATCH
                audit_pruned_at = None if backlog else time.monotonic()
        except Exception:
            metrics.DATABASE_ERRORS.inc()
            raise

    interval = config.key_maintenance_interval.total_seconds()
    maintaining = every(
        interval, maintain, what="root key maintenance", outages=outages, dependency="database"
    )
    async with tasks_running(maintaining):
        yield
