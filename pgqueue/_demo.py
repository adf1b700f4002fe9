"""The demo application: a handful of realistic tasks and a workload that exercises them.

Used by ``pgqueue demo``. Kept separate from the CLI so the tasks are importable by a worker
process too (``pgqueue worker --app pgqueue._demo:app``).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from pgqueue.app import App
from pgqueue.backoff import Backoff
from pgqueue.jobs import Discard, Job, JobSpec

app = App()

QUEUES = ("emails", "reports", "webhooks", "maintenance")


class TransientError(Exception):
    """A failure worth retrying (a flaky SMTP server, a 503 from a webhook endpoint)."""


@app.task(name="send-reminder", queue="emails", max_attempts=4, backoff=Backoff.fixed(0.3))
def send_reminder(job: Job, patient_ref: str, channel: str) -> dict[str, Any]:
    """Send an appointment reminder; about one in ten attempts hits a transient failure."""
    time.sleep(random.uniform(0.005, 0.03))
    if random.random() < 0.1:
        raise TransientError("SMTP server said 451: try again later")
    return {"channel": channel, "delivered": True}


@app.task(name="render-report", queue="reports", timeout=20)
async def render_report(job: Job, report_id: int, pages: int) -> dict[str, Any]:
    """Render a report page by page, reporting progress as it goes."""
    for page in range(1, pages + 1):
        await asyncio.sleep(0.02)
        job.set_progress(100 * page / pages, note=f"page {page}/{pages}")
    return {"report_id": report_id, "pages": pages}


@app.task(name="deliver-webhook", queue="webhooks", max_attempts=5, backoff=Backoff.fixed(0.4),
          discard_on=(ValueError,))
def deliver_webhook(job: Job, url: str, fail_times: int = 0) -> dict[str, Any]:
    """Deliver a webhook; endpoints that fail a few times succeed on a later attempt."""
    if url.endswith("/gone"):
        raise Discard("endpoint answered 410 Gone: not retrying")
    if job.attempt <= fail_times:
        raise TransientError(f"endpoint answered 503 on attempt {job.attempt}")
    time.sleep(random.uniform(0.002, 0.01))
    return {"status": 200}


@app.task(name="nightly-cleanup", queue="maintenance", max_attempts=2, backoff=Backoff.fixed(0.2))
def nightly_cleanup(job: Job, table: str) -> dict[str, Any]:
    """A maintenance job; one of them is broken and ends in the dead-letter state."""
    if table == "broken":
        raise RuntimeError("relation 'broken' does not exist")
    return {"vacuumed": table}


# A cron schedule with a seconds field, so the demo shows the scheduler at work within seconds.
app.schedule("appointment-sweep", cron="*/2 * * * * *", task="nightly-cleanup",
             args={"table": "appointments"}, timezone="America/New_York", queue="maintenance")


def workload(scale: int = 1) -> list[JobSpec]:
    """A few hundred jobs across queues and priorities; some fail and retry, some are delayed."""
    rng = random.Random(42)
    specs: list[JobSpec] = []
    for i in range(150 * scale):
        specs.append(JobSpec("send-reminder", {"patient_ref": f"P{i:05d}", "channel": rng.choice(["sms", "email"])},
                             priority=rng.choice(["high", "normal", "low"]), tags=["facility:001"]))
    for i in range(30 * scale):
        specs.append(JobSpec("render-report", {"report_id": i, "pages": rng.randint(3, 12)},
                             priority="low", delay=rng.choice([None, None, 1.5, 3.0])))
    for i in range(60 * scale):
        fail_times = rng.choice([0, 0, 0, 1, 2])
        url = "https://partner.example/gone" if i % 25 == 0 else f"https://partner.example/hook/{i}"
        specs.append(JobSpec("deliver-webhook", {"url": url, "fail_times": fail_times}, priority="high"))
    for table in ("appointments", "audit_exports", "broken"):
        specs.append(JobSpec("nightly-cleanup", {"table": table}, priority="critical"))
    rng.shuffle(specs)
    return specs
