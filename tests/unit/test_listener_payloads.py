"""The cancel channel's payloads as the listener reads them. No database: anyone allowed to NOTIFY
may send anything on ``pgqueue_cancel``, so a malformed payload must be dropped, never raise."""

from __future__ import annotations

import pytest

from pgqueue._worker.listener import Listener


def _listener(seen: list[tuple[int, str]]) -> Listener:
    return Listener("postgresql://unused", None, poll_seconds=5, wake=lambda: None, stopping=lambda: True,
                    worker_id="w", cancel=lambda job_id, token: seen.append((job_id, token)))


def test_a_cancel_payload_names_the_job_and_its_lease_token() -> None:
    seen: list[tuple[int, str]] = []
    _listener(seen)._cancelled("42:0f8b")
    assert seen == [(42, "0f8b")]


@pytest.mark.parametrize("payload", ["²:0f8b", "9" * 5000 + ":0f8b", "42", ":0f8b", "x:y", ""])
def test_a_malformed_cancel_payload_is_ignored(payload: str) -> None:
    seen: list[tuple[int, str]] = []
    _listener(seen)._cancelled(payload)  # "²" passed isdigit() and then raised in int()
    assert seen == []
