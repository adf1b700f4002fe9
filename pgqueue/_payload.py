"""JSON encoding for args and results, with the checks PostgreSQL's jsonb would otherwise turn
into a database traceback: NaN/Infinity, NUL characters, non-object args, oversized payloads."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pgqueue.errors import ArgsNotSerializable, InvalidQueueName, PayloadTooLarge

QUEUE_NAME = re.compile(r"^[a-z0-9_-]{1,63}$")
# json.dumps escapes a NUL character as \u0000; an even run of backslashes before it means the
# backslashes are escaped and the "u0000" is plain text.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_ESCAPED_NUL_GROUPS = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


class _UnsupportedValue(ValueError):
    pass


#: How deeply args and results may nest (objects and arrays within each other). Deeper values
#: overflow Python's encoder (RecursionError) or PostgreSQL's parser stack long before they are
#: useful; a job's args are keyword arguments, not a tree to be walked.
MAX_JSON_DEPTH = 64


def _depth(value: Any) -> int:
    """How deeply ``value`` nests dicts and lists (0 for a scalar), walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        level += 1
        if level > deepest:
            deepest = level
            if deepest > MAX_JSON_DEPTH:
                return deepest
        stack.extend((child, level) for child in children)
    return deepest


# One encoder for every call: json.dumps with any non-default option builds a new JSONEncoder per
# call, a third of the cost of encoding a small args dict.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _dumps(value: Any) -> str:
    try:
        text = _ENCODER.encode(value)
    except ValueError as exc:  # NaN / Infinity, or a circular reference
        raise _UnsupportedValue(str(exc)) from None
    except TypeError as exc:  # an object json cannot encode
        raise _UnsupportedValue(str(exc)) from None
    except RecursionError:
        raise _UnsupportedValue(f"values must not nest more than {MAX_JSON_DEPTH} levels deep") from None
    # Counting brackets (in C) bounds the depth from above: only a value that might be too deep
    # is walked.
    if (text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH):
        raise _UnsupportedValue(f"values must not nest more than {MAX_JSON_DEPTH} levels deep")
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise _UnsupportedValue("strings must not contain the NUL character \\u0000 (jsonb refuses it)")
    if not text.isascii():
        # A lone surrogate ("\\ud800") is a valid Python str but not UTF-8: the driver cannot send
        # it, and the failure would surface far from here (in the worker's ack, as a dead task).
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _UnsupportedValue(
                f"strings must not hold a lone surrogate {exc.object[exc.start:exc.end]!a} "
                "(strings must be valid Unicode, UTF-8 encodable)") from None
    return text


def _culprit(args: dict[str, Any]) -> str:
    """``"argument 'when': "`` for the first argument whose value cannot be encoded on its own, else
    ``""``. Only called once encoding failed: the usual enqueue never pays for it."""
    for key, value in args.items():
        try:
            _dumps(value)
        except _UnsupportedValue:
            return f"argument {key!r}: "
    return ""


def encode_args(args: Any, max_bytes: int) -> str:
    """Serialise job args to the JSON text stored in ``jobs.args``.

    Raises:
        ArgsNotSerializable: args are not a JSON object, or contain values jsonb refuses.
        PayloadTooLarge: the encoded args exceed ``max_bytes``.
    """
    if type(args) is not dict:  # a plain dict (the usual case) needs neither the ABC check nor a copy
        if not isinstance(args, Mapping):
            raise ArgsNotSerializable(f"job args must be a JSON object (a dict), got {type(args).__name__}")
        args = dict(args)
    for key in args:
        if type(key) is not str and not isinstance(key, str):
            raise ArgsNotSerializable("job args keys must all be strings")
    try:
        text = _dumps(args)
    except _UnsupportedValue as exc:
        raise ArgsNotSerializable(f"job args are not JSON-serialisable: {_culprit(args)}{exc}") from None
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise PayloadTooLarge(f"job args are {size} bytes, over the {max_bytes}-byte limit")
    return text


class ResultNotSerializable(ValueError):
    """A handler returned something jsonb refuses; running it again would return the same."""


class ResultTooLarge(ResultNotSerializable):
    """A handler's result is over the result size limit (``PGQUEUE_MAX_RESULT_BYTES``)."""


#: Default upper bound on a handler's serialised result, like args' ``max_payload_bytes``: jsonb
#: itself refuses about 256 MB, long after such a row has hurt every query that reads it.
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024


def encode_result(value: Any, max_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> str:
    """Serialise a handler's return value for ``jobs.result``.

    Raises:
        ResultNotSerializable: jsonb would refuse it.
        ResultTooLarge: it is over ``max_bytes`` once encoded.
    """
    if value is None:
        return "null"  # what most handlers return: no encoder call
    try:
        text = _dumps(value)
    except _UnsupportedValue as exc:
        raise ResultNotSerializable(f"handler result is not JSON-serialisable: {exc}") from None
    # len(str) <= UTF-8 size <= 4 * len(str): only a result near the limit needs encoding to measure.
    if len(text) > max_bytes or (4 * len(text) > max_bytes and len(text.encode("utf-8")) > max_bytes):
        size = len(text.encode("utf-8"))
        raise ResultTooLarge(f"handler result is {size} bytes, over the {max_bytes}-byte limit "
                             "(PGQUEUE_MAX_RESULT_BYTES)")
    return text


def safe_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: lone surrogates become '?', NUL becomes the text ``\\x00``."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def encode_json(value: Any) -> str:
    """Serialise an internal value (errors, tags). Error text comes from handlers and may hold
    anything a Python str can, so what jsonb would refuse is replaced rather than raised."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    # jsonb refuses \u0000: keep it readable as the text \x00 (an escaped backslash is left alone).
    return _ESCAPED_NUL_GROUPS.sub(r"\1\\\\x00", text) if "\\u0000" in text else text


# Queue names already checked: an application uses a handful, and enqueue checks one per job.
_CHECKED_QUEUES: set[str] = set()
_MAX_CHECKED_QUEUES = 1024


def check_queue_name(queue: str) -> str:
    if type(queue) is str and queue in _CHECKED_QUEUES:
        return queue
    # fullmatch: with match, "$" also matches before a trailing newline, which the database's
    # CHECK constraint then refuses with a traceback instead of this typed error.
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise InvalidQueueName(f"queue name {queue!r} must match [a-z0-9_-]{{1,63}}")
    if type(queue) is str and len(_CHECKED_QUEUES) < _MAX_CHECKED_QUEUES:
        _CHECKED_QUEUES.add(queue)
    return queue


#: Longest task name, in characters: what ``@app.task``, schedules and SQL's ``pgqueue.enqueue`` take.
MAX_TASK_NAME_LENGTH = 255
#: Longest ``unique_key``, in UTF-8 bytes: the unique index refuses entries over about 2.7 kB
#: (a "program limit" error), long before a key of that size is sensible.
MAX_UNIQUE_KEY_BYTES = 512


def is_task_name(task: object) -> bool:
    """Whether ``task`` can name a job: a str of 1 to MAX_TASK_NAME_LENGTH characters that
    PostgreSQL text can hold."""
    return isinstance(task, str) and 0 < len(task) <= MAX_TASK_NAME_LENGTH and is_storable_text(task)


def is_storable_text(text: str) -> bool:
    """False for a str PostgreSQL text cannot hold: a NUL character or a lone surrogate."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
