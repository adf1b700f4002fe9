"""Flow-limit options checked before anything runs: a worker's slots, a task's limits, a job's group."""

from __future__ import annotations

import pytest

import pgqueue
from pgqueue._worker.pools import Pool, build_pools
from pgqueue.errors import ConfigurationError, InvalidEnqueueOption, InvalidQueueName


def test_named_slots_get_pools_of_their_own_and_bare_queues_share_the_concurrency() -> None:
    pools = build_pools(["critical=20", "bulk=2", "emails", "sms"], concurrency=10)

    assert [(p.queues, p.capacity) for p in pools] == [(["critical"], 20), (["bulk"], 2), (["emails", "sms"], 10)]


def test_no_queues_is_one_pool_for_every_queue_and_a_mapping_works_like_the_cli() -> None:
    assert [(p.queues, p.capacity) for p in build_pools(None, 7)] == [(None, 7)]
    assert [(p.queues, p.capacity) for p in build_pools({"critical": 3, "bulk": None}, 5)] == [
        (["critical"], 3), (["bulk"], 5)]


@pytest.mark.parametrize(("queues", "error"), [
    (["bulk=0"], ValueError), (["bulk=-1"], ValueError), (["bulk=x"], ValueError), (["bulk", "bulk=2"], ValueError),
    (["Bad=2"], InvalidQueueName), ({"bulk": True}, ValueError),
])
def test_bad_slots_are_refused(queues: list[str], error: type[Exception]) -> None:
    with pytest.raises(error):
        build_pools(queues, concurrency=10)


def test_a_single_string_of_queues_is_refused_instead_of_read_letter_by_letter() -> None:
    # Worker(app, queues="emails") used to serve the queues 'e', 'm', 'a', 'i', 'l' and 's' (a str is
    # a sequence of str), so none of its jobs ever ran.
    with pytest.raises(ValueError, match=r"queues must be a list of queue names, not a single string.*\['emails'\]"):
        build_pools("emails", concurrency=5)


def test_a_pool_counts_only_its_own_jobs_still_running() -> None:
    pool = Pool(["bulk"], 2, claimed={1, 2})

    assert pool.free(running={2, 3}) == 1
    assert pool.claimed == {2}


def test_task_limits_are_stored_on_the_task() -> None:
    app = pgqueue.App("postgresql://unused")

    @app.task(name="sync-record", concurrency=3, rate="100/30s", group_concurrency=1)
    def sync(job: pgqueue.Job) -> None: ...

    assert (sync.concurrency, sync.rate_limit, sync.rate_period_seconds, sync.group_concurrency) == (3, 100, 30, 1)
    assert sync.rate == "100/30s"
    assert sync.limited


@pytest.mark.parametrize("options", [{"concurrency": 0}, {"concurrency": True}, {"group_concurrency": -1},
                                     {"rate": "10/fortnight"}, {"rate": "0/s"}])
def test_bad_task_limits_are_configuration_errors(options: dict[str, object]) -> None:
    app = pgqueue.App("postgresql://unused")
    with pytest.raises(ConfigurationError, match="task 'bad'"):
        app.task(name="bad", **options)(lambda job: None)  # type: ignore[call-overload]


@pytest.mark.parametrize("group", ["", "x" * 256, "a\x00b", 42])
def test_a_bad_group_is_refused_before_anything_is_written(group: object) -> None:
    app = pgqueue.App("postgresql://unused")
    with pytest.raises(InvalidEnqueueOption, match="group"):
        app._new_job("t", {}, group=group)  # type: ignore[arg-type]
