"""tokensvc.operations.config: parsing, refusals, insecure choices, secrets kept out of messages."""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta
from pathlib import Path

import pytest

from tokensvc.operations.config import Config, ConfigError

KEK = base64.b64encode(secrets.token_bytes(32)).decode()
PG = "postgresql://app:hunter2@db.internal:5432/tokensvc"


def load(**variables: str) -> Config:
    return Config.from_env({f"TOKENSVC_{name}": value for name, value in variables.items()})


def refusal(**variables: str) -> str:
    with pytest.raises(ConfigError) as refused:
        load(**variables)
    return refused.value.message


def test_no_configuration_is_the_embedded_default(tmp_path: Path) -> None:
    """An empty environment is valid: SQLite in the data dir, loopback, the documented defaults."""
    config = Config.from_env({"XDG_DATA_HOME": str(tmp_path)})

    assert config.embedded
    assert config.data_dir == tmp_path / "tokensvc"
    assert (config.host, config.port, config.password_profile) == ("127.0.0.1", 8080, "OWASP")
    assert config.verify_listen_port(8080) == 8081
    assert config == Config(
        data_dir=tmp_path / "tokensvc", hash_concurrency=config.hash_concurrency
    )


@pytest.mark.parametrize(
    ("word", "meaning"),
    [
        ("true", True),
        ("1", True),
        ("YES", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("Off", False),
    ],
)
def test_booleans_take_the_usual_words(word: str, meaning: bool) -> None:
    """true/false, 1/0, yes/no, on/off in any case."""
    assert load(AUTO_MIGRATE=word).auto_migrate is meaning


@pytest.mark.parametrize("word", ["ture", "enabled", "t", "2", "none"])
def test_any_other_boolean_is_refused_not_read_as_false(word: str) -> None:
    """A typo used to switch a feature off in silence; now it is refused, naming the variable."""
    message = refusal(VERIFY_PROCESS=word)

    assert message.startswith("TOKENSVC_VERIFY_PROCESS: expected true or false")
    assert repr(word) in message


@pytest.mark.parametrize(
    "url", [PG, PG.replace("postgresql", "postgres"), PG.replace("://", "+asyncpg://")]
)
def test_libpq_style_urls_mean_asyncpg(url: str) -> None:
    """postgresql:// (what psql and ./dev use) and postgres:// are accepted and mean asyncpg."""
    config = load(DATABASE_URL=url, KEK=KEK)

    assert config.database_url == "postgresql+asyncpg://app:hunter2@db.internal:5432/tokensvc"
    assert not config.embedded
    assert "hunter2" not in config.public_database_url
    assert "hunter2" not in repr(config)


def test_other_databases_are_refused_without_echoing_the_password() -> None:
    """A MySQL URL is refused; the message shows it with its password masked."""
    message = refusal(DATABASE_URL="mysql://app:hunter2@db/app", KEK=KEK)

    assert message.startswith("TOKENSVC_DATABASE_URL: expected a URL postgresql://")
    assert "mysql://app:***@db/app" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("REDIS_URL", "redis+sentinel://:hunter2@127.0.0.1:99999/svc?sentinel_password=hunter2"),
        ("REDIS_URL", "redis://127.0.0.1:6390/0?password=hunter2&socket_timeout=x"),
        ("DATABASE_URL", "mysql://app@db/app?password=hunter2"),
        ("DATABASE_URL", "mysql://app@db/app?sslpassword=hunter2;sslmode=require"),
        # A name percent-encoded, as the driver decodes it (red team, helper-40).
        ("DATABASE_URL", "mysql://app@db/app?%70assword=hunter2"),
    ],
)
def test_a_refused_url_never_echoes_a_password_in_its_query(variable: str, url: str) -> None:
    """Red team (helper-34): the message masked the userinfo password only, and echoed
    `?password=` and `?sentinel_password=`, which redis-py and libpq read as credentials."""
    message = refusal(**{variable: url, "KEK": KEK})

    assert message.startswith(f"TOKENSVC_{variable}: ")
    assert "hunter2" not in message
    assert "=***" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_URL", "hunter2pw"),  # *_FILE pointed at the password file
        ("DATABASE_URL", "hunter2pw"),
        ("DATABASE_URL", "host=127.0.0.1 password=hunter2pw dbname=x"),  # libpq keywords
        ("DATABASE_URL", "mysql://app@db/app ?password=hunter2pw"),
    ],
)
def test_a_url_setting_that_is_no_url_is_not_shown(variable: str, value: str) -> None:
    """Red team (helper-69): only a URL's password was masked, so a value with no `://` (a
    password file given as the URL file, a libpq keyword string) was echoed whole."""
    message = refusal(**{variable: value, "KEK": KEK})

    assert message.startswith(f"TOKENSVC_{variable}: ")
    assert "hunter2pw" not in message
    assert "not shown" in message


def test_postgresql_needs_a_kek_and_says_which_variables() -> None:
    """Without a KEK a PostgreSQL setup is refused at load, naming TOKENSVC_KEK and _FILE."""
    message = refusal(DATABASE_URL=PG)

    assert "TOKENSVC_KEK or TOKENSVC_KEK_FILE is required with PostgreSQL" in message


def test_a_kek_and_a_kek_file_are_refused_together(tmp_path: Path) -> None:
    """Two sources of one key: refused, rather than one of them silently winning."""
    path = tmp_path / "kek"
    path.write_text(KEK)
    path.chmod(0o600)

    assert "not both" in refusal(KEK=KEK, KEK_FILE=str(path))


@pytest.mark.parametrize(
    ("name", "value"),
    [("KEK", "hunter2-not-base64"), ("PEPPER", "hunter2"), ("ADMIN_PASSWORD", "hunter2")],
)
def test_a_bad_secret_is_named_but_never_shown(name: str, value: str) -> None:
    """The message names the variable and the rule, and hides the value."""
    message = refusal(**{name: value})

    assert message.startswith(f"TOKENSVC_{name}: expected")
    assert "hunter2" not in message


def test_a_secret_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    """TOKENSVC_PEPPER_FILE pointing nowhere names that variable and the path."""
    message = refusal(PEPPER_FILE=str(tmp_path / "none"))

    assert message.startswith("TOKENSVC_PEPPER_FILE must be a readable text file")
    assert str(tmp_path / "none") in message


def test_the_test_password_profile_is_refused_unless_allowed() -> None:
    """CHEAP_FOR_TESTS (8 KiB argon2) is not offered, and refused without the explicit opt-in,
    from the environment and from keywords alike."""
    unknown = refusal(PASSWORD_PROFILE="strong")
    refused = refusal(PASSWORD_PROFILE="cheap_for_tests")

    assert (
        unknown == "TOKENSVC_PASSWORD_PROFILE: expected OWASP or RFC_9106_LOW_MEMORY; got 'strong'"
    )
    assert "TOKENSVC_ALLOW_INSECURE=test-password-profile" in refused
    with pytest.raises(ConfigError, match="for test suites only"):
        Config(password_profile="CHEAP_FOR_TESTS")
    allowed = load(PASSWORD_PROFILE="CHEAP_FOR_TESTS", ALLOW_INSECURE="test-password-profile")
    assert allowed.password_profile == "CHEAP_FOR_TESTS"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "tokensvc.internal"])  # noqa: S104
def test_plain_http_on_a_public_address_is_refused(host: str) -> None:
    """Tokens and passwords in clear text on a network: refused, saying the three ways out."""
    message = refusal(HOST=host)

    assert message.startswith(f"TOKENSVC_HOST={host} without TLS")
    assert "TOKENSVC_TRUSTED_PROXIES" in message and "plain-http" in message


def test_plain_http_is_fine_on_loopback_behind_a_proxy_or_when_allowed(tmp_path: Path) -> None:
    """Loopback, a TLS-terminating proxy (TOKENSVC_TRUSTED_PROXIES), native TLS, or the opt-in."""
    cert = tmp_path / "cert.pem"
    cert.write_text("pem")

    assert load(HOST="::1").host == "::1"
    assert load(HOST="localhost").host == "localhost"
    assert load(HOST="0.0.0.0", TRUSTED_PROXIES="10.0.0.0/8").trusted_proxies == ("10.0.0.0/8",)  # noqa: S104
    assert load(HOST="0.0.0.0", TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(cert)).tls  # noqa: S104
    assert load(HOST="0.0.0.0", ALLOW_INSECURE="plain-http").host == "0.0.0.0"  # noqa: S104


def test_the_command_line_host_is_checked_like_the_variable() -> None:
    """`serve --host 0.0.0.0` cannot bypass the check; the message names --host."""
    config = load()

    with pytest.raises(ConfigError) as refused:
        config.listening(host="0.0.0.0", port=None)  # noqa: S104

    assert refused.value.message.startswith("--host=0.0.0.0 without TLS")
    assert config.listening(host="127.0.0.2", port=9000).port == 9000


def test_unknown_insecure_choices_are_refused() -> None:
    """A misspelt opt-in is an error that lists the choices, not silently nothing."""
    message = refusal(ALLOW_INSECURE="plain_http")

    assert message == (
        "TOKENSVC_ALLOW_INSECURE: expected a comma-separated list of test-password-profile,"
        " plain-http; got 'plain_http'"
    )


def test_durations_name_their_variable() -> None:
    """A duration error says which variable, the accepted forms, and the value."""
    message = refusal(KEY_LIFETIME="1 day")

    assert message == (
        "TOKENSVC_KEY_LIFETIME: expected a duration such as 90s, 15m, 1h30m or 2d, more than 0"
        " and at most 36500d; got '1 day'"
    )
    assert load(KEY_LIFETIME="2d").key_lifetime == timedelta(days=2)


def test_verify_port_takes_a_port_or_off() -> None:
    """TOKENSVC_VERIFY_PORT: a port, or off for no verify listener; anything else is refused."""
    assert load(VERIFY_PORT="9100").verify_listen_port(8080) == 9100
    assert load(VERIFY_PORT="off").verify_listen_port(8080) is None
    assert refusal(VERIFY_PORT="70000").startswith("TOKENSVC_VERIFY_PORT: expected a whole number")


def test_cross_checks_name_both_variables() -> None:
    """Values fine alone but wrong together name both variables."""
    assert refusal(KEY_GENERATE_INTERVAL="2d") == (
        "TOKENSVC_KEY_GENERATE_INTERVAL must be shorter than TOKENSVC_KEY_LIFETIME"
    )
    assert "TOKENSVC_LOGIN_MAX_TTL" in refusal(LOGIN_DEFAULT_TTL="10h", LOGIN_MAX_TTL="9h")


def test_several_problems_are_one_line() -> None:
    """Two bad values: both reported, on one line."""
    message = refusal(PORT="x", LOG_LEVEL="loud")

    assert "TOKENSVC_PORT" in message and "TOKENSVC_LOG_LEVEL" in message
    assert "\n" not in message


def test_keyword_construction_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Config(...) in tests is what its keywords say, whatever TOKENSVC_* the developer exports;
    values are validated all the same, and copies keep the type."""
    monkeypatch.setenv("TOKENSVC_PORT", "1")
    monkeypatch.setenv("TOKENSVC_LOG_LEVEL", "nonsense")

    config = Config(port=9000)

    assert (config.port, config.log_level) == (9000, "info")
    with pytest.raises(ConfigError, match="TOKENSVC_MAX_QUEUE"):
        Config(max_queue=-1)
    with pytest.raises(ConfigError, match="unknown setting 'max_quueue'"):
        Config(max_quueue=1)
    assert config.model_copy(update={"max_queue": 3}).max_queue == 3


@pytest.mark.parametrize("mode", [0o644, 0o606])
def test_a_secret_file_every_user_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    """Code review: only TOKENSVC_KEK_FILE was held to its mode, while
    TOKENSVC_KEK_PREVIOUS_FILE opens every root key not yet resealed (and the pepper, the
    database URL's password, the admin's password are secrets too). Group access is allowed."""
    secret = tmp_path / "pepper"
    secret.write_text("a pepper of at least sixteen bytes")
    secret.chmod(mode)
    message = refusal(PEPPER_FILE=str(secret))
    secret.chmod(0o640)

    assert message.startswith("TOKENSVC_PEPPER_FILE") and "chmod o-rwx" in message
    assert "sixteen" not in message
    assert load(PEPPER_FILE=str(secret)).pepper is not None  # 0640 is accepted


def test_audit_retention_is_off_or_at_least_a_day() -> None:
    """TOKENSVC_AUDIT_RETENTION: kept for ever by default and with `off`; a duration under a day
    (a slip of the unit, `1h` for `1d`) is refused rather than emptying the trail."""
    assert load().audit_retention is None
    assert load(AUDIT_RETENTION="off").audit_retention is None
    assert load(AUDIT_RETENTION="400d").audit_retention == timedelta(days=400)
    assert load(AUDIT_RETENTION="24h").audit_retention == timedelta(days=1)
    assert refusal(AUDIT_RETENTION="1h") == (
        "TOKENSVC_AUDIT_RETENTION: expected off, or a duration such as 90s, 15m, 1h30m or 2d "
        "from 1d to 36500d; got '1h'"
    )
    assert refusal(AUDIT_RETENTION="forever").startswith("TOKENSVC_AUDIT_RETENTION: expected off")
    # Past a hundred years the cut-off (now minus it) leaves the calendar: every round failed.
    assert refusal(AUDIT_RETENTION="999999d").startswith("TOKENSVC_AUDIT_RETENTION: expected")
    assert refusal(TOKEN_RETENTION="999999d").startswith("TOKENSVC_TOKEN_RETENTION: expected")
