"""``pgqueue worker --metrics-port``: real worker processes serve Prometheus metrics; the outcome
counters and the run-time histogram move as their acker writes outcomes, and depth, lag and live
workers are read from the database at each scrape."""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.rows import TupleRow

import pgqueue
from tests.helpers import wait_until
from tests.plugins.processes import SpawnWorker

Db = psycopg.Connection[TupleRow]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports nothing listens on now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count - 1 > 65535:
            continue
        taken = False
        for port in range(first + 1, first + count):
            with socket.socket() as other:
                try:
                    other.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
        if not taken:
            return first
    raise AssertionError("no free consecutive ports")


def scrape(port: int) -> Samples | None:
    """Every sample at http://127.0.0.1:port/metrics, or None while no HTTP server answers there.

    A port can be taken meanwhile by another test's non-HTTP service (the suite runs in parallel):
    its answer is no metrics endpoint either.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
        return None
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_until(port: int, check: Callable[[Samples], bool], message: str) -> Samples:
    """Scrape until ``check`` holds (30 s at most) and return those samples."""
    def ready() -> Samples | None:
        samples = scrape(port)
        return samples if samples is not None and check(samples) else None

    found = wait_until(ready, timeout=30, message=message)
    assert found is not None
    return found


def test_a_worker_serves_counters_that_move_as_jobs_finish_and_database_gauges(
        worker_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    port = free_ports(1)
    app = pgqueue.App(worker_dsn)
    app.enqueue_many(None, [pgqueue.JobSpec("noop", {}, queue="mq") for _ in range(5)])
    worker = spawn_worker(worker_dsn, concurrency=4, args=["--metrics-port", str(port), "--metrics-host", "127.0.0.1"])

    first = scrape_until(port, lambda s: value(s, "pgqueue_jobs_total", queue="mq", task="noop",
                                                outcome="completed") == 5, "five completions counted")
    app.enqueue_many(None, [pgqueue.JobSpec("noop", {}, queue="mq") for _ in range(3)]
                     + [pgqueue.JobSpec("no-such-task", {}, queue="mq", max_attempts=1)])
    later = scrape_until(port, lambda s: value(s, "pgqueue_jobs_total", queue="mq", task="noop",
                                                outcome="completed") == 8
                         and value(s, "pgqueue_jobs_total", queue="mq", task="no-such-task", outcome="failed") == 1,
                         "three more completions and the failure counted")
    db.execute("INSERT INTO pgqueue.queues (name, paused) VALUES ('held', true)")
    app.enqueue_many(None, [pgqueue.JobSpec("noop", {}, queue="held") for _ in range(2)])
    gauges = scrape_until(port, lambda s: value(s, "pgqueue_queue_depth", queue="held", state="available") == 2,
                          "the paused queue's depth")

    assert value(first, "pgqueue_job_duration_seconds_count", queue="mq", task="noop") == 5
    assert value(later, "pgqueue_job_duration_seconds_count", queue="mq", task="noop") == 8
    assert value(later, "pgqueue_job_duration_seconds_bucket", queue="mq", task="noop", le="+Inf") == 8
    assert value(later, "pgqueue_job_duration_seconds_sum", queue="mq", task="noop") > 0
    assert value(later, "pgqueue_jobs_total", queue="mq", task="noop", outcome="failed") == 0
    assert value(gauges, "pgqueue_workers") == 1
    assert value(gauges, "pgqueue_queue_depth", queue="mq", state="failed") == 1
    assert value(gauges, "pgqueue_queue_lag_seconds", queue="held") > 0
    assert worker.stop() == 0


def test_under_processes_each_child_serves_its_own_port_and_counts_only_its_own_outcomes(
        worker_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    port = free_ports(3)  # the third must be free too: no third child may serve it
    supervisor = spawn_worker(worker_dsn, processes=2, concurrency=2,
                              args=["--metrics-port", str(port), "--metrics-host", "127.0.0.1"])
    wait_until(lambda: scrape(port) is not None and scrape(port + 1) is not None, timeout=30,
               message="both children serve metrics")
    pgqueue.App(worker_dsn).enqueue_many(None, [pgqueue.JobSpec("noop", {}) for _ in range(40)])

    def total() -> list[float] | None:
        counts = []
        for child_port in (port, port + 1):
            samples = scrape(child_port)
            if samples is None:
                return None
            counts.append(value(samples, "pgqueue_jobs_total", queue="default", task="noop", outcome="completed"))
        return counts if sum(counts) == 40 else None

    counts = wait_until(total, timeout=30, message="the children's counters add up to the 40 jobs")

    assert counts is not None
    assert sum(counts) == 40  # each outcome counted once, by the child that wrote it
    assert scrape(port + 2) is None
    assert supervisor.stop() == 0


def listening_addresses(pid: int, port: int) -> list[str]:
    """The addresses process ``pid``'s own sockets listen on at ``port``, from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port and fields[9] in inodes:  # 0A: LISTEN
                # The kernel writes each 32-bit word of the address in host (little-endian) order.
                raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
                found.append(socket.inet_ntop(family, raw))
    return found


@pytest.mark.parametrize(("args", "env", "expected"), [
    ([], {}, "127.0.0.1"),  # no auth on this port: loopback unless asked
    ([], {"PGQUEUE_METRICS_HOST": "0.0.0.0"}, "0.0.0.0"),
    (["--metrics-host", "0.0.0.0"], {}, "0.0.0.0"),
])
def test_the_metrics_port_listens_on_loopback_unless_another_host_is_chosen(
        worker_dsn: str, spawn_worker: SpawnWorker, args: list[str], env: dict[str, str], expected: str) -> None:
    port = free_ports(1)
    worker = spawn_worker(worker_dsn, args=["--metrics-port", str(port), *args], env=env)
    wait_until(lambda: scrape(port) is not None, timeout=30, message="the worker serves metrics on 127.0.0.1")

    assert listening_addresses(worker.pid, port) == [expected]
    assert worker.stop() == 0


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc: Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state: the parent's pid
            found.append(int(entry.name))
    return sorted(found)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "127.0.0.1"),
    ({"PGQUEUE_METRICS_HOST": "0.0.0.0"}, "0.0.0.0"),
])
def test_under_processes_each_child_listens_on_the_chosen_host_and_the_supervisor_on_none(
        worker_dsn: str, spawn_worker: SpawnWorker, env: dict[str, str], expected: str) -> None:
    port = free_ports(2)
    supervisor = spawn_worker(worker_dsn, processes=2, concurrency=1, args=["--metrics-port", str(port)], env=env)
    wait_until(lambda: scrape(port) is not None and scrape(port + 1) is not None, timeout=30,
               message="both children serve metrics")
    children = children_of(supervisor.pid)

    assert len(children) == 2, children
    # Child i listens on PORT+i, on the host chosen (loopback by default) and nowhere else.
    assert sorted(address for child in children for child_port in (port, port + 1)
                  for address in listening_addresses(child, child_port)) == [expected, expected]
    assert listening_addresses(supervisor.pid, port) == listening_addresses(supervisor.pid, port + 1) == []
    assert supervisor.stop() == 0


def test_a_busy_metrics_port_is_a_one_line_error(worker_dsn: str, spawn_worker: SpawnWorker) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        worker = spawn_worker(worker_dsn, args=["--metrics-port", str(port), "--metrics-host", "127.0.0.1"])
        code = worker.wait(timeout=30)

    assert code == 1
    errors = [line for line in worker.stderr().splitlines() if not line.startswith("{")]  # JSON logs aside
    assert errors == [f"pgqueue: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"], errors


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--metrics-port", "0"], 2, "--metrics-port"),  # click's own range check
    (["--metrics-port", "65535", "--processes", "2"], 2, "needs ports up to 65536"),  # pgqueue's: a usage error too
])
def test_bad_metrics_ports_are_refused_before_anything_starts(worker_dsn: str, db: Db, spawn_worker: SpawnWorker,
                                                             args: list[str], code: int, message: str) -> None:
    worker = spawn_worker(worker_dsn, args=args)
    assert worker.wait(timeout=30) == code
    assert message in worker.stderr()
    assert db.execute("SELECT count(*) FROM pgqueue.workers").fetchone() == (0,)


def test_a_worker_still_serves_its_own_counters_while_the_database_is_unreachable() -> None:
    from pgqueue._db.sessions import connect
    from pgqueue.metrics import Metrics

    metrics = Metrics(lambda: connect("postgresql://root:s3cret@127.0.0.1:1/nowhere", autocommit=True))
    metrics.observe_job("mq", "noop", "completed", 0.01)

    body, _ = metrics.exposition()  # what a worker's --metrics-port serves (a 500 when it raises)

    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert 'pgqueue_jobs_total{outcome="completed",queue="mq",task="noop"} 1.0' in body.decode()
    assert "pgqueue_queue_depth" not in names  # the database's gauges wait for the database
