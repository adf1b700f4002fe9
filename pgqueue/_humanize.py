"""Values for people, shared by the CLI, the admin API's messages and the dashboard: durations, and
JSON output (``--json``, the HTTP API) of what the database returns."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID


def json_default(value: Any) -> Any:
    """``json.dumps``' ``default`` for database values: ISO 8601 times, numbers for decimals."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


#: More digits than any whole number pgqueue takes (a bigint has 19): longer text is refused
#: before int() reads it (int() refuses over 4,300 digits, and is slow well below that).
_MAX_DIGITS = 30


def whole_number(text: str) -> int | None:
    """``text`` as a non-negative whole number written in ASCII digits, or None.

    Not ``str.isdigit()``: it also accepts ``²`` and other digits that ``int()`` then refuses with
    a ValueError (a 500 where a request deserves a 400).
    """
    if not text or len(text) > _MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def format_seconds(seconds: float | None) -> str:
    """A duration for people: ``42s``, ``3m 20s``, ``5h 2m``, ``2d 3h``."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


# C0 controls (but tab and newline), DEL, C1 controls (U+009B is a one-character CSI), the
# line/paragraph separators, and the bidirectional overrides and isolates ("Trojan Source").
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNPRINTABLE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, multiline: bool = True) -> str:
    """``text`` safe for a terminal: control characters (an ANSI escape in a task name or a tag, a
    carriage return that overwrites a line) are shown escaped (``\\x1b``), never sent raw.

    Args:
        multiline: keep newlines and tabs (tracebacks, multi-line messages); False escapes them too
            (a table cell, one log line).
    """
    pattern = _UNPRINTABLE if multiline else _UNPRINTABLE_LINE
    return pattern.sub(_escape, text) if pattern.search(text) else text


def raised_at(exc: BaseException) -> str:
    """`` at FILE:LINE`` of the frame that raised ``exc`` (a SyntaxError: the offending line), or ``""``.

    Never the message: error lines built on it may not quote a job's payload.
    """
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
