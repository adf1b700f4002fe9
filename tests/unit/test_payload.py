"""Payload checks that keep jsonb's refusals (NaN, NUL, non-objects, size) from becoming database tracebacks."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from pgqueue._payload import ResultNotSerializable, check_queue_name, encode_args, encode_result
from pgqueue.errors import ArgsNotSerializable, EnqueueError, InvalidQueueName, PayloadTooLarge

LIMIT = 1024 * 1024


def test_args_are_encoded_as_compact_json_that_round_trips() -> None:
    args = {"to": "a@example.com", "n": 3, "nested": {"list": [1, 2.5, None, True]}, "é": "ü"}

    text = encode_args(args, LIMIT)

    assert json.loads(text) == args
    assert " " not in text.replace("a@example.com", "")  # compact separators
    assert "ü" in text  # not \u-escaped, so the size limit counts real bytes


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_because_jsonb_cannot_store_them(value: float) -> None:
    with pytest.raises(ArgsNotSerializable, match="not JSON-serialisable"):
        encode_args({"x": [1, {"deep": value}]}, LIMIT)


@pytest.mark.parametrize("args", [
    {"s": "a\x00b"},
    {"a\x00": 1},
    {"list": ["ok", "\x00"]},
    {"s": "\\\x00"},  # a real backslash followed by a real NUL: the NUL is still there
])
def test_a_nul_character_in_any_string_or_key_is_refused(args: dict[str, Any]) -> None:
    with pytest.raises(ArgsNotSerializable, match="NUL"):
        encode_args(args, LIMIT)


@pytest.mark.parametrize("text", ["\\u0000", "\\\\u0000", "x\\u0000y", "\\\\\\\\u0000"])
def test_backslash_u0000_as_literal_text_is_allowed(text: str) -> None:
    # Python "\\u0000" is six characters: a backslash and "u0000". jsonb stores that happily.
    encoded = encode_args({"a": text}, LIMIT)

    assert json.loads(encoded) == {"a": text}


@pytest.mark.parametrize("args", [["a", "b"], "text", 42, None, ("t",)])
def test_args_that_are_not_a_json_object_are_refused(args: Any) -> None:
    with pytest.raises(ArgsNotSerializable, match="must be a JSON object"):
        encode_args(args, LIMIT)


def test_non_string_keys_are_refused_instead_of_silently_becoming_strings() -> None:
    with pytest.raises(ArgsNotSerializable, match="keys"):
        encode_args({1: "one"}, LIMIT)


@pytest.mark.parametrize("value", [{1, 2}, datetime(2024, 1, 1, tzinfo=UTC), object(), b"bytes"])
def test_values_json_cannot_encode_are_refused_with_a_typed_error(value: Any) -> None:
    with pytest.raises(ArgsNotSerializable):
        encode_args({"v": value}, LIMIT)


def test_circular_args_are_refused_with_a_typed_error() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop

    with pytest.raises(ArgsNotSerializable):
        encode_args({"loop": loop}, LIMIT)


def test_args_exactly_at_the_size_limit_pass_and_one_byte_more_is_refused() -> None:
    overhead = len(encode_args({"s": ""}, LIMIT))  # {"s":""}
    exact = {"s": "x" * (100 - overhead)}

    assert len(encode_args(exact, 100).encode()) == 100
    with pytest.raises(PayloadTooLarge, match="101 bytes, over the 100-byte limit"):
        encode_args({"s": "x" * (101 - overhead)}, 100)


def test_the_size_limit_counts_utf8_bytes_not_characters() -> None:
    # 40 characters of two bytes each: 80 bytes of payload plus the {"s":""} overhead.
    with pytest.raises(PayloadTooLarge):
        encode_args({"s": "é" * 40}, 60)


def test_payload_errors_are_enqueue_errors() -> None:
    assert issubclass(ArgsNotSerializable, EnqueueError)
    assert issubclass(PayloadTooLarge, EnqueueError)
    assert issubclass(InvalidQueueName, EnqueueError)


def test_results_of_any_json_type_are_encoded() -> None:
    assert encode_result(None) == "null"
    assert encode_result([1, "two"]) == '[1,"two"]'
    assert json.loads(encode_result({"ok": True})) == {"ok": True}


@pytest.mark.parametrize("result", [math.nan, {"v": math.inf}, "nul\x00", {1, 2}])
def test_results_jsonb_refuses_raise_result_not_serializable(result: Any) -> None:
    with pytest.raises(ResultNotSerializable, match="handler result is not JSON-serialisable") as info:
        encode_result(result)

    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["default", "emails", "a", "q-1_b", "x" * 63])
def test_valid_queue_names_are_accepted(name: str) -> None:
    assert check_queue_name(name) == name


@pytest.mark.parametrize("name", ["", "a b", "Emails", "x" * 64, "é", "q.1", "q\n", 5, None])
def test_invalid_queue_names_are_refused_naming_the_rule(name: Any) -> None:
    with pytest.raises(InvalidQueueName, match=r"must match \[a-z0-9_-\]\{1,63\}"):
        check_queue_name(name)


def test_a_value_json_cannot_encode_is_named_by_its_argument() -> None:
    # "Object of type datetime is not JSON serializable" alone leaves the caller guessing which of
    # a task's arguments to convert.
    with pytest.raises(ArgsNotSerializable, match=r"argument 'when': Object of type datetime"):
        encode_args({"to": "a@example.com", "when": datetime(2024, 1, 1, tzinfo=UTC)}, LIMIT)
    with pytest.raises(ArgsNotSerializable, match=r"argument 'ratio': Out of range float"):
        encode_args({"ratio": math.nan}, LIMIT)
