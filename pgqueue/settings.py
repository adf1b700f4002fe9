"""Settings: every knob has an environment variable and a default that serves a small deployment.

Resolution order for the database: explicit ``dsn``, then ``PGQUEUE_DSN``, then ``DATABASE_URL``,
then the embedded server (unless ``PGQUEUE_EMBEDDED=0``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pgqueue._humanize import whole_number
from pgqueue.errors import ConfigurationError, InvalidDSN

_SQLALCHEMY_PREFIX = re.compile(r"^postgres(?:ql)?\+[a-z0-9_]+://", re.IGNORECASE)


def _env_float(env: Mapping[str, str], name: str, default: float, *, zero: bool = False) -> float:
    """``name``'s value: a finite number greater than zero (``zero``: or equal to it)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} must be a number") from None
    # nan fails both tests: it compares false with everything (it passed a bare `value <= 0`).
    in_range = value >= 0 if zero else value > 0
    if not (in_range and value < math.inf):
        rule = "zero or more" if zero else "greater than zero"
        raise ConfigurationError(f"{name}={raw!r} must be {rule} (and finite)")
    return value


def parse_prefetch(raw: str, name: str = "--prefetch") -> int | None:
    """``auto`` (or empty) -> None, ``N`` -> N (0: off).

    Raises:
        ConfigurationError: anything else.
    """
    value = raw.strip().lower()
    if value in {"", "auto"}:
        return None
    number = whole_number(value)
    if number is None:
        raise ConfigurationError(f"{name} {raw!r} must be 'auto' or a whole number >= 0 (0: off)")
    return number


def _env_prefetch(env: Mapping[str, str]) -> int | None:
    return parse_prefetch(env.get("PGQUEUE_PREFETCH") or "", "PGQUEUE_PREFETCH")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

#: The longest duration :func:`parse_duration` takes (100 years, as the longest delay): a cutoff
#: ``now() - interval`` much further back overflows PostgreSQL's timestamps. Longer means 'never'.
MAX_DURATION_SECONDS = 100 * 365 * 86400.0

#: Retention defaults of the contract (seconds): completed 1 day, failed 7 days, audit rows 30 days.
DEFAULT_RETAIN_COMPLETED = 86400.0
DEFAULT_RETAIN_FAILED = 7 * 86400.0
DEFAULT_RETAIN_AUDIT = 30 * 86400.0


def parse_duration(raw: str, name: str) -> float | None:
    """A retention age as an operator writes it: ``90``, ``90s``, ``15m``, ``12h``, ``1d``, ``2w``,
    or ``never`` (None: keep forever).

    Args:
        raw: the text from the environment or the command line.
        name: the variable or option it came from, for the error message.

    Returns:
        Seconds, or None for ``never``.

    Raises:
        ConfigurationError: anything else, in one line naming ``name``.

    Example:
        >>> parse_duration("12h", "PGQUEUE_RETAIN_COMPLETED")
        43200.0
    """
    text = raw.strip().lower()
    if text == "never":
        return None
    match = _DURATION.match(text)
    if match is None:
        raise ConfigurationError(
            f"{name} {raw!r} must be a duration such as 90, 90s, 15m, 12h, 1d, 2w, or 'never'")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DURATION_SECONDS:
        raise ConfigurationError(f"{name} {raw!r} is longer than 100 years: use 'never' to keep them forever")
    return seconds


def _env_duration(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return parse_duration(raw, name)


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name}={raw!r} must be 1/0, true/false, yes/no or on/off")


@dataclass(frozen=True)
class Settings:
    """Runtime settings, read from the environment by :meth:`from_env`.

    Attributes:
        dsn: the database, or None to resolve it later (see :func:`resolve_dsn`).
        lease_seconds: how long a worker's claim on its running jobs lasts without a heartbeat.
        poll_seconds: fallback poll interval when no notification arrives.
        shutdown_grace_seconds: how long SIGTERM waits for running jobs before releasing them
            (0: release them at once).
        log_format: ``console`` or ``json`` (used by the CLI only).
        max_payload_bytes: upper bound on a job's serialised args.
        max_result_bytes: upper bound on a handler's serialised result (``PGQUEUE_MAX_RESULT_BYTES``);
            a larger result fails the attempt for good with ``ResultTooLarge``.
        listen_dsn: a direct PostgreSQL DSN used only for the worker's LISTEN session, for when
            ``dsn`` goes through a pooler in transaction mode (PgBouncer), where LISTEN cannot work.
        poll_only: the worker never LISTENs and finds jobs by polling every ``poll_seconds``.
        retain_completed: seconds a completed job is kept after it finished (None: forever).
        retain_failed: seconds a failed or cancelled job is kept after it finished (None: forever).
            Cancelled jobs follow this one: like failed jobs, they are kept for inspection.
        retain_audit: seconds ``pgqueue.job_events`` rows are kept (None: forever).
        prune_interval_seconds: how often the workers' maintenance leader prunes.
        prefetch: the most jobs a worker's pool claims ahead of its free slots
            (``PGQUEUE_PREFETCH``, ``pgqueue worker --prefetch``): None ("auto") = the pool's
            slots but at least 32, 0 = off. Whatever the cap, the buffer only holds what the slots
            finish within 20 ms at the recent pace, so slow jobs are never claimed ahead.
    """

    dsn: str | None = None
    lease_seconds: float = 30.0
    poll_seconds: float = 5.0
    shutdown_grace_seconds: float = 30.0
    log_format: str = "console"
    max_payload_bytes: int = 1024 * 1024
    max_result_bytes: int = 1024 * 1024
    encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    encrypt_all: bool = False
    listen_dsn: str | None = field(default=None, repr=False)
    poll_only: bool = False
    retain_completed: float | None = DEFAULT_RETAIN_COMPLETED
    retain_failed: float | None = DEFAULT_RETAIN_FAILED
    retain_audit: float | None = DEFAULT_RETAIN_AUDIT
    prune_interval_seconds: float = 60.0
    prefetch: int | None = None

    def __repr__(self) -> str:
        # The generated repr would print the DSN whole, password included, wherever settings are
        # logged or shown in a traceback.
        fields = self.__dataclass_fields__
        shown = {name: getattr(self, name) for name in fields if fields[name].repr}
        shown["dsn"] = None if self.dsn is None else redact_dsn(self.dsn)
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``env`` (default ``os.environ``); keyword overrides win when not None."""
        env = os.environ if env is None else env
        log_format = env.get("PGQUEUE_LOG_FORMAT", "console") or "console"
        if log_format not in {"console", "json"}:
            raise ConfigurationError(f"PGQUEUE_LOG_FORMAT={log_format!r} must be 'console' or 'json'")
        keys = tuple(k.strip() for k in env.get("PGQUEUE_ENCRYPTION_KEYS", "").split(",") if k.strip())
        settings = cls(
            dsn=env.get("PGQUEUE_DSN") or env.get("DATABASE_URL") or None,
            lease_seconds=_env_float(env, "PGQUEUE_LEASE_SECONDS", 30.0),
            poll_seconds=_env_float(env, "PGQUEUE_POLL_SECONDS", 5.0),
            # 0: release running jobs at once on SIGTERM (a preStop hook that already drained them).
            shutdown_grace_seconds=_env_float(env, "PGQUEUE_SHUTDOWN_GRACE_SECONDS", 30.0, zero=True),
            log_format=log_format,
            encryption_keys=keys,
            encrypt_all=_env_bool(env, "PGQUEUE_ENCRYPT_ALL", False),
            listen_dsn=normalize_dsn(env["PGQUEUE_LISTEN_DSN"]) if env.get("PGQUEUE_LISTEN_DSN") else None,
            poll_only=_env_bool(env, "PGQUEUE_POLL_ONLY", False),
            retain_completed=_env_duration(env, "PGQUEUE_RETAIN_COMPLETED", DEFAULT_RETAIN_COMPLETED),
            retain_failed=_env_duration(env, "PGQUEUE_RETAIN_FAILED", DEFAULT_RETAIN_FAILED),
            retain_audit=_env_duration(env, "PGQUEUE_RETAIN_AUDIT", DEFAULT_RETAIN_AUDIT),
            prune_interval_seconds=_env_float(env, "PGQUEUE_PRUNE_INTERVAL_SECONDS", 60.0),
            max_result_bytes=int(_env_float(env, "PGQUEUE_MAX_RESULT_BYTES", 1024 * 1024)),
            prefetch=_env_prefetch(env),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(settings, **given) if given else settings


def normalize_dsn(dsn: str) -> str:
    """Accept both libpq URLs and SQLAlchemy's ``postgresql+psycopg://`` form; return a libpq one."""
    dsn = dsn.strip()
    if not dsn:
        raise InvalidDSN("the DSN is empty")
    if _SQLALCHEMY_PREFIX.match(dsn):
        dsn = "postgresql://" + dsn.split("://", 1)[1]
    elif "://" in dsn and not re.match(r"^postgres(?:ql)?://", dsn, re.IGNORECASE):
        scheme = dsn.split("://", 1)[0]
        raise InvalidDSN(f"DSN scheme {scheme!r} is not PostgreSQL: use postgresql://user@host/db")
    return dsn


# password=... in a key/value DSN or a URL's query string, quoted or not.
_KEYWORD_PASSWORD = re.compile(r"""(?i)\b(password|passwd|pgpassword)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'"]+)""")
# scheme://user:secret@ (greedy up to the last @ before whitespace: a password may hold an
# un-encoded @, and hiding too much is the safe way to be wrong).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/?#@]*):\S*@")


@functools.lru_cache(maxsize=64)
def dsn_secrets(dsn: str) -> tuple[str, ...]:
    """The password(s) written in ``dsn``, raw and percent-decoded, found without parsing it
    (a DSN that does not parse must still have its password hidden)."""
    found: list[str] = []
    for match in _KEYWORD_PASSWORD.finditer(dsn):
        value = match.group(3)
        found += [value, value.strip("'")]
    for match in re.finditer(r"(?i)[a-z][a-z0-9+.-]*://[^\s:/?#@]*:(\S*)@", dsn):
        found.append(match.group(1))
    decoded = []
    for value in found:
        with contextlib.suppress(UnicodeDecodeError):
            decoded.append(unquote(value, errors="strict"))
    # Very short values would blank out unrelated text; they are also no secret worth the name.
    return tuple(sorted({value for value in found + decoded if len(value) >= 3}, key=len, reverse=True))


def _configured_dsns() -> list[str]:
    """The DSNs this process was given: the environment, and ``--dsn``/``--listen-dsn`` on its command line."""
    dsns = [os.environ.get(name, "") for name in ("PGQUEUE_DSN", "DATABASE_URL", "PGQUEUE_LISTEN_DSN")]
    argv = sys.argv
    for index, arg in enumerate(argv):
        if arg in ("--dsn", "--listen-dsn") and index + 1 < len(argv):
            dsns.append(argv[index + 1])
        elif arg.startswith(("--dsn=", "--listen-dsn=")):
            dsns.append(arg.split("=", 1)[1])
    return [dsn for dsn in dsns if dsn]


def configured_secrets() -> tuple[str, ...]:
    """The passwords of the DSNs this process was configured with (see :func:`scrub_secrets`)."""
    return tuple(secret for dsn in _configured_dsns() for secret in dsn_secrets(dsn))


def may_hold_secret(text: str, secrets: tuple[str, ...]) -> bool:
    """False only when :func:`scrub_secrets` would return ``text`` unchanged (``secrets`` from
    :func:`configured_secrets`): both its patterns need a ``=`` or an ``@``. A log processor runs
    this on every value of every line; the full scrub costs ~10 us a value."""
    return "=" in text or "@" in text or any(secret in text for secret in secrets)


def scrub_secrets(text: str, *dsns: str) -> str:
    """``text`` with every password hidden: ``password=...`` and ``user:...@`` by pattern, and the
    passwords of ``dsns`` and of the DSNs this process was configured with wherever they appear
    (a driver's error may quote one alone, e.g. "invalid percent-encoded token"). Never depends on
    a DSN parsing."""
    if not text:
        return text
    text = _KEYWORD_PASSWORD.sub(r"\1\2***", text)
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    for dsn in (*dsns, *_configured_dsns()):
        for secret in dsn_secrets(dsn):
            text = text.replace(secret, "***")
    return text


def redact_dsn(dsn: str) -> str:
    """Render a DSN for logs and messages without its password (also one that does not parse)."""
    try:
        shown = _redact_parsed(dsn)
    except ValueError:  # urlsplit refuses it (a malformed IPv6 host): the patterns still apply
        shown = dsn
    return scrub_secrets(shown, dsn)


def _redact_parsed(dsn: str) -> str:
    if "://" not in dsn:
        # A quoted value may hold spaces: password='a b' must go whole, not up to the space.
        return re.sub(r"password\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S+)", "password=***", dsn)
    parts = urlsplit(dsn)
    # libpq also takes the password as a query parameter: postgresql://u@h/db?password=...
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    if parts.password is None:
        return dsn if query == parts.query else urlunsplit(parts._replace(query=query))
    # The raw host part, not .hostname/.port: those reject what libpq accepts (several hosts,
    # a port list) and a bad port must still be rendered, not crash the error message.
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}:***@{host}" if parts.username else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def embedded_allowed(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return _env_bool(env, "PGQUEUE_EMBEDDED", True)


def pgqueue_home(env: Mapping[str, str] | None = None) -> Path | None:
    """PGQUEUE_HOME when set, else None (the embedded module picks its default)."""
    env = os.environ if env is None else env
    raw = env.get("PGQUEUE_HOME")
    return Path(raw).expanduser() if raw else None


@dataclass(frozen=True)
class ResolvedDSN:
    dsn: str
    embedded: bool


def resolve_dsn(explicit: str | None = None, env: Mapping[str, str] | None = None) -> ResolvedDSN:
    """Find the database: explicit, PGQUEUE_DSN, DATABASE_URL, then the embedded server.

    Raises:
        ConfigurationError: ``explicit`` is blank, or no DSN is configured and ``PGQUEUE_EMBEDDED=0``
            forbids the fallback.
        EmbeddedServerError: the embedded server could not be started.
    """
    env = os.environ if env is None else env
    if explicit is not None and not explicit.strip():
        # `--dsn "$DB"` with DB unset: falling back would run the command on another database.
        raise ConfigurationError("the DSN given is empty: pass a postgresql:// DSN, or none at all to use "
                                 "PGQUEUE_DSN, DATABASE_URL or the embedded server")
    for candidate in (explicit, env.get("PGQUEUE_DSN"), env.get("DATABASE_URL")):
        if candidate:
            return ResolvedDSN(normalize_dsn(candidate), embedded=False)
    if not embedded_allowed(env):
        raise ConfigurationError(
            "no database configured: set --dsn or PGQUEUE_DSN (PGQUEUE_EMBEDDED=0 forbids the embedded server)"
        )
    from pgqueue import _embedded  # imported lazily: production never needs it

    return ResolvedDSN(_embedded.ensure_server(pgqueue_home(env)), embedded=True)
