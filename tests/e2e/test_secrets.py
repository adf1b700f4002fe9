"""A DSN's password never reaches any command's output or logs, whatever form the DSN takes and
whether or not it parses; a DSN that does not parse gives one line, never a traceback."""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

import pytest

from pgqueue._crypto import generate_key
from pgqueue.settings import Settings, redact_dsn, scrub_secrets
from tests.e2e.worker_app import EXECUTIONS_DDL
from tests.helpers import wait_until
from tests.plugins.processes import Db, RunCli, SpawnWorker

MARKER = "S3cretMarker"

#: DSNs that fail at once, in every form: each must be refused without echoing MARKER.
BROKEN_DSNS = {
    "percent": f"postgresql://someone:{MARKER}%zz@127.0.0.1:1/db",  # un-encoded % in the password
    "ipv6": f"postgresql://someone:{MARKER}@[::1/db",  # malformed IPv6 host
    "at-sign": f"postgresql://someone:{MARKER}@x@127.0.0.1:1/db?connect_timeout=1",  # un-encoded @
    "keywords": f"host=127.0.0.1 port=1 user=someone password={MARKER} dbname=x connect_timeout=1",
    "quoted": f"host=127.0.0.1 port=1 password='{MARKER} x' dbname=x connect_timeout=1",
    "query": f"postgresql://someone@127.0.0.1:1/db?password={MARKER}&connect_timeout=1",
    "sqlalchemy": f"postgresql+psycopg://someone:{MARKER}@127.0.0.1:1/db?connect_timeout=1",
}

#: Every command that takes a DSN, with arguments that get it as far as connecting.
COMMANDS = [
    ["migrate"], ["migrate", "--check"], ["migrate", "--sql"],
    ["enqueue", "t"], ["jobs", "list"], ["jobs", "show", "1"], ["jobs", "retry", "1"], ["jobs", "cancel", "1"],
    ["jobs", "delete", "1"], ["queues", "list"], ["queues", "pause", "q"], ["queues", "purge", "q"],
    ["schedules", "list"], ["schedules", "add", "s", "--cron", "* * * * *", "--task", "t"],
    ["schedules", "remove", "s"], ["prune"], ["stats"], ["health"], ["keys", "rotate"],
    ["audit", "show", "1"], ["audit", "verify"], ["worker", "--app", "worker_app:app"],
    ["scheduler", "--app", "worker_app:app"],
]


def _assert_clean(result_out: str, result_err: str, what: str) -> None:
    assert MARKER not in result_out, f"{what}: password on stdout\n{result_out}"
    assert MARKER not in result_err, f"{what}: password on stderr\n{result_err}"
    assert "Traceback" not in result_err, f"{what}: traceback\n{result_err}"


# On main: "percent" and "ipv6" printed the password (migrate --check, schedules list, worker logs)
# or a traceback; the others are regression guards.
@pytest.mark.parametrize("form", ["percent", "ipv6", "keywords"])
def test_no_command_echoes_the_password_of_a_dsn_it_cannot_use(run_cli: RunCli, form: str) -> None:
    dsn = BROKEN_DSNS[form]
    for command in COMMANDS:
        if command[0] in ("worker", "scheduler") and form not in ("percent", "ipv6"):
            continue  # a DSN that parses: they wait for the database (see the working-worker test)
        # Both ways in: the option, and (for the unparseable forms) the environment.
        ways = [([*command, "--dsn", dsn], None)] + ([(command, dsn)] if form in ("percent", "ipv6") else [])
        for args, env_dsn in ways:
            result = run_cli(args, dsn=env_dsn)
            what = f"{' '.join(command)} ({'env' if env_dsn else '--dsn'}, {form})"
            _assert_clean(result.stdout, result.stderr, what)
            if command != ["migrate", "--sql"]:  # --sql needs no database (it prints DDL)
                assert result.returncode != 0, what
            if command not in (["migrate", "--sql"], ["health"]):  # health reports on stdout
                errors = [line for line in result.stderr.splitlines() if line.startswith("pgqueue: error")]
                assert errors, f"{what}: no one-line error\n{result.stderr}"


def _with_password(dsn: str) -> str:
    # The test server trusts local connections: a password in the DSN is sent only if asked for,
    # so it can carry the marker and still work.
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'root'}:{MARKER}@{parts.hostname}:{parts.port}"))


def test_a_working_worker_and_commands_never_log_the_password(worker_dsn: str, db: Db, run_cli: RunCli,
                                                              spawn_worker: SpawnWorker) -> None:
    dsn = _with_password(worker_dsn)
    db.execute(EXECUTIONS_DDL.encode())
    worker = spawn_worker(dsn)
    for command in (["enqueue", "record"], ["schedules", "list"], ["migrate", "--check"], ["jobs", "list"],
                    ["stats"], ["health"], ["queues", "list"]):
        result = run_cli([*command, "--dsn", dsn])
        _assert_clean(result.stdout, result.stderr, " ".join(command))
        assert result.returncode == 0, (command, result.stderr)
    wait_until(lambda: db.execute("SELECT count(*) FROM pgqueue.jobs WHERE state = 'completed'").fetchone() == (1,),
               timeout=30, message=worker.describe())
    assert worker.stop() == 0
    assert MARKER not in worker.stderr()
    assert MARKER not in worker.stdout_path.read_text()


@pytest.mark.parametrize(("task", "shown"), [
    # A thread the handler starts dies of a ValueError quoting the args.
    ("thread-error", "error in thread ssn-check: uncaught ValueError at "),
    # The handler warns with the args in the message (Python's own printer showed the text).
    ("careless-warning", "pgqueue: warning: UserWarning at "),
])
def test_a_handlers_stray_error_or_warning_prints_its_type_and_place_never_its_message(
        worker_dsn: str, db: Db, run_cli: RunCli, spawn_worker: SpawnWorker, task: str, shown: str) -> None:
    keys = {"PGQUEUE_ENCRYPTION_KEYS": generate_key()}
    worker = spawn_worker(worker_dsn, env=keys)
    enqueued = run_cli(["enqueue", task, "--encrypt", "--args", json.dumps({"ssn": MARKER})],
                       dsn=worker_dsn, env=keys)
    assert enqueued.returncode == 0, enqueued.stderr
    wait_until(lambda: db.execute("SELECT count(*) FROM pgqueue.jobs WHERE state = 'completed'").fetchone() == (1,),
               timeout=30, message=worker.describe())
    assert worker.stop() == 0
    stderr = worker.stderr()
    assert shown in stderr, stderr
    assert MARKER not in stderr
    assert MARKER not in worker.stdout_path.read_text()


def test_settings_repr_and_redaction_never_show_the_password() -> None:
    for dsn in BROKEN_DSNS.values():
        assert MARKER not in repr(Settings(dsn=dsn))
        assert MARKER not in redact_dsn(dsn)
        assert MARKER not in scrub_secrets(f"error talking to {dsn}: boom")
