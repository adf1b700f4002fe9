"""What ``import pgqueue`` alone gives: the public modules the documentation calls as
``pgqueue.admin.cancel_job(...)`` and the like. Run in a fresh interpreter, where no other import
has loaded them already. No database."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("name", ["pgqueue.errors.JobFailed", "pgqueue.admin.cancel_job",
                                  "pgqueue.schedules.add_schedule"])
def test_a_documented_public_module_is_reachable_after_import_pgqueue(name: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import pgqueue; print({name}.__name__)"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == name.rsplit(".", 1)[1]


def test_pgqueue_priority_names_exactly_the_priorities_resolve_priority_accepts() -> None:
    # The Literal is what type checkers accept, PRIORITIES what runs: a name added to one only
    # would be refused by mypy yet valid, or type-check yet raise InvalidPriority.
    import typing

    import pgqueue
    from pgqueue.tasks import PRIORITIES, PriorityName, resolve_priority

    assert set(typing.get_args(PriorityName)) == set(PRIORITIES)
    assert typing.get_args(pgqueue.Priority) == (int, PriorityName)
    assert [resolve_priority(name) for name in typing.get_args(PriorityName)] == [0, 25, 100, 200]
