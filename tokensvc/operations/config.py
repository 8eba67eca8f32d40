"""Configuration: one typed, validated settings object from `TOKENSVC_*` variables.

No configuration at all is a valid, runnable setup: the embedded default (SQLite file and
in-process lockout in the data directory, 127.0.0.1:8080). Secrets can also be read from a file
named by the variable with `_FILE` appended.

`Config` is a pydantic-settings model. `Config(...)` with keywords (tests, tools) validates the
given values and reads nothing else; `Config.from_env()` reads the environment through the
settings source below. Either way a bad value is one ConfigError line naming the variable, what
it accepts and what it got (never the value of a secret). Insecure choices are refused unless
`TOKENSVC_ALLOW_INSECURE` names them (`INSECURE_CHOICES`). Copies with changes:
`config.model_copy(update={...})`, which does not validate again.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote_plus

from pydantic import BeforeValidator, Field, InstanceOf, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tokensvc.bakery.config import BakeryConfig
from tokensvc.errors import TokensvcError
from tokensvc.operations import configvalues as values
from tokensvc.operations.configvalues import ConfigError, parse_duration

if TYPE_CHECKING:
    from tokensvc.accounts.password_policy import PasswordPolicy

__all__ = [
    "INSECURE_CHOICES",
    "Config",
    "ConfigError",
    "metrics_dir_problem",
    "parse_duration",
    "variable",
]

PREFIX = "TOKENSVC_"

#: What `TOKENSVC_ALLOW_INSECURE` (comma-separated) can allow; each is refused otherwise.
INSECURE_CHOICES: dict[str, str] = {
    # argon2 at 8 KiB and one pass: any stolen hash falls to a laptop. Tests use it for speed.
    "test-password-profile": "TOKENSVC_PASSWORD_PROFILE=CHEAP_FOR_TESTS",
    # Tokens and passwords in clear text on a network other hosts reach. Not needed behind a
    # TLS-terminating proxy that TOKENSVC_TRUSTED_PROXIES names.
    "plain-http": "plain HTTP on a non-loopback address without TLS or TOKENSVC_TRUSTED_PROXIES",
}

# Fields read from a variable whose name is not TOKENSVC_ + the field's name in capitals.
_VARIABLES = {"verify_listener": "TOKENSVC_VERIFY_PORT"}
# Values never shown in a message, and the variables that may be given as *_FILE instead.
_SECRETS = frozenset(
    {"kek", "kek_previous", "admin_password", "pepper", "database_url", "redis_url"}
)
_FROM_FILE = ("DATABASE_URL", "REDIS_URL", "ADMIN_PASSWORD", "PEPPER", "KEK_PREVIOUS")
# Read by BakeryConfig.from_env, which names its variables itself.
_BAKERY_VARIABLES = (
    "BAKERY_PREFIX",
    "DISCHARGE_TTL",
    "THIRD_PARTY_LOCATIONS",
    "THIRD_PARTY_KEYS",
    "THIRD_PARTY_INFO_TTL",
)


def variable(field: str) -> str:
    """The environment variable a Config field is read from."""
    return _VARIABLES.get(field, PREFIX + field.upper())


def metrics_dir_problem(env: Mapping[str, str]) -> str | None:
    """What is wrong with PROMETHEUS_MULTIPROC_DIR, or None (unset, or a writable directory).

    prometheus-client reads the variable when tokensvc.operations.metrics is imported and
    writes there as each metric is declared: a bad directory is an import-time traceback, so the
    CLI checks it before importing anything that declares metrics.
    """
    path = env.get("PROMETHEUS_MULTIPROC_DIR")
    if not path or (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
        return None
    return (
        "PROMETHEUS_MULTIPROC_DIR: expected an existing directory the service can write to;"
        f" got {path!r}"
    )


def _default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "tokensvc"


def _parsed(parse: Any) -> BeforeValidator:
    return BeforeValidator(parse)


Port = Annotated[int, _parsed(values.whole_number(1, 65535))]
Duration = Annotated[timedelta, _parsed(values.duration)]
Flag = Annotated[bool, _parsed(values.flag)]


def _whole(low: int, high: int) -> BeforeValidator:
    return _parsed(values.whole_number(low, high))


def _pepper(value: Any) -> Any:
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes) and len(value) < 16:
        raise ValueError("at least 16 bytes, e.g. from `head -c 32 /dev/urandom | base64`")
    return value


def _admin_password(value: Any) -> Any:
    # Checked against the password policy (at the configured lengths) in Config._consistent.
    return value


def _kek(value: Any) -> Any:
    if isinstance(value, str):
        from keystore import KeyEncryptionKey, KeystoreError

        try:
            KeyEncryptionKey.from_base64(value)
        except KeystoreError:
            raise ValueError(
                "32 random bytes in base64, e.g. from `head -c 32 /dev/urandom | base64`"
            ) from None
    return value


def _kek_file(value: Any) -> Any:
    if isinstance(value, str):
        from keystore import KeyEncryptionKey, KeystoreError

        try:
            KeyEncryptionKey.load(file=value)
        except KeystoreError as exc:
            # keystore's message names the file and what is wrong, never the key.
            raise ValueError(f"a readable file holding the key in base64 ({exc})") from None
    return value


def _kek_previous(value: Any) -> Any:
    if isinstance(value, str):
        from keystore import KeyEncryptionKey, KeystoreError

        try:
            for item in value.replace(",", " ").split():
                KeyEncryptionKey.from_base64(item)
        except KeystoreError:
            raise ValueError(
                "KEKs of 32 random bytes in base64, separated by commas or spaces"
            ) from None
    return value


def _password_profile(value: Any) -> Any:
    if isinstance(value, str):
        from tokensvc.accounts.passwords import PROFILES

        name = value.strip().upper()
        if name not in PROFILES:
            # CHEAP_FOR_TESTS is not offered: it is for test suites only (INSECURE_CHOICES).
            raise ValueError("OWASP or RFC_9106_LOW_MEMORY")
        return name
    return value


class Config(BaseSettings):
    """Everything `tokensvc serve` and the CLI's `--local` mode are configured with."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", validate_default=False, arbitrary_types_allowed=True
    )

    host: Annotated[str, _parsed(values.host)] = "127.0.0.1"
    port: Port = 8080
    data_dir: Annotated[Path, _parsed(values.directory)] = Field(
        default_factory=lambda: _default_data_dir(os.environ)
    )
    database_url: Annotated[str | None, _parsed(values.database_url)] = Field(
        default=None, repr=False
    )
    redis_url: Annotated[str | None, _parsed(values.redis_url)] = Field(default=None, repr=False)
    redis_prefix: Annotated[str, _parsed(values.token_text(max_length=64, example="tokensvc:"))] = (
        "tokensvc:"
    )
    kek: Annotated[str | None, _parsed(_kek)] = Field(default=None, repr=False)
    kek_file: Annotated[str | None, _parsed(_kek_file)] = None
    # Other KEKs (base64, comma- or space-separated) that only open what is sealed under them:
    # the previous KEK while a rotation re-seals, or the next one before it becomes current
    # (docs/security.md). Parsed, and named in errors, by composition.load_keks.
    kek_previous: Annotated[str | None, _parsed(_kek_previous)] = Field(default=None, repr=False)
    admin_password: Annotated[str | None, _parsed(_admin_password)] = Field(
        default=None, repr=False
    )
    location: Annotated[
        str, _parsed(values.token_text(max_length=256, example="https://auth.example.com"))
    ] = "tokensvc"
    key_lifetime: Duration = timedelta(hours=24)
    key_generate_interval: Duration = timedelta(hours=1)
    key_maintenance_interval: Duration = timedelta(minutes=1)
    default_token_ttl: Duration = timedelta(hours=1)
    login_default_ttl: Duration = timedelta(hours=8)
    login_max_ttl: Duration = timedelta(hours=23)
    max_token_bytes: Annotated[int, _whole(256, 16 << 20)] = 16384
    max_caveats: Annotated[int, _whole(1, 100_000)] = 128
    max_discharges: Annotated[int, _whole(0, 1024)] = 16
    max_body_bytes: Annotated[int, _whole(256, 64 << 20)] = 65536
    max_concurrent: Annotated[int, _whole(1, 1_000_000)] = 256
    max_queue: Annotated[int, _whole(0, 1_000_000)] = 1024
    queue_timeout: Duration = timedelta(seconds=2)
    # Logins in progress, not argon2 runs: the hasher bounds those itself (and answers 503 past its
    # queue); a flood at a locked-out account is cheap and should still hear 429, not overload.
    # Wide, because this budget is first come first served: a storm that filled it would queue a
    # real user's login behind every guess before the hasher's fair queue could put it first
    # (`./dev bench storm`: 128 let real users keep 0.28x of their quiet rate, 1024 0.39x).
    login_max_concurrent: Annotated[int, _whole(1, 1_000_000)] = 1024
    login_max_queue: Annotated[int, _whole(0, 1_000_000)] = 256
    # A login refused because the hasher has no room for it (503) is answered this late: a
    # client that retries at once (a stuffing tool at a fixed concurrency) then costs a timer,
    # not a stream of requests that takes CPU from /v1/verify. 0: at once.
    login_shed_delay_ms: Annotated[int, _whole(0, 10_000)] = 500
    # ~1.4 KB each: 20,000 keep a verify worker within 150 MB whatever the token stream; a
    # deployment with a bigger working set of live tokens can raise it (and its memory).
    verify_cache_entries: Annotated[int, _whole(0, 100_000_000)] = 20_000
    # `tokensvc serve` also listens on a port of its own for POST /v1/verify only
    # (tokensvc.web.verifyport: httptools' llhttp and an asyncio protocol, no aiohttp request
    # machinery). None: the service port + 1. TOKENSVC_VERIFY_PORT=off turns it off; /v1/verify
    # on the service port answers the same either way.
    verify_port: Port | None = None
    verify_listener: Flag = True
    # `tokensvc serve` with Redis: the verify listener in process(es) of its own, the rest of the
    # API in another, lower-priority one, so a login storm cannot take the verify event loop.
    verify_process: Flag = True
    # Token lifecycle: service tokens (own root key) up to this TTL; how often each process
    # polls for revocations (the cross-replica bound without Redis); how often last-use is written:
    # once a minute, so a token in steady use costs one row update a minute, not one per flush of
    # a few seconds (on PostgreSQL, each is a dead tuple for vacuum).
    max_service_token_ttl: Duration = timedelta(days=365)
    revocation_refresh_interval: Duration = timedelta(seconds=1)
    # How long /v1/verify answers from what it knows while it cannot read revocations from the
    # database (pub/sub is lossy: no substitute): then 503 until it can again.
    revocation_stale_after: Duration = timedelta(seconds=60)
    usage_flush_interval: Duration = timedelta(seconds=60)
    # Zero-hop clients (POST /v1/verdict, GET /v1/revocations/stream): the longest a verdict may
    # be cached; how often the stream sends a ping when nothing happens; how many streams one
    # process serves at once; how long revocation events are kept for clients to resume from.
    verdict_max_cache_ttl: Duration = timedelta(seconds=300)
    revocation_stream_heartbeat: Duration = timedelta(seconds=5)
    revocation_stream_max_subscribers: Annotated[int, _whole(1, 1_000_000)] = 1000
    # Of those, how many one subject (a service) may hold: one cannot starve the others.
    revocation_stream_max_per_subject: Annotated[int, _whole(1, 1_000_000)] = 250
    revocation_event_retention: Duration = timedelta(hours=24)
    # Expired tokens' registry rows are deleted this long after they expire (listed until then).
    token_retention: Duration = timedelta(days=30)
    # Audit rows older than this are deleted (hourly, each deletion itself audited as
    # `audit_pruned`); None (`off`, the default): kept for ever, as Keycloak keeps admin events
    # unless told otherwise. At least a day: `1h` typed for `1d` must not empty the trail.
    audit_retention: Annotated[
        timedelta | None, _parsed(values.duration_or_off(timedelta(days=1)))
    ] = None
    auto_migrate: Flag = True
    password_profile: Annotated[str, _parsed(_password_profile)] = "OWASP"  # noqa: S105 - a name
    # NIST SP 800-63B-4: 15 characters when the password is the only factor, 8 with a second
    # factor (tokensvc.accounts.password_policy); every length up to 64 is always accepted.
    password_min_length: Annotated[int, _whole(8, 64)] = 15
    password_min_length_mfa: Annotated[int, _whole(8, 64)] = 8
    # argon2 threads; default: one core fewer than the machine has, so the event loop (and
    # /v1/verify) keeps a core during a login storm.
    hash_concurrency: Annotated[int, _whole(1, 1024)] = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 2) - 1)
    )
    # argon2 threads more that only logins from an identity's known address (and, with MFA,
    # second-factor logins) may use: a login storm of anonymous guesses never holds them all.
    hash_trusted_reserve: Annotated[int, _whole(0, 64)] = 1
    # Percent of an argon2 thread's time that untrusted checks (anonymous guesses, in a storm)
    # may take; the rest it idles after each (tokensvc.accounts.passwords, `untrusted_share`).
    hash_untrusted_share: Annotated[int, _whole(1, 100)] = 50
    pepper: Annotated[bytes | None, _parsed(_pepper)] = Field(default=None, repr=False)
    # Users in any of these roles must log in with a second factor (TOTP or a recovery code);
    # until they enrol, a login gets them a token that can only enrol (tokensvc.services.login).
    mfa_required_roles: Annotated[frozenset[str], _parsed(values.role_list)] = frozenset()
    trusted_proxies: Annotated[tuple[str, ...], _parsed(values.networks)] = ()
    log_level: Annotated[str, _parsed(values.log_level)] = "info"
    tls_cert_file: Annotated[str | None, _parsed(values.readable_file)] = None
    tls_key_file: Annotated[str | None, _parsed(values.readable_file)] = None
    bakery: InstanceOf[BakeryConfig] = Field(default_factory=BakeryConfig)
    allow_insecure: Annotated[
        frozenset[str], _parsed(values.name_list(tuple(INSECURE_CHOICES)))
    ] = frozenset()

    def __init__(self, **values: Any) -> None:
        """Validate the given values; a bad one is a ConfigError naming its variable."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(describe(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keywords only: a test's Config(...) must not pick up the developer's TOKENSVC_* exports.
        # from_env passes what Environment read as keywords.
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read `TOKENSVC_*` variables (default: os.environ); a bad one is a ConfigError."""
        return cls(**Environment(cls, os.environ if env is None else env)())

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.key_generate_interval >= self.key_lifetime:
            raise ValueError(
                "TOKENSVC_KEY_GENERATE_INTERVAL must be shorter than TOKENSVC_KEY_LIFETIME"
            )
        if self.max_body_bytes < self.max_token_bytes:
            raise ValueError("TOKENSVC_MAX_BODY_BYTES must be at least TOKENSVC_MAX_TOKEN_BYTES")
        if self.login_default_ttl > self.login_max_ttl:
            raise ValueError("TOKENSVC_LOGIN_DEFAULT_TTL must be at most TOKENSVC_LOGIN_MAX_TTL")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "set both TOKENSVC_TLS_CERT_FILE and TOKENSVC_TLS_KEY_FILE, or neither"
            )
        if self.kek is not None and self.kek_file is not None:
            raise ValueError("set TOKENSVC_KEK or TOKENSVC_KEK_FILE, not both")
        if not self.embedded and self.kek is None and self.kek_file is None:
            raise ValueError(
                "TOKENSVC_KEK or TOKENSVC_KEK_FILE is required with PostgreSQL: the key that"
                " encrypts root keys at rest, 32 random bytes in base64"
                " (`head -c 32 /dev/urandom | base64`)"
            )
        if self.password_min_length_mfa > self.password_min_length:
            raise ValueError(
                "TOKENSVC_PASSWORD_MIN_LENGTH_MFA must be at most TOKENSVC_PASSWORD_MIN_LENGTH"
            )
        if self.admin_password is not None:
            self._check_admin_password(self.admin_password)
        self.check_secure(host=self.host)
        return self

    def password_policy(self) -> PasswordPolicy:
        """The password policy at the configured lengths."""
        from tokensvc.accounts.password_policy import PasswordPolicy

        return PasswordPolicy(
            min_length=self.password_min_length,
            min_length_with_mfa=self.password_min_length_mfa,
        )

    def _check_admin_password(self, password: str) -> None:
        try:
            self.password_policy().check(password, username="admin")
        except TokensvcError as exc:  # BadRequest; its text is the rule, never the password
            raise ValueError(
                "TOKENSVC_ADMIN_PASSWORD: expected a password the password policy accepts"
                f" (or _FILE), but {exc}"
            ) from None

    def check_secure(self, *, host: str) -> None:
        """Refuse insecure choices that TOKENSVC_ALLOW_INSECURE does not name (ValueError)."""
        if self.password_profile == "CHEAP_FOR_TESTS" and (  # noqa: S105 - a profile name
            "test-password-profile" not in self.allow_insecure
        ):
            raise ValueError(
                "TOKENSVC_PASSWORD_PROFILE=CHEAP_FOR_TESTS is for test suites only (8 KiB argon2);"
                " use OWASP or RFC_9106_LOW_MEMORY, or set"
                " TOKENSVC_ALLOW_INSECURE=test-password-profile"
            )
        if (
            not self.tls
            and not self.trusted_proxies
            and not values.is_loopback(host)
            and "plain-http" not in self.allow_insecure
        ):
            raise ValueError(
                f"TOKENSVC_HOST={host} without TLS sends tokens and passwords in clear text:"
                " set TOKENSVC_TLS_CERT_FILE and TOKENSVC_TLS_KEY_FILE, or TOKENSVC_TRUSTED_PROXIES"
                " for the TLS-terminating proxy in front, or TOKENSVC_ALLOW_INSECURE=plain-http"
            )

    def listening(self, *, host: str | None, port: int | None) -> Config:
        """This configuration with `serve --host/--port` applied, checked like the variables."""
        if host is None and port is None:
            return self
        update = {"host": self.host if host is None else host, "port": port or self.port}
        try:
            return type(self)(**{**dict(self), **update})
        except ConfigError as exc:
            raise ConfigError(
                exc.message.replace("TOKENSVC_HOST", "--host").replace("TOKENSVC_PORT", "--port")
            ) from None

    def listening_for_verify(self, verify_port: str) -> Config:
        """This configuration with `serve --verify-port` (a port, or `off`) applied."""
        if verify_port.strip().lower() == "off":
            return self.model_copy(update={"verify_listener": False})
        try:
            return type(self)(**{**dict(self), "verify_port": verify_port, "verify_listener": True})
        except ConfigError as exc:
            raise ConfigError(
                exc.message.replace("TOKENSVC_VERIFY_PORT", "--verify-port")
            ) from None

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
        return _mask_password(self.effective_database_url)


# Query parameters that carry credentials (redis-py's `password` and `sentinel_password`,
# libpq's `password` and `sslpassword`, tokens and secrets of any driver): their values are masked
# like the userinfo password (red team: a bad Redis URL echoed ?sentinel_password= in its error).
# The name is matched once percent-decoded, as drivers decode it (red team: `?%70assword=`).
_QUERY_PARAMETER = re.compile(r"([?&;])([^=&#;]*)=([^&#;]*)")
_SECRET_NAME = re.compile(r"pass|secret|token|credential", re.I)
# A scheme and an authority: what a message may show of a URL setting, password masked.
_URL_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _mask_password(url: str) -> str:
    """`url` with the password of its userinfo and the values of credential parameters masked."""

    def masked(parameter: re.Match[str]) -> str:
        separator, name, _ = parameter.groups()
        if _SECRET_NAME.search(unquote_plus(name)):
            return f"{separator}{name}=***"
        return parameter.group(0)

    return _QUERY_PARAMETER.sub(masked, re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url))


class Environment(PydanticBaseSettingsSource):
    """The settings source of `Config.from_env`: `TOKENSVC_*` variables of a mapping.

    pydantic-settings' own EnvSettingsSource reads only os.environ and knows no `*_FILE`
    variables; this one reads the mapping it is given (tests pass dicts), takes an empty
    variable as unset, reads secrets from `*_FILE`, maps TOKENSVC_VERIFY_PORT=off, and hands
    the bakery's variables to BakeryConfig.from_env. Values stay text: Config's validators parse.
    """

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._env = env

    def _get(self, name: str) -> str | None:
        value = self._env.get(PREFIX + name)
        return value if value not in (None, "") else None

    def _secret(self, name: str) -> str | None:
        direct, path = self._get(name), self._get(name + "_FILE")
        if direct is not None and path is not None:
            raise ConfigError(f"set {PREFIX}{name} or {PREFIX}{name}_FILE, not both")
        if path is None:
            return direct
        try:
            mode = stat.S_IMODE(Path(path).stat().st_mode)
            if mode & 0o007:
                # As for the KEK file (keystore): a secret every user of the host may read or
                # change is refused (code review: TOKENSVC_KEK_PREVIOUS_FILE opens every root
                # key not yet resealed). Group access stays: a Kubernetes Secret volume is the
                # pod's fsGroup's (deploy/k8s: 0440).
                raise ConfigError(
                    f"{PREFIX}{name}_FILE {path!r} is accessible to every user of this host"
                    f" (mode {mode:04o}); run `chmod o-rwx` on it (0600, or 0640 for a group)"
                )
            return Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"{PREFIX}{name}_FILE must be a readable text file, got {path!r} ({reason})"
            ) from None

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name.upper() in _FROM_FILE:
            return self._secret(field_name.upper()), variable(field_name), False
        return self._get(field_name.upper()), variable(field_name), False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if name in ("bakery", "verify_listener"):
                continue
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                found[name] = value
        if found.get("verify_port", "").strip().lower() == "off":
            del found["verify_port"]
            found["verify_listener"] = False
        if "data_dir" not in found:
            found["data_dir"] = _default_data_dir(self._env)
        problem = metrics_dir_problem(self._env)
        if problem is not None:
            raise ConfigError(problem)
        if any(self._get(name) is not None for name in _BAKERY_VARIABLES):
            found["bakery"] = BakeryConfig.from_env(self._env)
        return found


def describe(error: ValidationError) -> str:
    """One line for every problem: the variable, what it accepts, what it got."""
    problems = []
    for item in error.errors(include_url=False):
        field = str(item["loc"][0]) if item["loc"] else None
        cause = item.get("ctx", {}).get("error")
        if field is None:
            problems.append(str(cause) if cause is not None else item["msg"])
            continue
        if item["type"] == "value_error" and cause is not None:
            accepts = f"expected {cause}"
        elif item["type"] == "extra_forbidden":
            problems.append(f"unknown setting {field!r}")
            continue
        else:
            accepts = item["msg"][:1].lower() + item["msg"][1:]
        problems.append(f"{variable(field)}: {accepts}; got {_shown(field, item['input'])}")
    return "; ".join(problems)


def _shown(field: str, value: Any) -> str:
    """The value as a message may show it: secrets hidden, URL passwords masked, one short line."""
    if field in ("database_url", "redis_url") and isinstance(value, str):
        # Masked only when it is shaped like a URL; anything else may be a password itself (red
        # team, helper-69: *_FILE pointed at the password file, or a libpq keyword string
        # `host=… password=…`, was echoed whole).
        if _URL_SHAPE.match(value) is None or any(c.isspace() for c in value):
            return "a value that is no URL (not shown: it may hold a secret)"
        value = _mask_password(value)
    elif field in _SECRETS:
        return "a value (not shown: it is a secret)"
    text = repr(value)  # repr escapes newlines and control characters: the message stays one line
    return text if len(text) <= 240 else text[:237] + "…"
