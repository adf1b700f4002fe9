"""Settings: environment parsing, DSN resolution and normalisation, and DSN redaction. No database."""

from __future__ import annotations

import pytest

from pgqueue import App
from pgqueue.errors import ConfigurationError, InvalidDSN
from pgqueue.settings import Settings, embedded_allowed, normalize_dsn, redact_dsn, resolve_dsn


def test_settings_defaults_serve_a_small_deployment() -> None:
    settings = Settings.from_env({})

    assert settings.dsn is None
    assert settings.lease_seconds == 30.0
    assert settings.poll_seconds == 5.0
    assert settings.shutdown_grace_seconds == 30.0
    assert settings.log_format == "console"
    assert settings.encryption_keys == ()
    assert settings.encrypt_all is False


def test_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env({
        "PGQUEUE_DSN": "postgresql://u@db/app",
        "PGQUEUE_LEASE_SECONDS": "12.5",
        "PGQUEUE_POLL_SECONDS": "2",
        "PGQUEUE_SHUTDOWN_GRACE_SECONDS": "45",
        "PGQUEUE_LOG_FORMAT": "json",
        "PGQUEUE_ENCRYPTION_KEYS": " new-key , old-key ,,",
        "PGQUEUE_ENCRYPT_ALL": "yes",
    })

    assert settings.dsn == "postgresql://u@db/app"
    assert settings.lease_seconds == 12.5
    assert settings.poll_seconds == 2.0
    assert settings.shutdown_grace_seconds == 45.0
    assert settings.log_format == "json"
    assert settings.encryption_keys == ("new-key", "old-key")  # newest first, blanks dropped
    assert settings.encrypt_all is True


def test_encryption_keys_never_appear_in_the_settings_repr() -> None:
    settings = Settings.from_env({"PGQUEUE_ENCRYPTION_KEYS": "s3cr3t-key-material"})

    assert "s3cr3t-key-material" not in repr(settings)


def test_pgqueue_dsn_wins_over_database_url() -> None:
    env = {"PGQUEUE_DSN": "postgresql://u@first/db", "DATABASE_URL": "postgresql://u@second/db"}

    assert Settings.from_env(env).dsn == "postgresql://u@first/db"
    assert Settings.from_env({"DATABASE_URL": "postgresql://u@second/db"}).dsn == "postgresql://u@second/db"


def test_explicit_overrides_win_over_the_environment_and_none_means_keep() -> None:
    settings = Settings.from_env({"PGQUEUE_LEASE_SECONDS": "9"}, lease_seconds=2.0, poll_seconds=None)

    assert settings.lease_seconds == 2.0
    assert settings.poll_seconds == 5.0


def test_a_shutdown_grace_of_zero_is_accepted_it_releases_running_jobs_at_once() -> None:
    assert Settings.from_env({"PGQUEUE_SHUTDOWN_GRACE_SECONDS": "0"}).shutdown_grace_seconds == 0.0


def test_empty_environment_values_take_the_default() -> None:
    assert Settings.from_env({"PGQUEUE_LEASE_SECONDS": "", "PGQUEUE_LOG_FORMAT": ""}).lease_seconds == 30.0


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PGQUEUE_LEASE_SECONDS", "soon", "must be a number"),
    ("PGQUEUE_LEASE_SECONDS", "0", "must be greater than zero"),
    ("PGQUEUE_POLL_SECONDS", "-1", "must be greater than zero"),
    ("PGQUEUE_LEASE_SECONDS", "nan", "must be greater than zero"),
    ("PGQUEUE_POLL_SECONDS", "inf", "must be greater than zero"),
    ("PGQUEUE_MAX_RESULT_BYTES", "inf", "must be greater than zero"),
    ("PGQUEUE_SHUTDOWN_GRACE_SECONDS", "x", "must be a number"),
    ("PGQUEUE_SHUTDOWN_GRACE_SECONDS", "-1", "must be zero or more"),
    ("PGQUEUE_SHUTDOWN_GRACE_SECONDS", "nan", "must be zero or more"),
    ("PGQUEUE_LOG_FORMAT", "xml", "must be 'console' or 'json'"),
    ("PGQUEUE_ENCRYPT_ALL", "maybe", "must be 1/0"),
])
def test_invalid_environment_values_raise_a_configuration_error_naming_the_variable(
        name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        Settings.from_env({name: value})

    assert name in str(info.value)


@pytest.mark.parametrize(("given", "expected"), [
    ("postgresql+psycopg://u:p@h:5433/db?sslmode=require", "postgresql://u:p@h:5433/db?sslmode=require"),
    ("postgresql+psycopg2://u@h/db", "postgresql://u@h/db"),
    ("postgres+psycopg://u@h/db", "postgresql://u@h/db"),
    ("POSTGRESQL+PSYCOPG://u@h/db", "postgresql://u@h/db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("postgres://u@h/db", "postgres://u@h/db"),
    ("  postgresql://u@h/db\n", "postgresql://u@h/db"),
    ("host=h dbname=db user=u", "host=h dbname=db user=u"),
])
def test_sqlalchemy_and_libpq_dsns_normalise_to_a_libpq_dsn(given: str, expected: str) -> None:
    assert normalize_dsn(given) == expected


@pytest.mark.parametrize("dsn", ["", "   ", "mysql://u@h/db", "sqlite:///tmp/x.db"])
def test_empty_or_non_postgresql_dsns_are_refused(dsn: str) -> None:
    with pytest.raises(InvalidDSN):
        normalize_dsn(dsn)


@pytest.mark.parametrize(("dsn", "secret"), [
    ("postgresql://alice:hunter2@db.example.com:5432/app", "hunter2"),
    ("postgresql://alice:p%40ss@db/app", "p%40ss"),
    ("postgresql://:onlypass@db/app", "onlypass"),
    ("host=db user=alice password=hunter2 dbname=app", "hunter2"),
    ("host=db password = hunter2 dbname=app", "hunter2"),
    ("host=db password='hunter two' dbname=app", "two"),
    ("postgresql://alice@db/app?sslmode=require&password=hunter2", "hunter2"),
])
def test_redact_dsn_hides_the_password_in_every_dsn_form(dsn: str, secret: str) -> None:
    shown = redact_dsn(dsn)

    assert secret not in shown
    assert "***" in shown
    assert "db" in shown  # still says which server


def test_redact_dsn_keeps_user_host_port_and_database() -> None:
    assert redact_dsn("postgresql://alice:hunter2@db.example.com:6432/app?sslmode=require") == (
        "postgresql://alice:***@db.example.com:6432/app?sslmode=require")


def test_redact_dsn_leaves_a_dsn_without_password_unchanged() -> None:
    assert redact_dsn("postgresql://alice@db/app") == "postgresql://alice@db/app"
    assert redact_dsn("host=db user=alice") == "host=db user=alice"


def test_resolve_dsn_prefers_explicit_then_pgqueue_dsn_then_database_url() -> None:
    env = {"PGQUEUE_DSN": "postgresql://u@env/db", "DATABASE_URL": "postgresql://u@url/db"}

    assert resolve_dsn("postgresql+psycopg://u@explicit/db", env).dsn == "postgresql://u@explicit/db"
    assert resolve_dsn(None, env).dsn == "postgresql://u@env/db"
    assert resolve_dsn(None, {"DATABASE_URL": "postgresql+psycopg://u@url/db"}).dsn == "postgresql://u@url/db"
    assert resolve_dsn(None, env).embedded is False


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_explicit_dsn_is_refused_instead_of_falling_back_to_another_database(blank: str) -> None:
    env = {"PGQUEUE_DSN": "postgresql://u@env/db"}
    with pytest.raises(ConfigurationError, match="the DSN given is empty"):
        resolve_dsn(blank, env)
    with pytest.raises(ConfigurationError, match="the DSN given is empty"):
        App(blank)


def test_no_dsn_with_pgqueue_embedded_0_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="PGQUEUE_EMBEDDED=0"):
        resolve_dsn(None, {"PGQUEUE_EMBEDDED": "0"})


def test_pgqueue_embedded_0_does_not_get_in_the_way_of_a_configured_dsn() -> None:
    assert resolve_dsn(None, {"PGQUEUE_EMBEDDED": "0", "PGQUEUE_DSN": "postgresql://u@h/db"}).dsn == (
        "postgresql://u@h/db")


@pytest.mark.parametrize(("value", "allowed"), [
    (None, True), ("", True), ("1", True), ("true", True), ("0", False), ("false", False), ("off", False),
])
def test_embedded_fallback_is_allowed_unless_pgqueue_embedded_says_no(value: str | None, allowed: bool) -> None:
    env = {} if value is None else {"PGQUEUE_EMBEDDED": value}

    assert embedded_allowed(env) is allowed
