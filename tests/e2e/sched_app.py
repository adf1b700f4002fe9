"""Apps run by ``tests/e2e/test_scheduler_processes.py`` under real ``pgqueue scheduler`` and
``pgqueue worker`` processes, started with ``cwd=tests/e2e`` (so this module is ``sched_app``).

The DSN comes from ``PGQUEUE_DSN``, as for any user's app; nothing here connects at import.

- ``sched_app:every_two_seconds``: one schedule firing every two seconds (misfire ``all``).
- ``sched_app:three_policies``: three schedules on the same cron, one per misfire policy.
- ``sched_app:clashing``: a code schedule named ``clash``, which the test also adds at run time.
"""

from __future__ import annotations

import pgqueue

CRON = "*/2 * * * * *"
QUEUE = "cron"


def _app() -> pgqueue.App:
    app = pgqueue.App()

    @app.task(name="record-tick", queue=QUEUE)
    def record_tick(job: pgqueue.Job) -> dict[str, int]:
        return {"job_id": job.id}

    return app


every_two_seconds = _app()
every_two_seconds.schedule("every-2s", cron=CRON, task="record-tick", misfire="all")

three_policies = _app()
for _policy in ("once", "skip", "all"):
    three_policies.schedule(f"misfire-{_policy}", cron=CRON, task="record-tick", misfire=_policy)

clashing = _app()
clashing.schedule("clash", cron=CRON, task="record-tick")
