"""``@pytest.mark.timing``: the test asserts a wall-clock bound (a latency, "within N seconds") that a
shared, loaded machine can miss without anything being wrong. Such a test, and only such a test,
is rerun up to twice on failure (pytest-rerunfailures); ``-rR`` (in ``addopts``) names every rerun
in the summary, so a test that needs its reruns stays visible.

Nothing else is ever rerun: a test that fails now and then without measuring time is a race to
find, in the test or in the code.
"""

from __future__ import annotations

import pytest

RERUNS = 2
RERUNS_DELAY_SECONDS = 1.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timing") is not None:
            item.add_marker(pytest.mark.flaky(reruns=RERUNS, reruns_delay=RERUNS_DELAY_SECONDS))
