"""Pattern-level redaction and terminal escaping: neither depends on a DSN parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgqueue._humanize import printable
from pgqueue.settings import Settings, configured_secrets, dsn_secrets, may_hold_secret, redact_dsn, scrub_secrets

SECRET = "pw-Secret-42"


@pytest.mark.parametrize("dsn", [
    f"postgresql://u:{SECRET}@h/db",
    f"postgresql://u:{SECRET}%zz@h/db",          # un-encoded %: libpq refuses it
    f"postgresql://u:{SECRET}@[::1/db",          # malformed IPv6: urlsplit raises
    f"postgresql://u:{SECRET}@x@h:5432/db",      # un-encoded @
    f"postgresql://u:{SECRET}@h1,h2:5433/db?target_session_attrs=read-write",
    f"postgresql://u@h/db?sslmode=require&password={SECRET}",
    f"host=h user=u password={SECRET} dbname=db",
    f"host=h password = '{SECRET} with spaces' dbname=db",
    f"postgresql+psycopg://u:{SECRET}@h/db",
])
def test_every_dsn_form_is_redacted_and_its_password_found(dsn: str) -> None:
    assert SECRET not in redact_dsn(dsn)
    assert SECRET not in scrub_secrets(f"could not connect to {dsn}: refused")
    assert SECRET not in repr(Settings(dsn=dsn))
    assert any(SECRET in secret for secret in dsn_secrets(dsn))


def test_a_password_quoted_alone_by_a_driver_error_is_hidden_too() -> None:
    dsn = f"postgresql://u:{SECRET}%zz@h/db"
    assert scrub_secrets(f'invalid percent-encoded token: "{SECRET}%zz"', dsn) == \
        'invalid percent-encoded token: "***"'


@given(st.text())
def test_printable_never_lets_a_control_character_through(text: str) -> None:
    shown = printable(text, multiline=False)
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF for ch in shown)
    assert printable(shown, multiline=False) == shown  # escaping is stable: nothing left to escape


def test_printable_keeps_newlines_in_multiline_text_and_escapes_ansi() -> None:
    assert printable("a\n\x1b[31mb\u202e") == "a\n\\x1b[31mb\\u202e"


@given(st.text(max_size=80) | st.sampled_from(["password=x1y2", "u:s3cret@host", "key = 'abc def'", "s3cretpw here"]))
def test_the_log_fast_path_skips_only_values_the_scrub_would_leave_unchanged(text: str) -> None:
    # The CLI's log processor scrubs a value only when may_hold_secret says it could need it.
    import os

    previous = os.environ.get("PGQUEUE_DSN")
    os.environ["PGQUEUE_DSN"] = "postgresql://app:s3cretpw@db.internal/app"
    try:
        secrets = configured_secrets()
        assert "s3cretpw" in secrets
        if not may_hold_secret(text, secrets):
            assert scrub_secrets(text) == text
        else:
            assert "s3cretpw" not in scrub_secrets(text)
    finally:
        if previous is None:
            os.environ.pop("PGQUEUE_DSN", None)
        else:
            os.environ["PGQUEUE_DSN"] = previous


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_a_logged_traceback_shows_neither_a_password_nor_the_frames_variables(
        log_format: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    import structlog

    from pgqueue.cli._logging import configure_logging

    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)  # no handler left on pytest's stream
    saved = structlog.get_config()
    try:
        configure_logging(log_format)
        dsn = f"postgresql://u:{SECRET}@h/db"  # a local of the failing frame, and in its message
        args = {"ssn": "078-05-1120"}  # noqa: F841 - a local a renderer with show_locals would print
        try:
            raise RuntimeError(f"cannot use {dsn}")
        except RuntimeError as exc:
            structlog.get_logger("t").error("web.internal_error", exc_info=exc)
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err

    assert "RuntimeError: cannot use postgresql://u:***@h/db" in err.replace("\\n", "\n")
    assert SECRET not in err
    assert "078-05-1120" not in err
