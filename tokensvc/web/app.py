"""The app factory: the routes, the request pipeline, and the process's object graph
(tokensvc.composition) exposed under typed AppKeys."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from aiohttp import web

from tokensvc.bakery import appkeys as bakery_keys
from tokensvc.composition import prepare_embedded_database, runtime, utc_now
from tokensvc.operations import metrics
from tokensvc.operations.background import every, tasks_running
from tokensvc.operations.config import Config
from tokensvc.operations.logs import flush_access_log
from tokensvc.web import appkeys
from tokensvc.web.governor import GOVERNOR, Governor
from tokensvc.web.handlers import (
    audit,
    forwardauth,
    health,
    introspect,
    keys,
    login,
    mfa,
    revocation,
    tokens,
    users,
    verdict,
    verify,
)
from tokensvc.web.handlers import bakery as bakery_handlers
from tokensvc.web.handlers import metrics as metrics_handlers
from tokensvc.web.pipeline import request_pipeline
from tokensvc.web.routes import PIPELINE, add_catch_all, add_routes

__all__ = ["create_app", "prepare_embedded_database", "utc_now"]

log = logging.getLogger("tokensvc")

# A path segment (aiohttp's own default pattern) of at most the length /v1/login accepts.
LOCKOUT_IDENTITY = "{name:[^{}/]{1,256}}"


async def _flushing(app: web.Application) -> AsyncIterator[None]:
    """Every second and at shutdown: write out buffered access lines, fold request tallies into
    the metrics (both are kept off the per-request path)."""

    async def flush() -> None:
        flush_access_log()
        metrics.flush_requests()

    async with tasks_running(every(1.0, flush, what="flushing access log and metrics")):
        yield
    await flush()


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    """The process's object graph (tokensvc.composition), built for serving and exposed to the
    handlers under typed AppKeys."""
    async with runtime(
        app[appkeys.CONFIG],
        clock=app[appkeys.CLOCK],
        bootstrap=app[appkeys.BOOTSTRAP],
        announce=app[appkeys.ANNOUNCE],
    ) as built:
        app[appkeys.RUNTIME] = built
        app[appkeys.SERVICES] = built.services
        app[appkeys.ENGINE] = built.engine
        app[appkeys.KEK] = built.kek
        app[appkeys.USERS] = built.users
        app[appkeys.HASHER] = built.hasher
        app[appkeys.GENERATIONS] = built.generations
        app[appkeys.LOCKOUT] = built.lockout
        app[appkeys.OTP_LOCKOUT] = built.otp_lockout
        app[appkeys.FACTORS] = built.factors
        app[appkeys.LOGIN] = built.services.login
        app[appkeys.KEYRING] = built.keyring
        app[appkeys.MINTER] = built.minter
        app[appkeys.VERIFIER] = built.verifier
        app[appkeys.REGISTRY] = built.registry
        app[appkeys.SERVICE_KEYS] = built.service_keys
        app[appkeys.REVOCATIONS] = built.revocations
        app[appkeys.USAGE] = built.usage
        app[appkeys.AUDIT] = built.audit
        app[bakery_keys.DISCHARGER_KEY] = built.discharger_key
        app[bakery_keys.DISCHARGER] = built.discharger
        app[bakery_keys.THIRD_PARTIES] = built.third_parties
        yield


async def _end_streams(app: web.Application) -> None:
    """End the revocation streams first: aiohttp waits for open handlers before cleanup."""
    built = app.get(appkeys.RUNTIME)
    if built is not None:
        built.feed.close()


def create_app(
    config: Config,
    *,
    clock: Callable[[], datetime] = utc_now,
    bootstrap: bool = True,
    announce: bool = True,
) -> web.Application:
    """The tokensvc application for `config`; `clock` is injectable for tests.

    `bootstrap=False`: this process does not create the bootstrap admin (a verify process of
    `tokensvc serve`; the API process does). `announce`: this process logs what the whole
    service must hear once (no admin user yet); `tokensvc serve` sets it in one process only.
    """
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
    app[appkeys.BOOTSTRAP] = bootstrap
    app[appkeys.ANNOUNCE] = announce
    app[appkeys.TRUSTED_PROXIES] = trusted_proxies
    app.cleanup_ctx.append(_flushing)
    app.cleanup_ctx.append(_runtime)
    bakery_handlers.setup(app, config.bakery.prefix, config=config.bakery)

    add_routes(
        app,
        [
            web.post("/v1/verify", verify.verify),
            web.post("/v1/login", login.login),
            web.post("/v1/tokens", tokens.mint),
            web.get("/v1/tokens", tokens.list_tokens),
            web.post("/v1/tokens/revoke", revocation.revoke_presented),
            # Only a token id (32 hex digits) names a token: a bare {id} would also take
            # DELETE /v1/tokens/revoke, and a 405 there would then offer DELETE beside POST.
            web.delete("/v1/tokens/{id:[0-9a-f]{32}}", revocation.revoke_by_id),
            web.post("/v1/subjects/{subject}/revoke-all", revocation.revoke_all),
            web.post("/v1/keys/{id}/revoke", revocation.revoke_key),
            web.get("/v1/audit", audit.list_audit),
            web.get("/v1/keys", keys.list_keys),
            web.post("/v1/keys/rotate", keys.rotate),
            web.get("/v1/kek", keys.kek_status),
            web.post("/v1/kek/reseal", keys.reseal),
            web.post("/v1/users", users.create_user),
            web.get("/v1/users", users.list_users),
            web.get("/v1/users/{name}", users.get_user),
            web.patch("/v1/users/{name}", users.patch_user),
            web.delete("/v1/users/{name}", users.delete_user),
            # At most the 256 characters a login name can have: longer ones are a 404.
            web.get(f"/v1/users/{LOCKOUT_IDENTITY}/lockout", users.get_lockout),
            web.delete(f"/v1/users/{LOCKOUT_IDENTITY}/lockout", users.clear_lockout),
            web.get("/v1/mfa", mfa.get_status),
            web.post("/v1/mfa/enroll", mfa.enroll),
            web.post("/v1/mfa/activate", mfa.activate),
            web.post("/v1/mfa/disable", mfa.disable),
            web.post("/v1/mfa/recovery-codes", mfa.recovery_codes),
            web.get("/v1/users/{name}/mfa", mfa.get_user_status),
            web.delete("/v1/users/{name}/mfa", mfa.reset),
            web.get("/healthz", health.healthz),
            web.get("/readyz", health.readyz),
            web.get("/openapi.yaml", health.openapi),
        ],
    )
    introspect.setup(app)
    verdict.setup(app)
    app.on_shutdown.append(_end_streams)
    forwardauth.setup(app)
    metrics_handlers.setup(app)
    add_catch_all(app)
    return app
