"""MkDocs hook: publish ``sql/README.md``, the SQL reference, as the page ``reference/sql.md``.

``sql/README.md`` stays the one copy: it sits beside ``schema.sql`` and ``roles.sql``, and every
schema change updates it there. Its relative links point at files beside it (``roles.sql``,
``reports/``), which are not pages of this site: they become links into the repository, so the
build never depends on those files, and a link that leaves the SQL folder cannot break it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

SOURCE = Path(__file__).resolve().parents[2] / "sql" / "README.md"
PAGE = "reference/sql.md"
# A Markdown link (not an image) whose target is relative: no scheme, no in-page anchor.
_RELATIVE_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    base = f"{(config.repo_url or '').rstrip('/')}/blob/main/sql/"
    text = _RELATIVE_LINK.sub(lambda m: f"[{m[1]}]({base}{m[2]})", SOURCE.read_text(encoding="utf-8"))
    files.append(File.generated(config, PAGE, content=text))
    return files
