"""Names and text stored by whoever could enqueue (task names, tags, errors) never reach the
terminal as raw control characters: an ANSI escape in a task name is shown escaped."""

from __future__ import annotations

from pgqueue import App
from tests.plugins.processes import Db, RunCli

HOSTILE = "evil\x1b[2J\x1b]0;owned\x07\r\u202e"


def test_listing_and_showing_jobs_escape_control_characters(dsn: str, db: Db, run_cli: RunCli) -> None:
    job_id = App(dsn).enqueue(None, f"task-{HOSTILE}", {"note": HOSTILE}, tags=[f"tag-{HOSTILE}"])
    db.execute("UPDATE pgqueue.jobs SET last_error = jsonb_build_object('type', 'E', 'message', %s::text, "
               "'traceback', %s::text) WHERE id = %s", [HOSTILE, f"line1\n{HOSTILE}", job_id])
    for command in (["jobs", "list"], ["jobs", "show", str(job_id)], ["stats"], ["queues", "list"],
                    ["audit", "show", str(job_id)]):
        result = run_cli(command, dsn=dsn)
        assert result.returncode == 0, (command, result.stderr)
        for char in ("\x1b", "\x07", "\r", "\u202e"):
            assert char not in result.stdout, (command, char, result.stdout)
            assert char not in result.stderr, (command, char, result.stderr)
    shown = run_cli(["jobs", "show", str(job_id)], dsn=dsn).stdout
    assert "evil\\x1b[2J" in shown  # escaped, still readable


def test_a_stored_timestamp_python_cannot_hold_does_not_break_listings(dsn: str, db: Db, run_cli: RunCli) -> None:
    # Enqueue refuses such run_at values now; a row written before, or with SQL, must still list.
    late, early = App(dsn).enqueue(None, "t", {}), App(dsn).enqueue(None, "t", {})
    db.execute("UPDATE pgqueue.jobs SET state = 'scheduled', run_at = now() + interval '20000 years' WHERE id = %s",
               [late])
    db.execute("UPDATE pgqueue.jobs SET state = 'scheduled', run_at = '4000-01-01 BC' WHERE id = %s", [early])
    for command in (["jobs", "list"], ["jobs", "list", "--json"], ["jobs", "show", str(late)],
                    ["jobs", "show", str(early)]):
        result = run_cli(command, dsn=dsn)
        assert result.returncode == 0, (command, result.stderr)
    listing = run_cli(["jobs", "list"], dsn=dsn).stdout
    assert "9999-12-31" in listing
    assert "0001-01-01" in listing
