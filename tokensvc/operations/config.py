"""Configuration from the environment (`TOKENSVC_*`), secrets also from `*_FILE` variables.

No configuration at all is a valid, runnable setup: the embedded default (SQLite file and
in-process lockout in the data directory, 127.0.0.1:8080).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from tokensvc.bakery.config import BakeryConfig
from tokensvc.errors import TokensvcError


class ConfigError(TokensvcError):
    """The configuration is invalid."""

    code = "config_error"


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> timedelta:
    """`90`, `90s`, `15m`, `1h30m`, `2d` → timedelta; bare numbers are seconds."""
    text = text.strip()
    # ASCII only: "²".isdigit() is true, and \d would take any script's digits.
    match = _DURATION.fullmatch(text) if text.isascii() else None
    if text.isascii() and text.isdigit():
        match = _DURATION.fullmatch(text + "s")
    if not text or match is None:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h30m, 2d)")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    try:
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ConfigError(f"duration out of range: {text!r}") from None


def _default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "tokensvc"


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: _default_data_dir(os.environ))
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "tokensvc:"
    kek: str | None = field(default=None, repr=False)
    kek_file: str | None = None
    # Other KEKs (base64, comma-separated) that only open what is sealed under them: the previous
    # KEK while a rotation re-seals, or the next one before it becomes current (docs/security.md).
    kek_previous: str | None = field(default=None, repr=False)
    admin_password: str | None = field(default=None, repr=False)
    location: str = "tokensvc"
    key_lifetime: timedelta = timedelta(hours=24)
    key_generate_interval: timedelta = timedelta(hours=1)
    key_maintenance_interval: timedelta = timedelta(minutes=1)
    default_token_ttl: timedelta = timedelta(hours=1)
    login_default_ttl: timedelta = timedelta(hours=8)
    login_max_ttl: timedelta = timedelta(hours=23)
    max_token_bytes: int = 16384
    max_caveats: int = 128
    max_discharges: int = 16
    max_body_bytes: int = 65536
    max_concurrent: int = 256
    max_queue: int = 1024
    queue_timeout: timedelta = timedelta(seconds=2)
    # Logins in progress, not argon2 runs: the hasher bounds those itself (and answers 503 past its
    # queue); a flood at a locked-out account is cheap and should still hear 429, not overload.
    login_max_concurrent: int = 128
    login_max_queue: int = 256
    verify_cache_entries: int = 50_000
    # `tokensvc serve` also listens on a port of its own for POST /v1/verify only
    # (tokensvc.web.verifyport: httptools' llhttp and an asyncio protocol, no aiohttp request
    # machinery). None: the service port + 1. TOKENSVC_VERIFY_PORT=off turns it off; /v1/verify
    # on the service port answers the same either way.
    verify_port: int | None = None
    verify_listener: bool = True
    # `tokensvc serve` with Redis: the verify listener in process(es) of its own, the rest of the
    # API in another, lower-priority one, so a login storm cannot take the verify event loop.
    verify_process: bool = True
    # Token lifecycle: service tokens (own root key) up to this TTL; how often each process
    # polls for revocations (the cross-replica bound without Redis); how often last-use is written:
    # once a minute, so a token in steady use costs one row update a minute, not one per flush of
    # a few seconds (on PostgreSQL, each is a dead tuple for vacuum).
    max_service_token_ttl: timedelta = timedelta(days=365)
    revocation_refresh_interval: timedelta = timedelta(seconds=1)
    usage_flush_interval: timedelta = timedelta(seconds=60)
    auto_migrate: bool = True
    password_profile: str = "OWASP"  # noqa: S105 - the name of an argon2 profile, not a password
    # argon2 threads; default: one core fewer than the machine has, so the event loop (and
    # /v1/verify) keeps a core during a login storm.
    hash_concurrency: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) - 1))
    pepper: bytes | None = field(default=None, repr=False)
    trusted_proxies: tuple[str, ...] = ()
    log_level: str = "info"
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    bakery: BakeryConfig = field(default_factory=BakeryConfig)

    @property
    def embedded(self) -> bool:
        """True when running on the built-in SQLite database."""
        return self.effective_database_url.startswith("sqlite")

    def verify_listen_port(self, port: int) -> int | None:
        """The verify listener's port when the service listens on `port`; None: no listener."""
        if not self.verify_listener:
            return None
        return self.verify_port if self.verify_port is not None else port + 1

    @property
    def tls(self) -> bool:
        """True when this process terminates TLS itself (cert and key files configured)."""
        return self.tls_cert_file is not None

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'tokensvc.db'}"

    @property
    def public_database_url(self) -> str:
        """The database URL with any password masked, for logs and status output."""
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", self.effective_database_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read `TOKENSVC_*` variables; unknown values are a ConfigError naming the variable."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get("TOKENSVC_" + name)
            return value if value not in (None, "") else None

        def secret(name: str) -> str | None:
            direct = get(name)
            path = get(name + "_FILE")
            if direct is not None and path is not None:
                raise ConfigError(f"set TOKENSVC_{name} or TOKENSVC_{name}_FILE, not both")
            if path is None:
                return direct
            try:
                return Path(path).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read TOKENSVC_{name}_FILE: {exc.strerror}") from None

        def duration(name: str, default: timedelta) -> timedelta:
            value = get(name)
            return default if value is None else parse_duration(value)

        def integer(name: str, default: int) -> int:
            value = get(name)
            if value is None:
                return default
            if not value.isdigit():
                raise ConfigError(f"TOKENSVC_{name} must be a whole number, got {value!r}")
            return int(value)

        def flag(name: str, default: bool) -> bool:
            value = get(name)
            return default if value is None else value.lower() in ("1", "true", "yes")

        defaults = cls()
        verify_port = get("VERIFY_PORT")
        data_dir = get("DATA_DIR")
        pepper = secret("PEPPER")
        config = cls(
            host=get("HOST") or defaults.host,
            port=integer("PORT", defaults.port),
            data_dir=Path(data_dir) if data_dir else _default_data_dir(env),
            database_url=secret("DATABASE_URL"),
            redis_url=secret("REDIS_URL"),
            redis_prefix=get("REDIS_PREFIX") or defaults.redis_prefix,
            kek=get("KEK"),
            kek_file=get("KEK_FILE"),
            kek_previous=secret("KEK_PREVIOUS"),
            admin_password=secret("ADMIN_PASSWORD"),
            location=get("LOCATION") or defaults.location,
            key_lifetime=duration("KEY_LIFETIME", defaults.key_lifetime),
            key_generate_interval=duration("KEY_GENERATE_INTERVAL", defaults.key_generate_interval),
            key_maintenance_interval=duration(
                "KEY_MAINTENANCE_INTERVAL", defaults.key_maintenance_interval
            ),
            default_token_ttl=duration("DEFAULT_TOKEN_TTL", defaults.default_token_ttl),
            login_default_ttl=duration("LOGIN_DEFAULT_TTL", defaults.login_default_ttl),
            login_max_ttl=duration("LOGIN_MAX_TTL", defaults.login_max_ttl),
            max_token_bytes=integer("MAX_TOKEN_BYTES", defaults.max_token_bytes),
            max_caveats=integer("MAX_CAVEATS", defaults.max_caveats),
            max_discharges=integer("MAX_DISCHARGES", defaults.max_discharges),
            max_body_bytes=integer("MAX_BODY_BYTES", defaults.max_body_bytes),
            max_concurrent=integer("MAX_CONCURRENT", defaults.max_concurrent),
            max_queue=integer("MAX_QUEUE", defaults.max_queue),
            queue_timeout=duration("QUEUE_TIMEOUT", defaults.queue_timeout),
            login_max_concurrent=integer("LOGIN_MAX_CONCURRENT", defaults.login_max_concurrent),
            login_max_queue=integer("LOGIN_MAX_QUEUE", defaults.login_max_queue),
            verify_cache_entries=integer("VERIFY_CACHE_ENTRIES", defaults.verify_cache_entries),
            verify_port=None if verify_port in (None, "off") else integer("VERIFY_PORT", 0),
            verify_listener=verify_port != "off",
            verify_process=flag("VERIFY_PROCESS", defaults.verify_process),
            max_service_token_ttl=duration("MAX_SERVICE_TOKEN_TTL", defaults.max_service_token_ttl),
            revocation_refresh_interval=duration(
                "REVOCATION_REFRESH_INTERVAL", defaults.revocation_refresh_interval
            ),
            usage_flush_interval=duration("USAGE_FLUSH_INTERVAL", defaults.usage_flush_interval),
            auto_migrate=flag("AUTO_MIGRATE", defaults.auto_migrate),
            password_profile=get("PASSWORD_PROFILE") or defaults.password_profile,
            hash_concurrency=integer("HASH_CONCURRENCY", defaults.hash_concurrency),
            pepper=pepper.encode() if pepper else None,
            trusted_proxies=tuple(
                p.strip() for p in (get("TRUSTED_PROXIES") or "").split(",") if p.strip()
            ),
            log_level=get("LOG_LEVEL") or defaults.log_level,
            tls_cert_file=get("TLS_CERT_FILE"),
            tls_key_file=get("TLS_KEY_FILE"),
            bakery=BakeryConfig.from_env(env),
        )
        config.validate()
        return config

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError("TOKENSVC_PORT must be between 1 and 65535")
        if self.verify_port is not None and not 0 < self.verify_port < 65536:
            raise ConfigError("TOKENSVC_VERIFY_PORT must be between 1 and 65535, or off")
        if self.key_generate_interval >= self.key_lifetime:
            raise ConfigError("TOKENSVC_KEY_GENERATE_INTERVAL must be shorter than KEY_LIFETIME")
        if self.key_generate_interval <= timedelta(0):
            raise ConfigError("TOKENSVC_KEY_GENERATE_INTERVAL must be positive")
        if self.max_token_bytes < 256 or self.max_body_bytes < self.max_token_bytes:
            raise ConfigError("TOKENSVC_MAX_BODY_BYTES must be at least TOKENSVC_MAX_TOKEN_BYTES")
        if self.max_concurrent < 1 or self.login_max_concurrent < 1:
            raise ConfigError(
                "TOKENSVC_MAX_CONCURRENT and TOKENSVC_LOGIN_MAX_CONCURRENT must be at least 1"
            )
        if min(self.revocation_refresh_interval, self.usage_flush_interval) <= timedelta(0):
            raise ConfigError(
                "TOKENSVC_REVOCATION_REFRESH_INTERVAL and USAGE_FLUSH_INTERVAL must be positive"
            )
        if self.queue_timeout <= timedelta(0):
            raise ConfigError("TOKENSVC_QUEUE_TIMEOUT must be positive")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError(
                "set both TOKENSVC_TLS_CERT_FILE and TOKENSVC_TLS_KEY_FILE, or neither"
            )
        url = self.effective_database_url
        if not (url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://"))):
            raise ConfigError(
                "TOKENSVC_DATABASE_URL must start with postgresql+asyncpg:// or sqlite+aiosqlite://"
            )
