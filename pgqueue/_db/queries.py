"""The only place SQL text enters Python: named blocks from ``queries/*.sql``, loaded once.

Each ``.sql`` file holds blocks that start with ``-- name: <identifier>``. Each file has a
NamedTuple listing its block names; a missing or extra block fails at import time, so a typo
can never reach a database.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString, NamedTuple, TypeVar

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)

T = TypeVar("T", bound=tuple[str, ...])


def _parse(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        blocks[match.group(1)] = body
    return blocks


def load_queries(shape: type[T], filename: str) -> T:
    """Load ``filename``'s named blocks into an instance of the NamedTuple ``shape``."""
    text = resources.files("pgqueue._db").joinpath("queries", filename).read_text(encoding="utf-8")
    blocks = _parse(text)
    fields: tuple[str, ...] = shape._fields  # type: ignore[attr-defined]
    missing = set(fields) - set(blocks)
    extra = set(blocks) - set(fields)
    if missing or extra:
        raise RuntimeError(f"{filename}: missing blocks {sorted(missing)}, unexpected blocks {sorted(extra)}")
    return shape(*(blocks[name] for name in fields))


class JobQueries(NamedTuple):
    insert_job: LiteralString
    insert_unique_job: LiteralString
    insert_jobs: LiteralString
    reserve_job_ids: LiteralString
    notify_queues: LiteralString
    copy_jobs: LiteralString
    insert_copied_job_events: LiteralString
    savepoint_enqueue_many: LiteralString
    rollback_to_enqueue_many: LiteralString
    release_enqueue_many: LiteralString
    find_live_job_by_unique_key: LiteralString
    claim_jobs: LiteralString
    claim_jobs_any_queue: LiteralString
    complete_jobs: LiteralString
    fail_jobs: LiteralString
    release_jobs: LiteralString
    release_lost_claims: LiteralString
    update_progress: LiteralString
    lock_running_job: LiteralString
    stage_jobs: LiteralString
    rescue_jobs: LiteralString
    get_job: LiteralString
    list_jobs: LiteralString
    retry_jobs: LiteralString
    cancel_job: LiteralString
    delete_job: LiteralString
    purge_queue: LiteralString
    count_stale_ciphertexts: LiteralString
    lock_stale_ciphertexts: LiteralString
    update_ciphertexts: LiteralString


class QueueQueries(NamedTuple):
    set_queue_paused: LiteralString
    queue_stats: LiteralString
    notification_queue_usage: LiteralString
    read_only_state: LiteralString
    long_transactions: LiteralString
    summarize_queues: LiteralString


class WorkerQueries(NamedTuple):
    heartbeat_worker: LiteralString
    deregister_worker: LiteralString
    delete_expired_workers: LiteralString
    list_workers: LiteralString
    acquire_leadership: LiteralString
    resign_leadership: LiteralString
    connection_limits: LiteralString
    idle_session_timeout: LiteralString


class EventQueries(NamedTuple):
    list_job_events: LiteralString
    last_seal: LiteralString
    seal_cap: LiteralString
    next_xid_after: LiteralString
    range_digests: LiteralString
    insert_seal: LiteralString
    list_seals: LiteralString
    get_seals: LiteralString
    count_seals: LiteralString
    count_pending_events: LiteralString
    may_seal: LiteralString
    prunable_seals: LiteralString
    count_prunable_events: LiteralString
    delete_sealed_events: LiteralString
    mark_seal_pruned: LiteralString
    record_key_rotation: LiteralString


JOBS = load_queries(JobQueries, "jobs.sql")
QUEUES = load_queries(QueueQueries, "queues.sql")
WORKERS = load_queries(WorkerQueries, "workers.sql")
EVENTS = load_queries(EventQueries, "events.sql")

NOTIFY_CHANNEL = "pgqueue_jobs"


class ScheduleQueries(NamedTuple):
    db_now: LiteralString
    lock_for_sync: LiteralString
    list_schedules: LiteralString
    get_schedule: LiteralString
    get_schedule_for_update: LiteralString
    insert_schedule: LiteralString
    update_schedule: LiteralString
    delete_schedule: LiteralString
    set_schedule_paused: LiteralString
    disable_code_schedules: LiteralString
    lock_due_schedules: LiteralString
    insert_scheduled_jobs: LiteralString
    record_misfire: LiteralString
    advance_schedule: LiteralString
    next_wakeup: LiteralString


SCHEDULES = load_queries(ScheduleQueries, "schedules.sql")


class RetentionQueries(NamedTuple):
    retention_cutoffs: LiteralString
    delete_completed_jobs: LiteralString
    delete_failed_jobs: LiteralString
    count_prunable_jobs: LiteralString
    delete_schedule_runs: LiteralString
    count_prunable_schedule_runs: LiteralString
    insert_prune_event: LiteralString
    jobs_vacuum_state: LiteralString
    vacuum_jobs: LiteralString


RETENTION = load_queries(RetentionQueries, "retention.sql")
