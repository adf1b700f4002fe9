"""The only place SQL text enters Python: named blocks from ``queries/*.sql``, loaded once.

Each ``.sql`` file holds blocks that start with ``-- name: <identifier>``. Each file has a
NamedTuple listing its block names, beside the store that runs them (``JobQueries`` in
``jobs.py`` for ``jobs.sql``...); a missing or extra block fails at import time, so a typo can
never reach a database.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import TypeVar

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)

T = TypeVar("T", bound=tuple[str, ...])


def _parse(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        blocks[match.group(1)] = body
    return blocks


def load_queries(shape: type[T], filename: str) -> T:
    """Load ``filename``'s named blocks into an instance of the NamedTuple ``shape``."""
    text = resources.files("pgqueue._db").joinpath("queries", filename).read_text(encoding="utf-8")
    blocks = _parse(text)
    fields: tuple[str, ...] = shape._fields  # type: ignore[attr-defined]
    missing = set(fields) - set(blocks)
    extra = set(blocks) - set(fields)
    if missing or extra:
        raise RuntimeError(f"{filename}: missing blocks {sorted(missing)}, unexpected blocks {sorted(extra)}")
    return shape(*(blocks[name] for name in fields))
