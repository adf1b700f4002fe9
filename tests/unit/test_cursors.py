"""The data layer never runs SQL through a connection's own ``cursor()`` or ``execute()``, whose
cursor class is the application's choice (``cursor_factory=RawCursor`` refused every query of
pgqueue's): it goes through ``pgqueue._db.cursors``. No database; the behaviour itself is tested
in tests/integration/test_enqueue.py and test_admin_api.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pgqueue._db

DATA_LAYER = Path(pgqueue._db.__file__).parent
# Modules whose statements only ever run on connections pgqueue opened itself for a throwaway
# database (bench, soak, scratch databases), never on one an application lends it.
OWN_CONNECTIONS_ONLY = {"bench.py", "soak.py", "databases.py"}


def _connection_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"cursor", "execute", "executemany"}):
            continue
        receiver = ast.unparse(node.func.value)
        if receiver.split(".")[-1] in {"conn", "connection", "own", "aconn"}:
            found.append(f"{path.name}:{node.lineno}: {receiver}.{node.func.attr}(...)")
    return found


def test_the_data_layer_runs_no_statement_on_the_connections_own_cursor_class() -> None:
    modules = [p for p in sorted(DATA_LAYER.rglob("*.py")) if p.name not in OWN_CONNECTIONS_ONLY | {"cursors.py"}]
    assert len(modules) > 10

    offending = [call for path in modules for call in _connection_calls(path)]

    assert offending == [], "use pgqueue._db.cursors (cursor_on, execute_on and async twins):\n" + "\n".join(offending)
