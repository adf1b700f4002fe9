"""Retention settings: the duration parser shared by the environment and `pgqueue prune`. No database."""

from __future__ import annotations

import pytest

from pgqueue._retention import RetentionPolicy
from pgqueue.errors import ConfigurationError
from pgqueue.settings import Settings, parse_duration


@pytest.mark.parametrize(("raw", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("12h", 43200.0), ("1d", 86400.0), ("2w", 1209600.0),
    ("0", 0.0), ("1.5h", 5400.0), (" 3D ", 259200.0), ("never", None), ("NEVER", None),
])
def test_durations_are_read_in_seconds_and_never_means_keep_forever(raw: str, seconds: float | None) -> None:
    assert parse_duration(raw, "--x") == seconds


@pytest.mark.parametrize("raw", ["", "soon", "-1d", "1y", "1d2h", "d", "1 day", "inf", "nan", "1e3"])
def test_anything_else_is_a_one_line_configuration_error_naming_the_option(raw: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_duration(raw, "--completed-older-than")

    message = str(info.value)
    assert message.startswith("--completed-older-than ")
    assert repr(raw) in message
    assert "\n" not in message


@pytest.mark.parametrize("raw", ["99999999w", "36501d", "3153600001"])
def test_a_duration_over_100_years_is_refused_before_it_overflows_the_databases_timestamps(raw: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^--x '{raw}' is longer than 100 years: use 'never'"):
        parse_duration(raw, "--x")

    assert parse_duration("36500d", "--x") == 36500 * 86400.0


def test_retention_defaults_are_the_contracts() -> None:
    settings = Settings.from_env({})

    assert settings.retain_completed == 86400.0
    assert settings.retain_failed == 7 * 86400.0
    assert settings.retain_audit == 30 * 86400.0
    assert settings.prune_interval_seconds == 60.0
    assert RetentionPolicy.from_settings(settings) == RetentionPolicy(86400.0, 7 * 86400.0, 30 * 86400.0)


def test_retention_is_read_from_the_environment() -> None:
    settings = Settings.from_env({"PGQUEUE_RETAIN_COMPLETED": "15m", "PGQUEUE_RETAIN_FAILED": "never",
                                  "PGQUEUE_RETAIN_AUDIT": "2w", "PGQUEUE_PRUNE_INTERVAL_SECONDS": "5"})

    assert settings.retain_completed == 900.0
    assert settings.retain_failed is None
    assert settings.retain_audit == 1209600.0
    assert settings.prune_interval_seconds == 5.0
    assert Settings.from_env({"PGQUEUE_RETAIN_COMPLETED": ""}).retain_completed == 86400.0


@pytest.mark.parametrize("name", ["PGQUEUE_RETAIN_COMPLETED", "PGQUEUE_RETAIN_FAILED", "PGQUEUE_RETAIN_AUDIT"])
def test_a_bad_retention_variable_is_named_in_the_error(name: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{name} '7 days' must be a duration"):
        Settings.from_env({name: "7 days"})


def test_a_bad_prune_interval_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="PGQUEUE_PRUNE_INTERVAL_SECONDS"):
        Settings.from_env({"PGQUEUE_PRUNE_INTERVAL_SECONDS": "0"})
