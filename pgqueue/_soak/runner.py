"""One soak run, start to finish: scratch database, processes, enqueuer and chaos, the drain, the
books, and the clean-up (which always runs)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pgqueue import _embedded, _migrate
from pgqueue._db import soak as soak_db
from pgqueue._db.databases import drop_database, recreate_database
from pgqueue._soak.books import Scoreboard, check_books
from pgqueue._soak.chaos import DATABASE_RESTART, KINDS, Chaos, plan_faults
from pgqueue._soak.enqueuer import Enqueuer
from pgqueue._soak.processes import Child, child_env, scheduler_child, worker_child

LEASE_SECONDS = 2.0
POLL_SECONDS = 0.5
_STOP_TIMEOUT = 25.0  # the children's shutdown grace (10 s) and then some


@dataclass(frozen=True)
class SoakOptions:
    dsn: str | None  # the server the scratch database is created on; None with private_server
    jobs: int
    minutes: float
    seed: int
    workers: int
    schedulers: int
    concurrency: int = 10
    private_server: bool = False
    drain_seconds: float = 120.0
    keep_database: bool = False


class ProgressSink(Protocol):
    def phase(self, description: str, total: float | None) -> None: ...
    def update(self, completed: float, status: str) -> None: ...
    def note(self, text: str) -> None: ...


def run_soak(options: SoakOptions, progress: ProgressSink) -> Scoreboard:
    log_dir = Path(tempfile.mkdtemp(prefix="pgqueue-soak-"))
    progress.note(f"child process logs: {log_dir}")
    board = Scoreboard()
    board.info.update({"started_at": datetime.now(UTC).isoformat(timespec="seconds"), "seed": options.seed,
                       "options": {k: v for k, v in asdict(options).items() if k != "dsn"}, "log_dir": str(log_dir)})
    home: Path | None = None
    server_dsn = options.dsn
    database = f"pgqueue_soak_{os.getpid()}"
    children: list[Child] = []
    chaos: Chaos | None = None
    created = False
    try:
        if options.private_server:
            progress.phase("starting a private PostgreSQL server", None)
            home = Path(tempfile.mkdtemp(dir="/tmp", prefix="pgqueue-soak-server-"))
            home.chmod(0o755)  # as root the server runs as the service user, who must enter it
            server_dsn = _embedded.ensure_server(home)
        if server_dsn is None:
            raise ValueError("a DSN is required without --private-server")
        progress.phase("creating and migrating the scratch database", None)
        dsn = recreate_database(server_dsn, database)
        created = True
        _migrate.upgrade(dsn)
        soak_db.create_executions_table(dsn)
        board.info["database"] = f"{database} on {'a private server' if home else 'the given server'}"

        env = child_env(dsn, lease_seconds=LEASE_SECONDS, poll_seconds=POLL_SECONDS)
        workers = [worker_child(i, env, log_dir, options.concurrency) for i in range(options.workers)]
        schedulers = [scheduler_child(i, env, log_dir) for i in range(options.schedulers)]
        children = [*workers, *schedulers]

        duration = options.minutes * 60
        restart: Callable[[float], None] | None = None
        if home is not None:
            private_home = home

            def restart(pause: float) -> None:
                _embedded.stop(private_home)
                time.sleep(pause)
                _embedded.ensure_server(private_home)

        plan = plan_faults(options.seed, duration, restart_database=restart is not None)
        started = time.monotonic()
        enqueuer = Enqueuer(dsn, options.jobs, duration, started)
        chaos = Chaos(plan, dsn=dsn, workers=workers, schedulers=schedulers, restart_database=restart,
                      started=started)
        enqueuer.start()
        chaos.start()
        with soak_db.referee(dsn) as referee:
            counts = referee.progress

            def status(terminal_open: tuple[int, int] | None) -> str:
                done = f"{terminal_open[0]} done, {terminal_open[1]} open" if terminal_open else "database unreachable"
                faults = sum(chaos.log.injected.values())
                return f"{enqueuer.confirmed}/{options.jobs} enqueued, {done}, {faults} faults"

            progress.phase(f"soak ({options.minutes:g} min, seed {options.seed})", duration)
            while (elapsed := time.monotonic() - started) < duration:
                progress.update(elapsed, status(counts()))
                time.sleep(1.0)
            progress.update(duration, status(counts()))

            # Chaos stops first, then the enqueuer finishes its stream.
            chaos.calm_down()
            progress.phase("finishing the enqueue", None)
            enqueuer.join(timeout=180)
            if enqueuer.is_alive():
                enqueuer.stop()
            if home is not None:
                _embedded.ensure_server(home)
            # Schedulers stop before the drain, or cron would keep adding jobs to it.
            chaos.unwatch(schedulers)
            scheduler_codes = {c.name: c.stop(_STOP_TIMEOUT) for c in schedulers}
            drain_started = time.monotonic()
            first = counts()
            progress.phase("draining", float(first[1]) if first else None)
            while time.monotonic() - drain_started < options.drain_seconds:
                now = counts()
                if now is not None:
                    progress.update((first[1] if first else 0) - now[1], status(now))
                    if now[1] == 0:
                        break
                time.sleep(0.5)
            drained_in = time.monotonic() - drain_started
            progress.phase("stopping workers", None)
            chaos.unwatch(workers)
            worker_codes = {c.name: c.stop(_STOP_TIMEOUT) for c in workers}
            chaos.finish()

        progress.phase("checking the books", None)
        with soak_db.books(dsn) as books:
            check_books(books, board, confirmed=enqueuer.confirmed, killed_pids=chaos.log.killed_pids)
        board.zero("unexpected_exits", "child processes that exited on their own", len(chaos.log.unexpected_exits))
        bad_exits = {name: code for name, code in {**scheduler_codes, **worker_codes}.items() if code != 0}
        board.zero("unclean_stops", "children that did not stop cleanly on SIGTERM", len(bad_exits))
        board.equal("enqueuer_shortfall", "jobs the enqueuer could not enqueue", options.jobs - enqueuer.confirmed,
                    0, "0")
        board.faults = {kind: chaos.log.injected.get(kind, 0) for kind in KINDS
                        if kind != DATABASE_RESTART or restart is not None}
        board.faults["backends_terminated"] = chaos.log.backends_terminated
        board.info.update({
            "faults_planned": len(plan),
            "killed_pids": len(chaos.log.killed_pids),
            "enqueue_batches_retried": enqueuer.retried_batches,
            "drained_in_seconds": round(drained_in, 1),
            "child_starts": sum(c.starts for c in children),
        })
        if home is None:
            board.notes.append("database restarts not injected: they need --private-server")
        board.notes.extend(f"unexpected exit: {line}" for line in chaos.log.unexpected_exits)
        board.notes.extend(f"unclean stop: {name} exited with {code}" for name, code in bad_exits.items())
        board.notes.extend(f"chaos error: {line}" for line in chaos.log.errors)
        if enqueuer.error:
            board.notes.append(f"enqueuer error: {enqueuer.error}")
        return board
    finally:
        if chaos is not None and chaos.is_alive():
            chaos.unwatch(children)
            chaos.finish()
        for child in children:
            child.kill()
            child.stop(0)
        if created and server_dsn is not None and not options.keep_database:
            with contextlib.suppress(Exception):
                drop_database(server_dsn, database)
        if home is not None:
            with contextlib.suppress(Exception):
                _embedded.stop(home)
            if not options.keep_database:
                shutil.rmtree(home, ignore_errors=True)
