"""Durations for people, shared by the CLI's tables and the admin API's messages."""

from __future__ import annotations


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
