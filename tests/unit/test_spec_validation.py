"""enqueue_many validates a batch's shared options once: each job must come out exactly as if its
spec had been validated alone, bad specs included, and encryption must never be skipped."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pgqueue import App, Job, JobSpec
from pgqueue._crypto import generate_key
from pgqueue._db.jobs import NewJob
from pgqueue._tracing import TRACE_KEY
from pgqueue.settings import Settings

DSN = "postgresql://nobody@127.0.0.1:1/none"  # never connected to: validation only


def make_app() -> App:
    app = App(DSN, settings=Settings(dsn=DSN, encryption_keys=(generate_key(),), max_payload_bytes=200))

    @app.task(name="plain", max_attempts=7, queue="mail")
    def plain(job: Job, **_: Any) -> None: ...

    @app.task(name="sealed", encrypt=True)
    def sealed(job: Job, **_: Any) -> None: ...

    return app


def one_by_one(app: App, specs: list[JobSpec]) -> list[Any]:
    """What validating each spec alone gives: its NewJob, or (type, message) of its error."""
    outcomes: list[Any] = []
    for spec in specs:
        try:
            outcomes.append(app._spec_job(spec))
        except Exception as exc:  # noqa: BLE001 - the error is the outcome compared
            outcomes.append((type(exc), str(exc)))
            break  # the batch stops at its first bad spec
    return outcomes


def together(app: App, specs: list[JobSpec]) -> list[Any]:
    outcomes: list[Any] = []
    jobs = app._spec_jobs(specs)
    while True:
        try:
            outcomes.append(next(jobs))
        except StopIteration:
            return outcomes
        except Exception as exc:  # noqa: BLE001
            outcomes.append((type(exc), str(exc)))
            return outcomes


def comparable(outcome: Any) -> Any:
    # Ciphertexts differ on every call (fresh nonce): compare that there is one, not its bytes.
    if isinstance(outcome, NewJob):
        return (outcome.task, outcome.queue, outcome.priority, outcome.args, outcome.args_encrypted is not None,
                outcome.max_attempts, outcome.run_at, outcome.delay, outcome.unique_key, outcome.tags,
                outcome.group_key)
    return outcome


# Few values per option, so that specs often share their checks; each option has values that
# compare equal across types (True == 1, 2.0 == 2) and bad values.
specs_strategy = st.lists(st.builds(
    JobSpec,
    task=st.sampled_from(["plain", "plain", "sealed", "unknown", "a\x00b"]),
    args=st.sampled_from([{"i": 1}, {"i": 2}, {}, {"s": "x" * 300}, {"bad": float("nan")}, []]),
    queue=st.sampled_from([None, None, "mail", "Bad Queue"]),
    priority=st.sampled_from([None, None, 1, True, "high", "nonsense"]),
    max_attempts=st.sampled_from([None, None, 2, 2.0, 1, True]),
    encrypt=st.sampled_from([None, None, False, True]),
), max_size=8)


@settings(max_examples=500, deadline=None)
@given(specs_strategy)
def test_each_job_is_what_validating_its_spec_alone_gives(specs: list[JobSpec]) -> None:
    app = make_app()
    assert [comparable(o) for o in together(app, specs)] == [comparable(o) for o in one_by_one(app, specs)]


def test_an_encrypted_spec_after_plaintext_ones_of_the_same_task_is_still_sealed() -> None:
    app = make_app()
    specs = [JobSpec("plain", {"i": 1}), JobSpec("plain", {"i": 2}), JobSpec("plain", {"i": 3}, encrypt=True)]

    jobs = list(app._spec_jobs(specs))

    assert [job.args for job in jobs[:2]] == ['{"i":1}', '{"i":2}']
    assert jobs[2].args is None
    assert jobs[2].args_encrypted is not None


def test_a_later_spec_that_shares_the_checks_still_has_its_own_args_checked() -> None:
    app = make_app()
    specs = [JobSpec("plain", {"i": 1}), JobSpec("plain", {"s": "x" * 300})]

    outcomes = together(app, specs)

    assert isinstance(outcomes[0], NewJob)
    assert outcomes[1][0].__name__ == "PayloadTooLarge"


def test_values_equal_across_types_do_not_share_checks() -> None:
    # True == 1 and 2.0 == 2, but neither True nor 2.0 is a max_attempts.
    app = make_app()
    twins: list[tuple[int, Any]] = [(1, True), (2, 2.0)]
    for first, second in twins:
        outcomes = together(app, [JobSpec("plain", {}, max_attempts=first), JobSpec("plain", {}, max_attempts=second)])
        assert outcomes[1][0].__name__ == "InvalidEnqueueOption", (first, second)


class _FixedCarrier:
    def carrier(self) -> dict[str, str] | None:
        return {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}

    def job_span(self, job: Any, carrier: dict[str, str] | None) -> Any:
        raise NotImplementedError


def test_every_job_of_a_batch_carries_the_trace_context_not_only_the_first() -> None:
    app = make_app()
    app.tracing = _FixedCarrier()

    jobs = list(app._spec_jobs([JobSpec("plain", {"i": i}) for i in range(3)]))

    assert [json.loads(job.args or "") for job in jobs] == [
        {"i": i, TRACE_KEY: _FixedCarrier().carrier()} for i in range(3)]
