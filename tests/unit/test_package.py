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
